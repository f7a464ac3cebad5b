"""prefork.wsgi.environ: the environ of a request, and who the client is behind trusted
proxies (pure: no socket)."""

from __future__ import annotations

import ipaddress
import sys
from typing import Any

import pytest

from prefork.wsgi.environ import base_environ, environ_key, parse_forwarded, request_environ, trusted
from prefork.wsgi.reader import Request
from prefork.wsgi.response import FileWrapper


def base(root_path: str = "") -> dict[str, Any]:
    return base_environ(
        ("127.0.0.1", 8000),
        tls=False,
        root_path=root_path,
        multithread=False,
        file_wrapper=FileWrapper,
        version="0.1.0",
    )


def request(url: bytes = b"/", *headers: tuple[bytes, bytes], method: str = "GET") -> Request:
    made = Request()
    made.url, made.method, made.version = url, method, "1.1"
    made.headers = list(headers)
    return made


def environ_of(
    req: Request, client: Any = ("127.0.0.1", 5000), allowed: Any = None, root: str = ""
) -> dict[str, Any]:
    return request_environ(base(root), req, client, allowed)


def test_the_pep_3333_keys() -> None:
    environ = environ_of(request(b"/p?q=1", (b"Content-Type", b"text/plain"), (b"Content-Length", b"3")))
    assert environ["wsgi.version"] == (1, 0) and environ["wsgi.errors"] is sys.stderr
    assert environ["wsgi.multiprocess"] is True and environ["wsgi.run_once"] is False
    assert environ["wsgi.file_wrapper"] is FileWrapper and environ["wsgi.url_scheme"] == "http"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", "8000")
    assert (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"]) == ("GET", "/p", "q=1")
    assert (environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"]) == ("text/plain", "3")
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("127.0.0.1", "5000")
    assert all(type(v) is str for k, v in environ.items() if k.isupper())


def test_a_chunked_request_has_no_content_length() -> None:
    req = request(b"/", (b"Transfer-Encoding", b"chunked"))
    req.chunked = True
    assert "CONTENT_LENGTH" not in environ_of(req)


def test_the_path_is_percent_decoded_and_latin_1() -> None:
    environ = environ_of(request(b"/caf%C3%A9/a%2Fb?x=%C3%A9"))
    assert environ["PATH_INFO"] == "/caf\u00c3\u00a9/a/b" and environ["QUERY_STRING"] == "x=%C3%A9"


def test_an_absolute_form_target() -> None:
    environ = environ_of(request(b"http://example.test:81/a/b?c"))
    assert (environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/a/b", "c")


def test_a_target_that_is_no_path_is_refused() -> None:
    with pytest.raises(ValueError):
        environ_of(request(b"example.test:443", method="CONNECT"))


@pytest.mark.parametrize(
    "url,script,path",
    [
        (b"/api/users", "/api", "/users"),
        (b"/api", "/api", ""),
        (b"/apis", "/api", "/apis"),  # not under the mount: kept whole
        (b"/other", "/api", "/other"),
    ],
)
def test_root_path_is_script_name(url: bytes, script: str, path: str) -> None:
    environ = environ_of(request(url), root="/api")
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == (script, path)


def test_headers_become_http_keys_joined_and_underscores_dropped() -> None:
    environ = environ_of(
        request(
            b"/",
            (b"X-Thing", b"a"),
            (b"x-thing", b"b"),
            (b"Cookie", b"a=1"),
            (b"Cookie", b"b=2"),
            (b"X_Forwarded_For", b"6.6.6.6"),
        )
    )
    assert environ["HTTP_X_THING"] == "a,b" and environ["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_FORWARDED_FOR" not in environ
    assert (
        environ_key(b"X_Forwarded_For") is None and environ_key(b"accept-encoding") == "HTTP_ACCEPT_ENCODING"
    )


# -- the client behind proxies ---------------------------------------------------------------


def test_x_forwarded_for_from_a_trusted_proxy_is_the_client() -> None:
    environ = environ_of(
        request(b"/", (b"X-Forwarded-For", b"203.0.113.7, 10.0.0.2"), (b"X-Forwarded-Proto", b"https")),
        allowed=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8")),
    )
    assert environ["REMOTE_ADDR"] == "203.0.113.7" and environ["wsgi.url_scheme"] == "https"
    assert "REMOTE_PORT" not in environ


def test_the_client_is_the_last_address_not_a_trusted_proxy() -> None:
    # The client forged the first entry; the proxy at 127.0.0.1 appended the real one.
    environ = environ_of(request(b"/", (b"X-Forwarded-For", b"1.2.3.4, 198.51.100.9")))
    assert environ["REMOTE_ADDR"] == "198.51.100.9"


def test_forwarding_headers_from_an_untrusted_peer_are_ignored() -> None:
    environ = environ_of(
        request(b"/", (b"X-Forwarded-For", b"1.2.3.4"), (b"X-Forwarded-Proto", b"https")),
        client=("192.0.2.50", 4000),
    )
    assert environ["REMOTE_ADDR"] == "192.0.2.50" and environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"  # still there, as a header


def forwarded_by(req: Request, header: str, allowed: Any = None) -> dict[str, Any]:
    return request_environ(base(), req, ("127.0.0.1", 5000), allowed, header)


def test_the_forwarded_header_when_chosen_and_ipv6_is_read() -> None:
    req = request(
        b"/",
        (b"Forwarded", b'for="[2001:db8::1]:4711";proto=https, for=127.0.0.1'),
        (b"X-Forwarded-For", b"9.9.9.9"),
    )
    environ = forwarded_by(req, "forwarded")
    assert environ["REMOTE_ADDR"] == "2001:db8::1" and environ["wsgi.url_scheme"] == "https"


def test_only_the_chosen_header_is_read() -> None:
    # nginx and HAProxy set X-Forwarded-For and pass the client's own Forwarded through.
    req = request(b"/", (b"Forwarded", b"for=6.6.6.6;proto=https"), (b"X-Forwarded-For", b"203.0.113.9"))
    environ = forwarded_by(req, "x-forwarded-for")
    assert environ["REMOTE_ADDR"] == "203.0.113.9" and environ["wsgi.url_scheme"] == "http"
    environ = forwarded_by(request(b"/", (b"X-Forwarded-For", b"6.6.6.6")), "forwarded")
    assert environ["REMOTE_ADDR"] == "127.0.0.1"


def test_no_trusted_proxy_at_all() -> None:
    environ = environ_of(request(b"/", (b"X-Forwarded-For", b"6.6.6.6")), allowed=())
    assert environ["REMOTE_ADDR"] == "127.0.0.1"


def test_an_obfuscated_node_stops_the_walk() -> None:
    environ = forwarded_by(request(b"/", (b"Forwarded", b"for=_hidden, for=198.51.100.9")), "forwarded")
    assert environ["REMOTE_ADDR"] == "198.51.100.9"
    environ = forwarded_by(request(b"/", (b"Forwarded", b"for=unknown")), "forwarded")
    assert environ["REMOTE_ADDR"] == "127.0.0.1"


def test_an_absolute_form_target_names_the_host() -> None:
    environ = environ_of(request(b"http://public.example:8080/p", (b"Host", b"internal.example")))
    assert environ["HTTP_HOST"] == "public.example:8080" and environ["PATH_INFO"] == "/p"
    assert environ_of(request(b"http://[::1]:8080/p"))["HTTP_HOST"] == "[::1]:8080"
    assert environ_of(request(b"http://[2001:db8::1]/p"))["HTTP_HOST"] == "[2001:db8::1]"


def test_parse_forwarded() -> None:
    assert parse_forwarded('for=192.0.2.60;proto=HTTP;by=203.0.113.43, for="[::1]"') == [
        ("192.0.2.60", "http"),
        ("[::1]", ""),
    ]


def test_who_is_trusted() -> None:
    assert trusted("127.0.0.1", None) and trusted("::1", None) and trusted("::ffff:127.0.0.1", None)
    assert not trusted("192.0.2.1", None)
    assert trusted("unix", None)  # a Unix-socket peer: a local process
    assert trusted("10.1.2.3", (ipaddress.ip_network("10.0.0.0/8"),))
    assert not trusted("127.0.0.1", ())  # an empty list trusts no one
