"""prefork.wsgi.response: the head and the body's framing, on a real socket socket_pair (no fork)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from prefork.wsgi.response import FileWrapper, Response, body_of

Pair = tuple[socket.socket, socket.socket]  # the socket_pair fixture (tests/conftest.py)


def sent(socket_pair: Pair) -> bytes:
    server, client = socket_pair
    server.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    return data


def response(
    socket_pair: Pair,
    keep_alive: bool = True,
    head: bool = False,
    http11: bool = True,
) -> Response:
    made = Response(socket_pair[0])
    made.begin(keep_alive, head, http11)
    return made


def test_a_whole_body_in_one_write_with_its_length(socket_pair: Pair) -> None:
    r = response(socket_pair)
    r.start_response("200 OK", [("Content-Type", "text/plain")])
    r.send_whole(b"hello")
    data = sent(socket_pair)
    assert data.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nDate: ")
    assert data.endswith(b"\r\n\r\nhello") and r.keep_alive


def test_a_stream_is_chunked_on_a_kept_alive_connection(
    socket_pair: Pair,
) -> None:
    r = response(socket_pair)
    r.start_response("200 OK", [])
    r.send_iterable(iter([b"ab", b"", b"cde"]))
    data = sent(socket_pair)
    assert b"Transfer-Encoding: chunked" in data
    assert data.endswith(b"\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n") and r.keep_alive


def test_a_stream_without_keep_alive_ends_with_the_connection(
    socket_pair: Pair,
) -> None:
    r = response(socket_pair, keep_alive=False)
    r.start_response("200 OK", [])
    r.send_iterable(iter([b"ab", b"cde"]))
    data = sent(socket_pair)
    assert b"Connection: close" in data and b"Transfer-Encoding" not in data
    assert data.endswith(b"\r\n\r\nabcde") and not r.keep_alive


def test_http_1_0_keep_alive_is_said_and_a_stream_closes(
    socket_pair: Pair,
) -> None:
    r = response(socket_pair, http11=False)
    r.start_response("200 OK", [])
    r.send_whole(b"x")
    assert b"Connection: keep-alive" in socket_pair[1].recv(65536)
    r.begin(True, False, False)
    r.start_response("200 OK", [])
    r.send_chunk(b"x")
    r.finish()
    assert not r.keep_alive  # a stream to an HTTP/1.0 client: no chunking, so it closes


def test_the_applications_content_length_is_kept(socket_pair: Pair) -> None:
    r = response(socket_pair)
    r.start_response("200 OK", [("Content-Length", "3")])
    r.send_iterable(iter([b"ab", b"cdef"]))
    data = sent(socket_pair)
    assert data.endswith(b"\r\n\r\nabc") and b"chunked" not in data and r.keep_alive


def test_a_body_short_of_its_length_closes(socket_pair: Pair) -> None:
    r = response(socket_pair)
    r.start_response("200 OK", [("Content-Length", "10")])
    r.send_iterable(iter([b"ab"]))
    assert not r.keep_alive


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_no_body_statuses(socket_pair: Pair, status: str) -> None:
    r = response(socket_pair)
    r.start_response(status, [])
    r.send_whole(b"ignored")
    data = sent(socket_pair)
    assert data.endswith(b"\r\n\r\n") and b"Content-Length" not in data and b"chunked" not in data


def test_head_sends_no_body_and_no_made_up_length(socket_pair: Pair) -> None:
    r = response(socket_pair, head=True)
    r.start_response("200 OK", [("Content-Length", "5")])
    r.send_whole(b"hello")
    r.begin(True, True, True)
    r.start_response("200 OK", [])
    r.send_whole(b"")  # werkzeug returns () for HEAD
    data = sent(socket_pair)
    first, second = data.split(b"HTTP/1.1 ")[1:]
    assert b"Content-Length: 5" in first and first.endswith(b"\r\n\r\n")
    assert b"Content-Length" not in second and b"chunked" not in second and r.keep_alive


def test_hop_by_hop_headers_are_dropped_and_connection_close_obeyed(
    socket_pair: Pair,
) -> None:
    r = response(socket_pair)
    r.start_response("200 OK", [("Connection", "close"), ("Keep-Alive", "timeout=5"), ("X-A", "1")])
    r.send_whole(b"")
    data = sent(socket_pair)
    assert b"Keep-Alive" not in data and b"X-A: 1" in data and b"Connection: close" in data
    assert not r.keep_alive


def test_the_applications_date_is_not_repeated(socket_pair: Pair) -> None:
    r = response(socket_pair)
    r.start_response("200 OK", [("Date", "Tue, 01 Jan 2030 00:00:00 GMT")])
    r.send_whole(b"")
    assert sent(socket_pair).count(b"Date: ") == 1


@pytest.mark.parametrize(
    "headers",
    [
        [("X-A", "a\r\nSet-Cookie: x=1")],
        [("X-A\r\nB", "1")],
        [("X-A", "a\nb")],
        [("X", "\u20ac")],
        [("X A", "1")],
        [("Content-Length ", "1")],
        [("Content-Length", "-1")],
        [("Content-Length", "1_0")],
        [("Content-Length", "\u0661")],  # an Arabic-Indic digit: isdigit(), not ASCII
        [("Content-Length", "1"), ("content-length", "1")],
        [(b"X-A", b"b")],
        [("X-A", 1)],
    ],
)
def test_a_header_that_would_split_the_response_is_refused(
    socket_pair: Pair, headers: list[tuple[str, str]]
) -> None:
    r = response(socket_pair)
    r.start_response("200 OK", headers)
    with pytest.raises((ValueError, UnicodeEncodeError)):
        r.head(0)


@pytest.mark.parametrize("status", ["200", "OK", "2000 OK", "099 Low", "20 X", "101 Switching Protocols"])
def test_a_bad_status_is_refused(socket_pair: Pair, status: str) -> None:
    r = response(socket_pair)
    r.start_response(status, [])
    with pytest.raises(ValueError):
        r.head(0)


def test_start_response_rules(socket_pair: Pair) -> None:
    r = response(socket_pair)
    r.start_response("200 OK", [])
    with pytest.raises(AssertionError):
        r.start_response("200 OK", [])
    try:
        raise RuntimeError("late")
    except RuntimeError as exc:
        r.start_response("500 Oops", [], (type(exc), exc, exc.__traceback__))  # before the head: replaces
    assert r.status == "500 Oops"
    r.send_chunk(b"x")
    with pytest.raises(RuntimeError, match="late"):
        try:
            raise RuntimeError("late")
        except RuntimeError as exc:
            r.start_response("500 Oops", [], (type(exc), exc, exc.__traceback__))
    with pytest.raises(TypeError):
        Response(socket_pair[0]).start_response(b"200 OK", [])  # type: ignore[arg-type]


def test_a_file_goes_by_sendfile_from_its_position(socket_pair: Pair) -> None:
    with open(__file__, "rb") as file:
        content = file.read()[10:]
        file.seek(10)
        r = response(socket_pair)
        r.start_response("200 OK", [])
        assert r.send_file(FileWrapper(file))
        data = sent(socket_pair)
    assert f"Content-Length: {len(content)}".encode() in data and data.endswith(content)


def test_what_is_not_a_regular_file_is_iterated(socket_pair: Pair) -> None:
    with open("/dev/null", "rb") as null, open(__file__, "rb") as file:
        r = response(socket_pair)
        r.start_response("200 OK", [])
        assert not r.send_file(FileWrapper(null))
        assert list(FileWrapper(file, 1 << 20)) == [Path(__file__).read_bytes()]


def test_body_of() -> None:
    assert body_of([b"a"]) == b"a" and body_of((b"a", b"b")) == b"ab" and body_of([]) == b""
    assert body_of(iter([b"a"])) is None and body_of(["a"]) is None  # type: ignore[list-item]
