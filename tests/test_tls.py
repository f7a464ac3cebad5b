"""prefork.tls: the context built from the TLS settings, and a handshake bounded in all."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import trustme

from prefork.tls import build_context, handshake


@pytest.fixture
def files(tmp_path: Path) -> tuple[trustme.CA, str, str]:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    return ca, cert, key


def test_the_context_follows_the_settings(files: tuple[trustme.CA, str, str], tmp_path: Path) -> None:
    ca, cert, key = files
    context = build_context(cert, key)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2 and context.verify_mode is ssl.CERT_NONE
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    strict = build_context(cert, key, str(tmp_path / "ca.pem"), "required", "ECDHE+AESGCM", "1.3")
    assert strict.minimum_version is ssl.TLSVersion.TLSv1_3 and strict.verify_mode is ssl.CERT_REQUIRED
    with pytest.raises(ValueError, match="cannot use certfile"):
        build_context(key, cert)  # swapped


def test_a_handshake_is_bounded_in_all_whatever_the_clients_pace(files: tuple[trustme.CA, str, str]) -> None:
    _, cert, key = files
    server_end, client_end = socket.socketpair()
    with server_end, client_end:
        tls = build_context(cert, key).wrap_socket(
            server_end, server_side=True, do_handshake_on_connect=False
        )
        stop = threading.Event()

        def trickle() -> None:  # a byte of a ClientHello every 0.1 s: never silent for long
            while not stop.wait(0.1):
                try:
                    client_end.send(b"\x16")
                except OSError:
                    return

        thread = threading.Thread(target=trickle)
        thread.start()
        started = time.monotonic()
        try:
            with pytest.raises((TimeoutError, ssl.SSLError)):
                handshake(tls, time.monotonic() + 0.5)
        finally:
            stop.set()
            thread.join(5)
            tls.close()
        assert time.monotonic() - started < 1.5
