"""prefork.wsgi.reader: requests parsed from a real socket socket_pair, within the limits; every
request-smuggling ambiguity refused with 400 (no fork)."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from prefork.wsgi.reader import HTTPError, Request, RequestReader

Pair = tuple[socket.socket, socket.socket]  # the socket_pair fixture (tests/conftest.py)


def reader_for(sock: socket.socket, line: int = 4094, fields: int = 100, size: int = 8190) -> RequestReader:
    return RequestReader(sock, line, fields, size)


def parse(socket_pair: Pair, data: bytes, **limits: int) -> tuple[RequestReader, Request | None]:
    server, client = socket_pair
    client.sendall(data)
    client.shutdown(socket.SHUT_WR)
    reader = reader_for(server, **limits)
    return reader, reader.next_request()


def body(reader: RequestReader, request: Request) -> bytes:
    parts = []
    while chunk := reader.read_body(request):
        parts.append(chunk)
    return b"".join(parts)


def test_a_get_request(socket_pair: Pair) -> None:
    reader, request = parse(socket_pair, b"GET /a/b?c=d HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nX-Two: 2\r\n\r\n")
    assert request is not None
    assert (request.method, request.url, request.version) == ("GET", b"/a/b?c=d", "1.1")
    assert request.headers == [(b"Host", b"x"), (b"X-Two", b"1"), (b"X-Two", b"2")]
    assert request.keep_alive and not request.chunked and request.content_length is None
    assert body(reader, request) == b""


def test_http_1_0_is_not_kept_alive_unless_asked(socket_pair: Pair) -> None:
    _, request = parse(socket_pair, b"GET / HTTP/1.0\r\n\r\n")
    assert request is not None and request.version == "1.0" and not request.keep_alive


def test_a_closed_connection_before_a_request_is_none(
    socket_pair: Pair,
) -> None:
    assert parse(socket_pair, b"")[1] is None


def test_a_head_cut_short_is_400(socket_pair: Pair) -> None:
    with pytest.raises(HTTPError) as caught:
        parse(socket_pair, b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert caught.value.status == 400


def test_content_length_body_across_reads(socket_pair: Pair) -> None:
    server, client = socket_pair
    client.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
    reader = reader_for(server)
    request = reader.next_request()
    assert request is not None and request.content_length == 10
    assert reader.read_body(request) == b"hello"
    client.sendall(b"world")
    assert reader.read_body(request) == b"world"
    assert reader.read_body(request) == b"" and request.complete


def test_a_chunked_body_is_decoded(socket_pair: Pair) -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    reader, request = parse(socket_pair, data)
    assert request is not None and request.chunked
    assert body(reader, request) == b"hello world"


def test_pipelined_requests_come_in_order(socket_pair: Pair) -> None:
    data = (
        b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    reader, first = parse(socket_pair, data)
    assert first is not None and first.url == b"/1"
    assert body(reader, first) == b"abc"
    assert reader.has_data()
    reader.done(first)
    second = reader.next_request()
    assert second is not None and second.url == b"/2" and body(reader, second) == b""
    reader.done(second)
    third = reader.next_request()
    assert third is not None and third.url == b"/3"
    reader.done(third)
    assert reader.next_request() is None


def test_expect_100_continue_is_noted(socket_pair: Pair) -> None:
    _, request = parse(
        socket_pair, b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
    )
    assert request is not None and request.expects_continue


# -- the limits (gunicorn's settings) --------------------------------------------------------------


def test_a_request_line_over_the_limit_is_414(socket_pair: Pair) -> None:
    with pytest.raises(HTTPError) as caught:
        parse(socket_pair, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n", line=100)
    assert caught.value.status == 414


def test_a_request_line_at_the_limit_passes(socket_pair: Pair) -> None:
    line = b"GET /" + b"a" * 81 + b" HTTP/1.1"
    assert len(line) == 95
    _, request = parse(socket_pair, line + b"\r\nHost: x\r\n\r\n", line=100)
    assert request is not None


def test_an_endless_request_line_is_refused_while_it_arrives(
    socket_pair: Pair,
) -> None:
    server, client = socket_pair
    client.sendall(b"GET /" + b"a" * 70000)  # never ends: refused without waiting for more
    with pytest.raises(HTTPError) as caught:
        reader_for(server).next_request()
    assert caught.value.status == 414


def test_too_many_fields_is_431(socket_pair: Pair) -> None:
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(11))
    with pytest.raises(HTTPError) as caught:
        parse(socket_pair, b"GET / HTTP/1.1\r\n" + headers + b"\r\n", fields=10)
    assert caught.value.status == 431


def test_a_field_over_the_size_limit_is_431(socket_pair: Pair) -> None:
    with pytest.raises(HTTPError) as caught:
        parse(socket_pair, b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 200 + b"\r\n\r\n", size=100)
    assert caught.value.status == 431


def test_an_endless_header_is_refused_while_it_arrives(
    socket_pair: Pair,
) -> None:
    server, client = socket_pair
    client.sendall(b"GET / HTTP/1.1\r\nX-Big: ")
    reader = reader_for(server, line=100, fields=2, size=100)
    # A read's worth and more (the budget of the head), sent while the reader reads.
    sender = threading.Thread(target=client.sendall, args=(b"v" * 70000,), daemon=True)
    sender.start()
    with pytest.raises(HTTPError) as caught:
        reader.next_request()
    assert caught.value.status == 431
    sender.join(5)


# -- smuggling and malformed requests: 400 (or 505) ------------------------------------------------

REFUSED = {
    "content-length and transfer-encoding": (
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "transfer-encoding and content-length": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"
    ),
    "two content-lengths": b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "two equal content-lengths": b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "content-length list": b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc",
    "negative content-length": b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    "signed content-length": b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
    "obsolete line folding": b"GET / HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n",
    "space in a header name": b"GET / HTTP/1.1\r\nX A: b\r\n\r\n",
    "space before the colon": b"GET / HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc",
    "non-token header name": b"GET / HTTP/1.1\r\nX@A: b\r\n\r\n",
    "NUL in a header value": b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    "bare CR in a header value": b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
    "bare LF line ends": b"GET / HTTP/1.1\nHost: x\n\n",
    "transfer-encoding gzip, chunked": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ),
    "transfer-encoding chunked, gzip": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "transfer-encoding identity": b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
    "transfer-encoding twice": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bad chunk size": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3x\r\nabc\r\n0\r\n\r\n",
    "bad method": b"G@T / HTTP/1.1\r\n\r\n",
    "no host in HTTP/1.1": b"GET / HTTP/1.1\r\nX: 1\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "transfer-encoding in HTTP/1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("data", REFUSED.values(), ids=REFUSED.keys())
def test_an_ambiguous_or_malformed_request_is_400(socket_pair: Pair, data: bytes) -> None:
    with pytest.raises(HTTPError) as caught:
        reader, request = parse(socket_pair, data)
        if request is not None:  # an error in the body shows when it is read
            body(reader, request)
    assert caught.value.status == 400


@pytest.mark.parametrize("line", [b"GET / HTTP/2.0", b"GET / HTTP/0.9", b"GET /"])
def test_another_http_version_is_505(socket_pair: Pair, line: bytes) -> None:
    with pytest.raises(HTTPError) as caught:
        parse(socket_pair, line + b"\r\n\r\n")
    assert caught.value.status == 505


def test_an_upgrade_request_is_the_last(socket_pair: Pair) -> None:
    data = (
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /next HTTP/1.1\r\n\r\n"
    )
    reader, request = parse(socket_pair, data)
    assert request is not None and reader.upgraded
    reader.done(request)
    assert reader.next_request() is None


@pytest.mark.parametrize("tail", [b"0\r\nX-T: " + b"t" * 2_000_000, b"1;" + b"e" * 2_000_000])
def test_endless_trailers_or_chunk_framing_are_refused(socket_pair: Pair, tail: bytes) -> None:
    server, client = socket_pair
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n"

    def send() -> None:
        with contextlib.suppress(OSError):  # cut off by the refusal
            client.sendall(head + tail)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    reader = reader_for(server)
    request = reader.next_request()
    assert request is not None
    with pytest.raises(HTTPError) as caught:
        body(reader, request)
    assert caught.value.status == 431
    server.close()  # the sender gets EPIPE and ends
    sender.join(5)
