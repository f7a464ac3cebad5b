"""The settings of the production edge: TLS (certificates, client certificates, ciphers, the
oldest protocol version) and the PROXY protocol of a load balancer in front. Listed in
:data:`prefork.config.SETTINGS` with the others."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefork.config.convert import choice, networks, optional_str
from prefork.config.setting import HUP, Setting

if TYPE_CHECKING:
    from prefork.config.convert import Network


def _optional_networks(value: Any) -> tuple[Network, ...] | None:
    return None if value is None else networks(value)


CERTFILE: Setting[str | None] = Setting(
    name="certfile",
    section="TLS",
    default=None,
    convert=optional_str,
    flags=("--certfile",),
    metavar="PATH",
    help=(
        "Serve TLS on every stream socket with this certificate chain (PEM). The context is "
        "built and checked once in the master, before forking; HUP reads the files again. "
        "Default (None): no TLS."
    ),
    at_hup=HUP,
)
KEYFILE: Setting[str | None] = Setting(
    name="keyfile",
    section="TLS",
    default=None,
    convert=optional_str,
    flags=("--keyfile",),
    metavar="PATH",
    help="The private key (PEM) of certfile. Default (None): in certfile.",
    at_hup=HUP,
)
CA_CERTS: Setting[str | None] = Setting(
    name="ca_certs",
    section="TLS",
    default=None,
    convert=optional_str,
    flags=("--ca-certs",),
    metavar="PATH",
    help="Certificates (PEM) of the authorities that sign client certificates (cert_reqs).",
    at_hup=HUP,
)
CERT_REQS: Setting[str] = Setting(
    name="cert_reqs",
    section="TLS",
    default="none",
    convert=lambda value: choice(value, ("none", "optional", "required")),
    flags=("--cert-reqs",),
    metavar="WHEN",
    help="Client certificates: none (not asked), optional (checked if sent), required.",
    at_hup=HUP,
)
CIPHERS: Setting[str | None] = Setting(
    name="ciphers",
    section="TLS",
    default=None,
    convert=optional_str,
    flags=("--ciphers",),
    metavar="LIST",
    help="OpenSSL cipher list for TLS 1.2 (TLS 1.3's suites are OpenSSL's). Default: Python's.",
    at_hup=HUP,
)
TLS_MIN_VERSION: Setting[str] = Setting(
    name="tls_min_version",
    section="TLS",
    default="1.2",
    convert=lambda value: choice(str(value), ("1.2", "1.3")),
    flags=("--tls-min-version",),
    metavar="VERSION",
    help="The oldest TLS version accepted: 1.2 or 1.3.",
    at_hup=HUP,
)
PROXY_PROTOCOL: Setting[str] = Setting(
    name="proxy_protocol",
    section="PROXY protocol",
    default="off",
    convert=lambda value: choice(value, ("off", "v1", "v2", "auto")),
    flags=("--proxy-protocol",),
    metavar="VERSION",
    help=(
        "Read a PROXY protocol header (HAProxy's) first on each connection, before TLS and "
        "verify_request: client_address, allow/deny and the logs see the original client. "
        "v1, v2, or auto (either). A connection without a valid header is closed unprocessed."
    ),
    at_hup=HUP,
)
PROXY_ALLOW: Setting[tuple[Network, ...] | None] = Setting(
    name="proxy_allow",
    section="PROXY protocol",
    default=None,
    convert=_optional_networks,
    flags=("--proxy-allow",),
    metavar="CIDR,...",
    help=(
        "The peers allowed to send a PROXY header (the load balancers); a connection from "
        "another is closed unprocessed. Default (None): loopback. Unix-socket peers always."
    ),
    at_hup=HUP,
)

#: The settings of this module, in the order of the docs.
EDGE_SETTINGS: tuple[Setting[Any], ...] = (
    CERTFILE,
    KEYFILE,
    CA_CERTS,
    CERT_REQS,
    CIPHERS,
    TLS_MIN_VERSION,
    PROXY_PROTOCOL,
    PROXY_ALLOW,
)
