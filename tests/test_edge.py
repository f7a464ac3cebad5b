"""The edge of each connection (prefork.edge): TLS served from the command line to real
clients (curl, openssl s_client, urllib, xmlrpc.client), client certificates, a handshake
that never comes, a certificate replaced by HUP; the PROXY protocol before TLS and before
allow/deny."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from prefork import ctl
from tests.conftest import ROOT, CLIServer, ServerProcess, skip_unless_installed, wait_for

pytestmark = pytest.mark.timeout(60)

Serve = Callable[..., CLIServer]
ECHO = "tests.handlers:AddressEchoHandler"
HTTP = "tests.handlers:HelloHTTPHandler"


class Certificates:
    """A test CA (trustme) and a certificate for 127.0.0.1 it signed, written to files."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        issued = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cafile = str(directory / "ca.pem")
        self.certfile = str(directory / "cert.pem")
        self.keyfile = str(directory / "key.pem")
        self.ca.cert_pem.write_to_path(self.cafile)
        issued.cert_chain_pems[0].write_to_path(self.certfile)
        issued.private_key_pem.write_to_path(self.keyfile)
        self.client_cert = self.ca.issue_cert("client@example.test")

    def flags(self) -> list[str]:
        return ["--certfile", self.certfile, "--keyfile", self.keyfile]

    def client(self, with_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if with_cert:
            self.client_cert.configure_cert(context)
        return context


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path)


def tls_line(address: tuple[str, int], context: ssl.SSLContext, line: bytes, header: bytes = b"") -> bytes:
    """Send ``header`` (a PROXY header) in clear, then ``line`` over TLS; the reply line."""
    with socket.create_connection(address, timeout=5) as raw:
        raw.sendall(header)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(line)
            return conn.makefile("rb").readline()


def plain_line(address: tuple[str, int], data: bytes) -> bytes:
    """Send ``data`` in clear; what comes back until the server closes."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(data)
        reply = b""
        try:
            while chunk := sock.recv(4096):
                reply += chunk
        except ConnectionResetError:
            pass
        return reply


def totals(server: CLIServer) -> dict[str, int]:
    path = next(line.split(" at ")[1].split()[0] for line in server.lines if "Control socket at" in line)
    snapshot: dict[str, dict[str, int]] = ctl.call(path, {"command": "status"})["status"]
    return snapshot["totals"]


# -- TLS -----------------------------------------------------------------------------------------


def test_https_to_urllib(serve_cli: Serve, certs: Certificates) -> None:
    server = serve_cli(HTTP, "--workers", "2", *certs.flags())
    _, port = server.address
    assert "Listening at https://127.0.0.1:" in server.log
    url = f"https://127.0.0.1:{port}/"
    with urllib.request.urlopen(url, context=certs.client(), timeout=5) as reply:
        assert reply.status == 200 and reply.read().startswith(b"hello ")
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # not trusting the CA
        urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=5)


@pytest.mark.parametrize("client", ["curl", "openssl"])
def test_https_to_curl_and_openssl_s_client(serve_cli: Serve, certs: Certificates, client: str) -> None:
    skip_unless_installed(client, shutil.which(client))
    server = serve_cli(HTTP, "--workers", "1", *certs.flags())
    _, port = server.address
    if client == "curl":
        command = ["curl", "-sS", "--max-time", "5", "--cacert", certs.cafile, f"https://127.0.0.1:{port}/"]
        expected = b"hello "
    else:
        command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", certs.cafile]
        command += ["-quiet", "-verify_return_error"]
        expected = b"HTTP/1.0 200"
    done = subprocess.run(command, input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=10)
    assert done.returncode == 0 and expected in done.stdout, done.stderr


def test_a_line_protocol_over_tls_and_tls_1_3_only(serve_cli: Serve, certs: Certificates) -> None:
    server = serve_cli(ECHO, "--workers", "1", "--tls-min-version", "1.3", *certs.flags())
    assert "Listening at tls://127.0.0.1:" in server.log
    assert tls_line(server.address, certs.client(), b"hi\n").endswith(b" hi\n")
    old = certs.client()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        tls_line(server.address, old, b"hi\n")


def test_failed_and_silent_handshakes_are_counted_and_hold_no_worker(
    serve_cli: Serve, certs: Certificates
) -> None:
    server = serve_cli(ECHO, "--workers", "1", "--socket-timeout", "1", *certs.flags())
    address = server.address
    assert plain_line(address, b"not a TLS hello\n\n") in (b"", b"\x15\x03\x01\x00\x02\x02\x16")  # an alert
    with socket.create_connection(address, timeout=5) as silent:  # never sends a ClientHello
        started = time.monotonic()
        assert tls_line(address, certs.client(), b"after\n").endswith(b" after\n")
        assert time.monotonic() - started < 4  # the one worker was freed after 1 s
        assert silent.recv(10) == b""  # closed by the server
    assert wait_for(lambda: totals(server)["tls_failures"] == 2)
    assert "Traceback" not in server.log


def test_client_certificates_when_required(serve_cli: Serve, certs: Certificates) -> None:
    server = serve_cli(
        ECHO, "--workers", "1", "--cert-reqs", "required", "--ca-certs", certs.cafile, *certs.flags()
    )
    assert tls_line(server.address, certs.client(with_cert=True), b"mine\n").endswith(b" mine\n")
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        reply = tls_line(server.address, certs.client(), b"none\n")  # TLS 1.3: refused after
        assert reply == b""
        raise ssl.SSLError("refused: no reply")


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--certfile", "/nonexistent/cert.pem"], "cannot read certfile /nonexistent/cert.pem"),
        (["--certfile", "{cafile}", "--keyfile", "{keyfile}"], "cannot use certfile"),
        (["--certfile", "{certfile}", "--keyfile", "{keyfile}", "--cert-reqs", "required"], "needs ca_certs"),
        (["--certfile", "{certfile}", "--keyfile", "{keyfile}", "--ciphers", "NOSUCHCIPHER"], "no cipher"),
        (
            [
                "--certfile",
                "{certfile}",
                "--keyfile",
                "{keyfile}",
                "--udp",
                "tests.handlers:PidDatagramHandler",
            ],
            "need stream sockets",
        ),
    ],
)
def test_a_bad_certificate_is_one_line_and_exit_2(certs: Certificates, flags: list[str], words: str) -> None:
    args = [f.format(cafile=certs.cafile, keyfile=certs.keyfile, certfile=certs.certfile) for f in flags]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefork",
            *([] if any(":" in a for a in args) else [ECHO]),
            "--bind",
            "127.0.0.1:0",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[-1].startswith("prefork: error: ") and words in lines[-1], done.stderr
    assert "Traceback" not in done.stderr


def test_hup_reads_the_certificate_again_and_a_broken_one_keeps_the_old(
    serve_cli: Serve, certs: Certificates, tmp_path: Path
) -> None:
    server = serve_cli(ECHO, "--workers", "1", *certs.flags())
    old = server.wait_workers(1)
    good = Path(certs.certfile).read_bytes()
    Path(certs.certfile).write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n")
    server.signal(signal.SIGHUP)
    server.wait_logged("Reload failed: cannot use certfile")
    assert server.wait_workers(1) == old  # the old worker serves on, with the old certificate
    assert tls_line(server.address, certs.client(), b"still\n").endswith(b" still\n")
    renewed = trustme.CA()  # a new authority: only the new certificate is signed by it
    issued = renewed.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(certs.certfile)
    issued.private_key_pem.write_to_path(certs.keyfile)
    assert good != Path(certs.certfile).read_bytes()
    server.signal(signal.SIGHUP)
    wait_for(lambda: server.wait_workers(1).isdisjoint(old), timeout=15)
    client = ssl.create_default_context()
    renewed.configure_trust(client)
    assert tls_line(server.address, client, b"renewed\n").endswith(b" renewed\n")


XMLRPC = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.INFO)
    sys.path.insert(0, "examples")
    from xmlrpc_server import make_server

    server = make_server(("127.0.0.1", 0), workers=2)
    server.certfile, server.keyfile, server.worker_class = sys.argv[1], sys.argv[2], "thread"
    server.serve_forever()
    """
)


def test_xmlrpc_over_tls_with_keep_alive_on_the_thread_worker(certs: Certificates) -> None:
    server = ServerProcess([sys.executable, "-c", XMLRPC, certs.certfile, certs.keyfile])
    try:
        _, port = server.address
        proxy = xmlrpc.client.ServerProxy(f"https://127.0.0.1:{port}/", context=certs.client())
        assert proxy.add(2, 3) == 5 and proxy.add(4, 5) == 9  # one connection, kept alive
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=certs.client(), timeout=5)
        conn.request("POST", "/", xmlrpc.client.dumps((1, 2), "add").encode(), {"Content-Type": "text/xml"})
        assert xmlrpc.client.loads(conn.getresponse().read())[0] == (3,)
        conn.close()
    finally:
        server.destroy()


# -- the PROXY protocol ---------------------------------------------------------------------------


def test_the_handler_sees_the_client_of_the_proxy_header(serve_cli: Serve, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    flags = ["--proxy-protocol", "auto", "--deny", "198.51.100.0/24", "--access-log", str(access)]
    server = serve_cli(ECHO, "--workers", "1", *flags)
    address = server.address
    assert plain_line(address, b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 80\r\nv1\n") == b"192.0.2.7 4242 v1\n"
    wait_for(lambda: "192.0.2.7" in access.read_text())  # the access log names the client too
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"  # v2 LOCAL: a health check, its own address
    assert plain_line(address, local + b"check\n").startswith(b"127.0.0.1 ")
    assert (
        plain_line(address, b"PROXY TCP4 198.51.100.9 127.0.0.1 1 80\r\nx\n") == b""
    )  # denied by its client
    assert plain_line(address, b"no header\n") == b""  # closed unprocessed
    assert plain_line(address, b"PROXY TCP4 192.0.2.300 127.0.0.1 1 80\r\nx\n") == b""  # malformed
    wait_for(lambda: (t := totals(server))["proxy_refused"] == 2 and t["denied"] == 1)
    assert "Closed a connection from ('127.0.0.1'" in server.log and "Traceback" not in server.log


def test_a_proxy_header_from_a_peer_not_allowed_is_refused(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", "1", "--proxy-protocol", "v1", "--proxy-allow", "10.0.0.0/8")
    assert plain_line(server.address, b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 80\r\nx\n") == b""
    server.wait_logged("a PROXY header from a peer not in proxy_allow")


def test_tls_behind_a_proxy_header(serve_cli: Serve, certs: Certificates) -> None:
    server = serve_cli(ECHO, "--workers", "1", "--proxy-protocol", "v2", *certs.flags())
    addresses = socket.inet_pton(socket.AF_INET6, "2001:db8::7") + socket.inet_pton(socket.AF_INET6, "::1")
    body = addresses + (4242).to_bytes(2, "big") + (443).to_bytes(2, "big")
    header = b"\r\n\r\n\x00\r\nQUIT\n\x21\x21" + len(body).to_bytes(2, "big") + body
    assert tls_line(server.address, certs.client(), b"both\n", header) == b"2001:db8::7 4242 both\n"


def test_tls_on_a_unix_socket(serve_cli: Serve, certs: Certificates, unix_path: str) -> None:
    server = serve_cli(ECHO, "--workers", "1", "--bind", f"unix:{unix_path}", *certs.flags())
    server.wait_logged(f"unix:{unix_path} (tls)")
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5)
        raw.connect(unix_path)
        with certs.client().wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"local\n")
            assert conn.makefile("rb").readline().endswith(b" local\n")


@pytest.mark.parametrize("edge", ["tls", "proxy"])
def test_the_read_rules_hold_behind_the_edge(serve_cli: Serve, certs: Certificates, edge: str) -> None:
    """A client trickling a byte every 0.5 s, over TLS or behind a PROXY header, is cut at
    read_deadline as a plain one is (it was held until request_timeout)."""
    flags = ["--socket-timeout", "1", "--read-deadline", "2", "--timeout", "30"]
    flags += certs.flags() if edge == "tls" else ["--proxy-protocol", "v1"]
    server = serve_cli(HTTP, "--workers", "1", *flags)
    raw = socket.create_connection(server.address, timeout=10)
    sock: socket.socket = (
        certs.client().wrap_socket(raw, server_hostname="127.0.0.1") if edge == "tls" else raw
    )
    with sock:
        if edge == "proxy":
            sock.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 80\r\n")
        started = time.monotonic()
        with pytest.raises(OSError):
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 50:
                sock.send(bytes([byte]))
                time.sleep(0.5)
        assert time.monotonic() - started < 6  # read_deadline (2 s) and the time to notice


def test_a_certfile_that_is_a_fifo_is_refused_without_hanging(certs: Certificates, tmp_path: Path) -> None:
    fifo = tmp_path / "cert.fifo"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "prefork", ECHO, "--bind", "127.0.0.1:0", "--certfile", str(fifo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 2 and "not a regular file" in done.stderr, done.stderr
