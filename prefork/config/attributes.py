"""Every setting as a class attribute with its default: the base of
:class:`~prefork.server.PreforkMixIn`, so a server class overrides a setting as socketserver's
attributes are overridden (``class MyServer(PreforkTCPServer): workers = 4``). Each default is
the one :mod:`prefork.config` declares."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefork.config import (
    ACCEPT,
    ACCESS_LOG,
    ALLOW,
    CONTROL_SOCKET,
    DEFER_ACCEPT,
    DENY,
    GC_FREEZE,
    GRACEFUL_TIMEOUT,
    GROUP,
    LOG_FORMAT,
    MAX_REQUESTS,
    MAX_REQUESTS_JITTER,
    MAX_WORKER_MEMORY,
    MAX_WORKERS,
    METRICS,
    MIN_WORKERS,
    PIDFILE,
    PROC_NAME,
    READ_DEADLINE,
    READ_MIN_RATE,
    REQUEST_QUEUE_SIZE,
    REQUEST_TIMEOUT,
    SCOREBOARD_FILE,
    SHUTDOWN_DELAY,
    SOCKET_TIMEOUT,
    THREADS,
    UMASK,
    UNIX_SOCKET_MODE,
    USER,
    WORKER_CLASS,
    WORKERS,
)
from prefork.config.edge import (
    CA_CERTS,
    CERT_REQS,
    CERTFILE,
    CIPHERS,
    KEYFILE,
    PROXY_ALLOW,
    PROXY_PROTOCOL,
    TLS_MIN_VERSION,
)
from prefork.config.wsgi import (
    FORWARDED_ALLOW_IPS,
    FORWARDED_HEADER,
    KEEPALIVE,
    LIMIT_REQUEST_FIELD_SIZE,
    LIMIT_REQUEST_FIELDS,
    LIMIT_REQUEST_LINE,
    ROOT_PATH,
)

if TYPE_CHECKING:
    from prefork.config.convert import Network
    from prefork.config.sources import Configuration


class SettingAttributes:
    """The settings of a prefork server, one class attribute each (see :mod:`prefork.config`),
    and the configuration they were read from."""

    #: The configuration (file, environment, flags) the settings were read from, set by the
    #: ``prefork`` command on the pool's first server: a HUP reads its file again
    #: (:func:`prefork.config.reload.reloading_settings`). None for a server made in code,
    #: unless given one (:func:`prefork.config.sources.resolve`).
    configuration: Configuration | None = None

    workers: int | None = WORKERS.default
    min_workers: int | None = MIN_WORKERS.default
    max_workers: int | None = MAX_WORKERS.default
    worker_class: str = WORKER_CLASS.default
    threads: int = THREADS.default
    accept: str = ACCEPT.default
    graceful_timeout: float = GRACEFUL_TIMEOUT.default
    shutdown_delay: float = SHUTDOWN_DELAY.default
    request_timeout: float = REQUEST_TIMEOUT.default
    max_requests: int = MAX_REQUESTS.default
    max_requests_jitter: int = MAX_REQUESTS_JITTER.default
    max_worker_memory: int = MAX_WORKER_MEMORY.default
    gc_freeze: bool = GC_FREEZE.default
    scoreboard_file: str | None = SCOREBOARD_FILE.default
    request_queue_size: int = REQUEST_QUEUE_SIZE.default
    socket_timeout: float = SOCKET_TIMEOUT.default
    read_min_rate: int = READ_MIN_RATE.default
    read_deadline: float = READ_DEADLINE.default
    defer_accept: float | None = DEFER_ACCEPT.default
    allow: tuple[Network, ...] = ALLOW.default
    deny: tuple[Network, ...] = DENY.default
    control_socket: str | None = CONTROL_SOCKET.default
    metrics: str | None = METRICS.default
    log_format: str = LOG_FORMAT.default
    access_log: str | None = ACCESS_LOG.default
    unix_socket_mode: int | None = UNIX_SOCKET_MODE.default
    proc_name: str | None = PROC_NAME.default
    pidfile: str | None = PIDFILE.default
    user: int | None = USER.default
    group: int | None = GROUP.default
    umask: int | None = UMASK.default
    certfile: str | None = CERTFILE.default
    keyfile: str | None = KEYFILE.default
    ca_certs: str | None = CA_CERTS.default
    cert_reqs: str = CERT_REQS.default
    ciphers: str | None = CIPHERS.default
    tls_min_version: str = TLS_MIN_VERSION.default
    proxy_protocol: str = PROXY_PROTOCOL.default
    proxy_allow: tuple[Network, ...] | None = PROXY_ALLOW.default
    keepalive: float = KEEPALIVE.default
    limit_request_line: int = LIMIT_REQUEST_LINE.default
    limit_request_fields: int = LIMIT_REQUEST_FIELDS.default
    limit_request_field_size: int = LIMIT_REQUEST_FIELD_SIZE.default
    root_path: str = ROOT_PATH.default
    forwarded_allow_ips: tuple[Network, ...] | None = FORWARDED_ALLOW_IPS.default
    forwarded_header: str = FORWARDED_HEADER.default
