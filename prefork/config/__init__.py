"""Settings, each declared once.

Every setting of a prefork server is one :class:`Setting` in :data:`SETTINGS`; the settings of
the ``prefork`` command itself (TARGET, ``bind``, ``udp``, ``preload``, ``log_level``,
``log_file``: not server attributes) are in :data:`COMMAND_SETTINGS`; :data:`ALL_SETTINGS`
lists both. That one declaration gives the server class attribute's default, the keyword-only
constructor argument (validated by :meth:`Setting.convert`), the ``prefork`` command-line flag,
the key of the configuration file and the ``PREFORK_<NAME>`` environment variable
(:mod:`prefork.config.sources`), and the reference table in the docs (``python -m
prefork.config`` prints it as Markdown). The converters that validate the values are in
:mod:`prefork.config.convert`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefork.config.commandline import COMMAND_SETTINGS, DEFAULT_BIND
from prefork.config.convert import (
    WORKER_CLASS_NAMES,
    byte_size,
    choice,
    networks,
    non_negative_int,
    optional_group,
    optional_octal,
    optional_seconds,
    optional_str,
    optional_user,
    positive_int,
    seconds,
    worker_class_name,
    workers_count,
)
from prefork.config.edge import EDGE_SETTINGS
from prefork.config.observability import ACCESS_LOG, CONTROL_SOCKET, LOG_FORMAT, METRICS
from prefork.config.setting import HUP, RESTART, USR2, Setting, usable_cpus
from prefork.config.sizing import GC_FREEZE, MAX_WORKERS, MIN_WORKERS, pool_bounds
from prefork.config.wsgi import WSGI_SETTINGS

if TYPE_CHECKING:
    from prefork.config.convert import Network

__all__ = [
    "ACCESS_LOG",
    "ALL_SETTINGS",
    "COMMAND_SETTINGS",
    "CONTROL_SOCKET",
    "DEFAULT_BIND",
    "GC_FREEZE",
    "HUP",
    "LOG_FORMAT",
    "MAX_WORKERS",
    "METRICS",
    "MIN_WORKERS",
    "RESTART",
    "SETTINGS",
    "USR2",
    "WORKER_CLASS_NAMES",
    "Network",
    "Setting",
    "pool_bounds",
    "reference_markdown",
    "usable_cpus",
]


WORKERS: Setting[int | None] = Setting(
    name="workers",
    section="Pool",
    default=None,
    convert=workers_count,
    flags=("-w", "--workers"),
    metavar="N",
    help="Number of worker processes in the pool. Default (None): the number of usable CPUs.",
    at_hup=HUP,
)
WORKER_CLASS: Setting[str] = Setting(
    name="worker_class",
    section="Pool",
    default="sync",
    convert=worker_class_name,
    flags=("-k", "--worker-class"),
    metavar="CLASS",
    help="Worker class: 'sync' serves one request at a time in the worker process itself.",
)
THREADS: Setting[int] = Setting(
    name="threads",
    section="Pool",
    default=4,
    convert=positive_int,
    flags=("--threads",),
    metavar="N",
    help=(
        "Threads per worker of the 'thread' worker class: each worker serves up to N requests "
        "at once and stops accepting while all N are busy (as gunicorn's gthread threads)."
    ),
    at_hup=HUP,
)
ACCEPT: Setting[str] = Setting(
    name="accept",
    section="Pool",
    default="shared",
    convert=lambda value: choice(value, ("shared", "reuseport")),
    flags=("--accept",),
    metavar="STRATEGY",
    help=(
        "How workers get connections: 'shared', one listening socket inherited by every "
        "worker; 'reuseport', one SO_REUSEPORT socket per worker, spread by the kernel."
    ),
)
GRACEFUL_TIMEOUT: Setting[float] = Setting(
    name="graceful_timeout",
    section="Pool",
    default=30.0,
    convert=seconds,
    flags=("--graceful-timeout",),
    metavar="SECONDS",
    help=(
        "Seconds a stopping worker (on TERM, reload or pool shrink) may spend finishing its "
        "request before it is killed with SIGKILL, as gunicorn's graceful_timeout."
    ),
    at_hup=HUP,
)
SHUTDOWN_DELAY: Setting[float] = Setting(
    name="shutdown_delay",
    section="Pool",
    default=0.0,
    convert=seconds,
    flags=("--shutdown-delay",),
    metavar="SECONDS",
    help=(
        "On TERM, keep serving this many seconds before the graceful stop begins, so that a "
        "load balancer or a Kubernetes endpoint controller notices the instance is leaving "
        "(as a preStop sleep); a second TERM, INT or QUIT stops at once. 0: none."
    ),
    at_hup=HUP,
)
REQUEST_TIMEOUT: Setting[float] = Setting(
    name="request_timeout",
    section="Pool",
    default=30.0,
    convert=seconds,
    flags=("-t", "--timeout"),
    metavar="SECONDS",
    help=(
        "A worker busy on one request (or booting) for longer than this is sent SIGABRT, which "
        "dumps its Python stack to stderr, then SIGKILL 0.5 s later, and is replaced; 0 turns it "
        "off. Idle workers are never killed. As gunicorn's timeout (named request_timeout here "
        "because socketserver's BaseServer.timeout is handle_request()'s wait)."
    ),
    at_hup=HUP,
)
MAX_REQUESTS: Setting[int] = Setting(
    name="max_requests",
    section="Pool",
    default=0,
    convert=non_negative_int,
    flags=("--max-requests",),
    metavar="N",
    help=(
        "A worker that has served this many requests finishes the one in progress, exits and "
        "is replaced (recycling, as gunicorn's max_requests); 0 turns it off."
    ),
    at_hup=HUP,
)
MAX_REQUESTS_JITTER: Setting[int] = Setting(
    name="max_requests_jitter",
    section="Pool",
    default=0,
    convert=non_negative_int,
    flags=("--max-requests-jitter",),
    metavar="N",
    help=(
        "Each worker's limit is max_requests plus a random 0..N, so workers do not all "
        "recycle at once (as gunicorn's max_requests_jitter)."
    ),
    at_hup=HUP,
)
MAX_WORKER_MEMORY: Setting[int] = Setting(
    name="max_worker_memory",
    section="Pool",
    default=0,
    convert=byte_size,
    flags=("--max-worker-memory",),
    metavar="BYTES",
    help=(
        "A worker whose resident memory (RSS, read by the master with psutil about once a "
        "second) exceeds this many bytes (suffixes K, M, G allowed) finishes its request, exits "
        "and is replaced (as uWSGI's reload-on-rss); 0 turns it off."
    ),
    at_hup=HUP,
)
SCOREBOARD_FILE: Setting[str | None] = Setting(
    name="scoreboard_file",
    section="Pool",
    default=None,
    convert=optional_str,
    flags=("--scoreboard-file",),
    metavar="PATH",
    help=(
        "Back the scoreboard (per-worker state and counters) with this file, so other "
        "processes can read it with prefork.scoreboard.Scoreboard.open(PATH), as Apache's "
        "ScoreBoardFile. Default: anonymous shared memory. Removed when the master exits."
    ),
)
REQUEST_QUEUE_SIZE: Setting[int] = Setting(
    name="request_queue_size",
    section="Server",
    default=2048,
    convert=positive_int,
    flags=("--backlog",),
    metavar="N",
    help=(
        "listen() backlog of the listening socket (socketserver's request_queue_size, default "
        "there 5; gunicorn's backlog). The kernel caps it at net.core.somaxconn."
    ),
)
SOCKET_TIMEOUT: Setting[float] = Setting(
    name="socket_timeout",
    section="Server",
    default=10.0,
    convert=seconds,
    flags=("--socket-timeout",),
    metavar="SECONDS",
    help=(
        "Timeout of each accepted connection's socket operations (socket.settimeout), so a "
        "slow or silent client cannot hold a sync worker forever; 0 means none (blocking). "
        "A handler's own StreamRequestHandler.timeout wins. Keep it below request_timeout. "
        "A connection's recv and send poll() only when they would block (prefork.sockets."
        "RequestSocket; CPython's timeout polls before each), so it costs one ioctl() per "
        "connection."
    ),
    at_hup=HUP,
)
READ_MIN_RATE: Setting[int] = Setting(
    name="read_min_rate",
    section="Server",
    default=500,
    convert=non_negative_int,
    flags=("--read-min-rate",),
    metavar="BYTES",
    help=(
        "Minimum rate, in bytes per second, at which a client must send: from the first time "
        "a worker waits for a connection, the client has socket_timeout seconds plus one more "
        "per read_min_rate bytes it sends, then it is cut (TimeoutError in the handler), as "
        "Apache's mod_reqtimeout MinRate. 0 turns it off. Needs socket_timeout; checked only "
        "when a read would block."
    ),
)
READ_DEADLINE: Setting[float] = Setting(
    name="read_deadline",
    section="Server",
    default=20.0,
    convert=seconds,
    flags=("--read-deadline",),
    metavar="SECONDS",
    help=(
        "Seconds after the first time a worker waits for a connection beyond which it waits "
        "no more: the next read that would block raises TimeoutError, however fast the client "
        "sends (as the upper bound of Apache's RequestReadTimeout header=20-40). 0 turns it "
        "off. Keep it below request_timeout. Needs socket_timeout."
    ),
)
DEFER_ACCEPT: Setting[float | None] = Setting(
    name="defer_accept",
    section="Server",
    default=None,
    convert=optional_seconds,
    flags=("--defer-accept",),
    metavar="SECONDS",
    help=(
        "Linux TCP_DEFER_ACCEPT on TCP listening sockets: the kernel hands a connection to a "
        "worker only once the client has sent data, or after this many seconds (rounded up to "
        "its SYN-ACK schedule: 1, 3, 7, 15, 31 s...); one handed over with nothing to read "
        "has been idle that long and is cut at its first read. Only for protocols where the "
        "client speaks first: never for a server that greets (SMTP, FTP). Default (auto): "
        "socket_timeout for HTTP servers and handlers, 0 (off) for others."
    ),
)
ALLOW: Setting[tuple[Network, ...]] = Setting(
    name="allow",
    section="Server",
    default=(),
    convert=networks,
    flags=("--allow",),
    metavar="CIDR,...",
    help=(
        "Only clients in these networks are served (verify_request); others are closed at "
        "once and counted. Empty: everyone. Unix-socket clients are always allowed."
    ),
    at_hup=HUP,
)
DENY: Setting[tuple[Network, ...]] = Setting(
    name="deny",
    section="Server",
    default=(),
    convert=networks,
    flags=("--deny",),
    metavar="CIDR,...",
    help="Clients in these networks are closed at once and counted (verify_request); deny wins over allow.",
    at_hup=HUP,
)
UNIX_SOCKET_MODE: Setting[int | None] = Setting(
    name="unix_socket_mode",
    section="Server",
    default=None,
    convert=optional_octal,
    flags=("--unix-socket-mode",),
    metavar="MODE",
    help="File mode (octal, e.g. 660) set on a Unix socket after binding. Default: as the umask leaves it.",
    at_hup=RESTART,
)
PROC_NAME: Setting[str | None] = Setting(
    name="proc_name",
    section="Server",
    default=None,
    convert=optional_str,
    flags=("-n", "--name"),
    metavar="NAME",
    help=(
        "Name shown in process titles, 'prefork: master [NAME]' and 'prefork: worker K [NAME]'. "
        "Default: the server class name; from the CLI, the TARGET (or 'demo')."
    ),
)

PIDFILE: Setting[str | None] = Setting(
    name="pidfile",
    section="Process",
    default=None,
    convert=optional_str,
    flags=("-p", "--pidfile"),
    metavar="PATH",
    help=(
        "Write the master's pid to this file while it serves; removed at exit if it still "
        "holds our pid (an upgraded master writes its own)."
    ),
)
USER: Setting[int | None] = Setting(
    name="user",
    section="Process",
    default=None,
    convert=optional_user,
    flags=("-u", "--user"),
    metavar="USER",
    help=(
        "Workers switch to this user (name or uid) after the fork, before serving; the master "
        "binds first and keeps its own user, as gunicorn's user."
    ),
)
GROUP: Setting[int | None] = Setting(
    name="group",
    section="Process",
    default=None,
    convert=optional_group,
    flags=("-g", "--group"),
    metavar="GROUP",
    help="Workers switch to this group (name or gid) after the fork, as gunicorn's group.",
)
UMASK: Setting[int | None] = Setting(
    name="umask",
    section="Process",
    default=None,
    convert=optional_octal,
    flags=("--umask",),
    metavar="MASK",
    help=(
        "File mode creation mask (octal, e.g. 027) the master sets when it starts serving; "
        "workers inherit it. Default: unchanged."
    ),
)

SETTINGS: tuple[Setting[Any], ...] = (
    WORKERS,
    MIN_WORKERS,
    MAX_WORKERS,
    WORKER_CLASS,
    THREADS,
    ACCEPT,
    GRACEFUL_TIMEOUT,
    SHUTDOWN_DELAY,
    REQUEST_TIMEOUT,
    MAX_REQUESTS,
    MAX_REQUESTS_JITTER,
    MAX_WORKER_MEMORY,
    GC_FREEZE,
    SCOREBOARD_FILE,
    REQUEST_QUEUE_SIZE,
    SOCKET_TIMEOUT,
    READ_MIN_RATE,
    READ_DEADLINE,
    DEFER_ACCEPT,
    ALLOW,
    DENY,
    UNIX_SOCKET_MODE,
    PROC_NAME,
    PIDFILE,
    USER,
    GROUP,
    UMASK,
    CONTROL_SOCKET,
    METRICS,
    LOG_FORMAT,
    ACCESS_LOG,
    *EDGE_SETTINGS,
    *WSGI_SETTINGS,
)

#: The settings the server constructor uses (binding and listening), converted there even
#: when given as class attributes; the others are converted by ``serve_forever()``.
CONSTRUCTOR_SETTINGS: tuple[Setting[Any], ...] = (REQUEST_QUEUE_SIZE, UNIX_SOCKET_MODE)


#: Every setting: the command's, then the servers', in the order of the docs.
ALL_SETTINGS: tuple[Setting[Any], ...] = COMMAND_SETTINGS + SETTINGS

#: How the reference shows what a HUP does with a new value from the configuration file.
_AT_HUP = {HUP: "applied", USR2: "USR2", RESTART: "restart"}


def reference_markdown() -> str:
    """Return the settings reference as Markdown tables, one per section (for the docs): each
    setting's name (its key in a configuration file), flags, environment variable, default,
    what a HUP does with a new value from the file, and meaning."""
    lines: list[str] = []
    for section in dict.fromkeys(s.section for s in ALL_SETTINGS):
        lines += [
            f"### {section}",
            "",
            "| setting (file key) | CLI flag | environment | default | at HUP | meaning |",
            "|---|---|---|---|---|---|",
        ]
        for s in ALL_SETTINGS:
            if s.section == section:
                flags = ", ".join(f"`{f}`" for f in s.flags) or f"`{s.metavar}` (argument)"
                row = [f"`{s.name}`", flags, f"`{s.env}`", f"`{s.default!r}`", _AT_HUP[s.at_hup], s.help]
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)
