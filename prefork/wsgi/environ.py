"""The WSGI environ of a request (PEP 3333): the CGI variables, the ``wsgi.*`` keys, the
request's headers as ``HTTP_*``, and the client seen through trusted proxies.

Strings are "native strings" decoded as ISO-8859-1, as PEP 3333 says: ``PATH_INFO`` is the
URL's path percent-decoded to bytes, then so decoded (as wsgiref and gunicorn do). A header
whose name has an underscore is dropped (``X_Forwarded_For`` would otherwise pass for
``X-Forwarded-For`` in the environ: as gunicorn's and nginx's default). Repeated headers are
joined with ``,`` (``Cookie`` with ``;``).

``REMOTE_ADDR`` is the client's address: the peer's, or a PROXY header's
(:mod:`prefork.edge`); only when that address is in ``forwarded_allow_ips`` (a proxy the
operator trusts; Unix-socket peers always), the header ``forwarded_header`` says
(``X-Forwarded-For`` by default, or ``Forwarded``, RFC 7239) names the client, and
``X-Forwarded-Proto`` or ``Forwarded``'s ``proto`` the scheme (``wsgi.url_scheme``), as
gunicorn's ``forwarded_allow_ips``. The client is the last
address not itself a trusted proxy, counting from the nearest.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import httptools

if TYPE_CHECKING:
    from prefork.config.convert import Network
    from prefork.wsgi.reader import Request

#: The networks trusted to forward when ``forwarded_allow_ips`` is None: loopback.
LOOPBACK = ("127.0.0.0/8", "::1/128")

#: Header name (as sent) -> environ key, for the names seen so far (at most :data:`_MAX_KEYS`).
_KEYS: dict[bytes, str | None] = {}
_MAX_KEYS = 512
#: The headers about forwarding, by environ key.
_FORWARDING = frozenset(("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO"))


def environ_key(name: bytes) -> str | None:
    """The environ key of a header ``name`` (``HTTP_X_THING``; ``CONTENT_TYPE`` and
    ``CONTENT_LENGTH`` without the prefix), None for a name with an underscore (dropped)."""
    key = _KEYS.get(name)
    if key is None and name not in _KEYS:
        text = name.decode("latin-1").upper()
        if "_" in text:
            key = None
        elif text in ("CONTENT-TYPE", "CONTENT-LENGTH"):
            key = text.replace("-", "_")
        else:
            key = "HTTP_" + text.replace("-", "_")
        if len(_KEYS) < _MAX_KEYS:
            _KEYS[name] = key
    return key


def base_environ(
    server_address: Any, *, tls: bool, root_path: str, multithread: bool, file_wrapper: Any, version: str
) -> dict[str, Any]:
    """The part of the environ every request of a server shares; runs in the worker, once."""
    if isinstance(server_address, tuple):
        name, port = str(server_address[0]), str(server_address[1])
    else:  # a Unix socket
        name, port = "localhost", "0"
    return {
        "SERVER_NAME": name,
        "SERVER_PORT": port,
        "SERVER_SOFTWARE": f"prefork/{version}",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SCRIPT_NAME": root_path,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if tls else "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": file_wrapper,
    }


def request_environ(
    base: dict[str, Any],
    request: Request,
    client_address: Any,
    allowed: tuple[Network, ...] | None,
    header: str = "x-forwarded-for",
) -> dict[str, Any]:
    """The environ of ``request`` from ``client_address`` (a (HOST, PORT) tuple, or the
    (PEER, 0) of a Unix-socket connection), on top of ``base``; ``allowed`` and ``header``:
    the ``forwarded_allow_ips`` and ``forwarded_header`` settings. ``wsgi.input`` is the
    caller's to set. Raises ValueError for a URL that is not a path (or ``*``, or absolute)."""
    environ = base.copy()
    url = request.url
    authority = b""
    if url[:1] != b"/":
        url, authority = _origin_form(url)
    path, _, query = url.partition(b"?")
    if b"#" in path:  # a fragment is not part of a request target; as curl, cut it off
        path = path.partition(b"#")[0]
    path_info = (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")
    root = environ["SCRIPT_NAME"]
    if root and path_info.startswith(root) and path_info[len(root) : len(root) + 1] in ("", "/"):
        path_info = path_info[len(root) :]
    environ["PATH_INFO"] = path_info
    environ["QUERY_STRING"] = query.partition(b"#")[0].decode("latin-1")
    environ["REQUEST_METHOD"] = request.method
    environ["SERVER_PROTOCOL"] = "HTTP/" + request.version
    environ["REQUEST_URI"] = request.url.decode("latin-1")
    host, port = client_address[0], client_address[1]
    environ["REMOTE_ADDR"] = host
    environ["REMOTE_PORT"] = str(port)
    forwarding = False
    keys = _KEYS
    for name, value in request.headers:
        key = keys.get(name) or environ_key(name)
        if key is None:
            continue
        text = value.decode("latin-1")
        if key in environ and key.startswith("HTTP_"):
            text = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + text
        environ[key] = text
        if key in _FORWARDING:
            forwarding = True
    if request.chunked:
        environ.pop("CONTENT_LENGTH", None)  # the body ends where its last chunk says
    if authority:  # RFC 9112 3.2.2: an absolute-form target's authority is the Host
        environ["HTTP_HOST"] = authority.decode("latin-1")
    if forwarding:
        forwarded_client(environ, allowed, header)
    return environ


def _origin_form(url: bytes) -> tuple[bytes, bytes]:
    """The path and query of an absolute-form request target (``http://host/p?q``), as a
    proxy sends, and its authority (``host``); ``*`` (``OPTIONS *``) stays, without one.
    Raises ValueError for anything else."""
    if url == b"*":
        return url, b""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        raise ValueError("not a request target") from None
    if not parsed.schema or not parsed.host:
        raise ValueError("not a request target")
    path = parsed.path or b"/"
    host = b"[" + parsed.host + b"]" if b":" in parsed.host else parsed.host  # an IPv6 literal
    authority = host + (b":%d" % parsed.port if parsed.port else b"")
    return (path + b"?" + parsed.query if parsed.query else path), authority


def trusted(host: str, allowed: tuple[Network, ...] | None) -> bool:
    """Whether a connection from ``host`` may say who it forwards: its address is in
    ``allowed`` (None: loopback); a Unix-socket peer (not an IP address) always may."""
    import ipaddress  # here: only requests with forwarding headers pay for importing it

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # a Unix-socket peer: only local processes reach it
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    networks = _loopback() if allowed is None else allowed
    return any(address in network for network in networks)


@functools.cache
def _loopback() -> tuple[Network, ...]:
    """:data:`LOOPBACK` parsed (once: behind a local proxy every request asks)."""
    import ipaddress

    return tuple(ipaddress.ip_network(network) for network in LOOPBACK)


def forwarded_client(
    environ: dict[str, Any], allowed: tuple[Network, ...] | None, header: str = "x-forwarded-for"
) -> None:
    """Set ``REMOTE_ADDR`` (and ``wsgi.url_scheme``) from the forwarding header ``header``
    (``x-forwarded-for``, with ``X-Forwarded-Proto``; or ``forwarded``) of ``environ`` when
    the peer is trusted (:func:`trusted`); otherwise leave them. The other header is never
    read: a proxy that sets one passes the other through from the client as it came."""
    if not trusted(environ["REMOTE_ADDR"], allowed):
        return
    hops: list[tuple[str, str]]  # (client, proto) per hop, the nearest last
    if header == "forwarded":
        hops = parse_forwarded(environ.get("HTTP_FORWARDED", ""))
    else:
        proto = environ.get("HTTP_X_FORWARDED_PROTO", "").rpartition(",")[2].strip().lower()
        hops = [(item.strip(), "") for item in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        hops = [hop for hop in hops if hop[0]]
        if proto in ("http", "https"):
            environ["wsgi.url_scheme"] = proto
    for client, proto in reversed(hops):
        host = _host_of(client)
        if host is None:
            break  # unknown or obfuscated: believe no further
        environ["REMOTE_ADDR"] = host
        environ.pop("REMOTE_PORT", None)
        if proto in ("http", "https"):
            environ["wsgi.url_scheme"] = proto
        if not trusted(host, allowed):
            break


def parse_forwarded(value: str) -> list[tuple[str, str]]:
    """The ``for`` and ``proto`` parameters of each element of a ``Forwarded`` header (RFC
    7239), in order; a parameter missing is ``""``."""
    hops = []
    for element in value.split(","):
        found = {"for": "", "proto": ""}
        for pair in element.split(";"):
            key, _, text = pair.partition("=")
            key = key.strip().lower()
            if key in found:
                found[key] = text.strip().strip('"').lower() if key == "proto" else text.strip().strip('"')
        hops.append((found["for"], found["proto"]))
    return hops


def _host_of(node: str) -> str | None:
    """The IP address in a forwarded node (``192.0.2.1``, ``192.0.2.1:80``, ``[2001:db8::1]``,
    ``[2001:db8::1]:80``, a bare IPv6 address), None when it is none (``unknown``,
    ``_hidden``)."""
    import ipaddress

    if node.startswith("["):
        node = node[1:].partition("]")[0]
    elif node.count(":") == 1:
        node = node.partition(":")[0]
    try:
        return str(ipaddress.ip_address(node))
    except ValueError:
        return None
