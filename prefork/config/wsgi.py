"""The settings of the WSGI server (:mod:`prefork.wsgi`): the HTTP request limits, keep-alive,
the path the application is mounted at and the proxies whose forwarding headers are believed.
Listed in :data:`prefork.config.SETTINGS` with the others; servers that do not serve WSGI
ignore them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefork.config.convert import choice, networks, non_negative_int, seconds
from prefork.config.setting import HUP, Setting

if TYPE_CHECKING:
    from prefork.config.convert import Network


def _optional_networks(value: Any) -> tuple[Network, ...] | None:
    return None if value is None else networks(value)


def _root_path(value: Any) -> str:
    """A mount path: empty, or starting with ``/`` and not ending with it."""
    if isinstance(value, (list, tuple, dict, set)):
        raise ValueError(f"must be a path, got {value!r}")
    text = str(value).rstrip("/")
    if text and not text.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    if any(ord(c) < 0x21 or ord(c) > 0x7E or c in "?#" for c in text):
        raise ValueError(f"must be a plain URL path (no space, ?, # or non-ASCII), got {value!r}")
    return text


def _limit(most: int) -> Any:
    def convert(value: Any) -> int:
        number = non_negative_int(value)
        if number > most:
            raise ValueError(f"must be at most {most}, got {value!r}")
        return number

    return convert


LIMIT_REQUEST_LINE: Setting[int] = Setting(
    name="limit_request_line",
    section="WSGI",
    default=4094,
    convert=_limit(65534),
    flags=("--limit-request-line",),
    metavar="BYTES",
    help=(
        "The longest HTTP request line (method, URL, version) a WSGI server reads; a longer "
        "one is answered 414 and the connection closed. 0: the most, 65534. As gunicorn's."
    ),
    at_hup=HUP,
)
LIMIT_REQUEST_FIELDS: Setting[int] = Setting(
    name="limit_request_fields",
    section="WSGI",
    default=100,
    convert=_limit(32768),
    flags=("--limit-request-fields",),
    metavar="N",
    help=(
        "The most header fields in an HTTP request; more are answered 431 and the connection "
        "closed. 0: the most, 32768. As gunicorn's."
    ),
    at_hup=HUP,
)
LIMIT_REQUEST_FIELD_SIZE: Setting[int] = Setting(
    name="limit_request_field_size",
    section="WSGI",
    default=8190,
    convert=_limit(65534),
    flags=("--limit-request-field-size",),
    metavar="BYTES",
    help=(
        "The longest HTTP request header field (name, colon and value); a longer one is "
        "answered 431 and the connection closed. 0: the most, 65534. As gunicorn's."
    ),
    at_hup=HUP,
)
KEEPALIVE: Setting[float] = Setting(
    name="keepalive",
    section="WSGI",
    default=2.0,
    convert=seconds,
    flags=("--keepalive",),
    metavar="SECONDS",
    help=(
        "Seconds a WSGI server's thread worker waits for the next request on a keep-alive "
        "connection (a waiting connection holds a thread); 0 turns keep-alive off. The sync "
        "worker always answers with Connection: close, as gunicorn's. As gunicorn's keepalive."
    ),
    at_hup=HUP,
)
ROOT_PATH: Setting[str] = Setting(
    name="root_path",
    section="WSGI",
    default="",
    convert=_root_path,
    flags=("--root-path",),
    metavar="PATH",
    help=(
        "The path the application is mounted at behind a proxy (/api): SCRIPT_NAME in the "
        "environ, taken off the front of PATH_INFO when a request's path starts with it."
    ),
    at_hup=HUP,
)
FORWARDED_ALLOW_IPS: Setting[tuple[Network, ...] | None] = Setting(
    name="forwarded_allow_ips",
    section="WSGI",
    default=None,
    convert=_optional_networks,
    flags=("--forwarded-allow-ips",),
    metavar="CIDR,...",
    help=(
        "The proxies whose X-Forwarded-For, X-Forwarded-Proto and Forwarded headers are "
        "believed (REMOTE_ADDR, wsgi.url_scheme); from anyone else they are ignored. Default "
        "(None): loopback, as gunicorn's 127.0.0.1,::1. 0.0.0.0/0,::/0: every peer."
    ),
    at_hup=HUP,
)

FORWARDED_HEADER: Setting[str] = Setting(
    name="forwarded_header",
    section="WSGI",
    default="x-forwarded-for",
    convert=lambda value: choice(str(value).lower(), ("x-forwarded-for", "forwarded")),
    flags=("--forwarded-header",),
    metavar="NAME",
    help=(
        "The header a trusted proxy (forwarded_allow_ips) names the client in: "
        "x-forwarded-for (with X-Forwarded-Proto; nginx's and HAProxy's) or forwarded (RFC 7239). "
        "Only that one is read: a proxy passes the other through from the client unchecked."
    ),
    at_hup=HUP,
)

#: The settings of this module, in the order of the docs.
WSGI_SETTINGS: tuple[Setting[Any], ...] = (
    KEEPALIVE,
    LIMIT_REQUEST_LINE,
    LIMIT_REQUEST_FIELDS,
    LIMIT_REQUEST_FIELD_SIZE,
    ROOT_PATH,
    FORWARDED_ALLOW_IPS,
    FORWARDED_HEADER,
)
