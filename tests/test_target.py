"""Loading TARGET (prefork.target): checking it in a short-lived child, importing it afresh in
workers."""

from __future__ import annotations

import contextlib
import http.server
import os
import socketserver
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import psutil
import pytest

from prefork import target as target_module
from prefork.command import UsageError
from prefork.target import check_target, load_target, stand_in
from tests.conftest import CLIServer, request_line
from tests.test_cli import HANDLER_SOURCE

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def clean_imports(tmp_path: Path) -> Iterator[None]:
    """Forget the modules a test imports, and tmp_path on sys.path, afterwards."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]
    with contextlib.suppress(ValueError):
        sys.path.remove(str(tmp_path))


def test_check_target_keeps_nothing_of_the_target_here(tmp_path: Path, clean_imports: None) -> None:
    helper = tmp_path / "forgotten_helper.py"
    helper.write_text("VALUE = 1\n")
    ran = tmp_path / "ran-in"
    app = tmp_path / "forgotten_app.py"
    app.write_text(
        f"import os, pathlib, forgotten_helper\npathlib.Path({str(ran)!r}).write_text(str(os.getpid()))\n"
        "DATA = list(range(100_000))\n" + HANDLER_SOURCE.format(reply=b"x\n")
    )
    handler = check_target(f"{app}:Handler")
    assert handler.__name__ == "Handler" and issubclass(handler, socketserver.StreamRequestHandler)
    assert not hasattr(handler, "handle") or handler.handle is socketserver.BaseRequestHandler.handle
    assert int(ran.read_text()) != os.getpid()  # its module-level code ran in another process
    assert "forgotten_app" not in sys.modules and "forgotten_helper" not in sys.modules
    real = load_target(f"{app}:Handler")  # what a worker imports
    assert real is not handler and real.__name__ == handler.__name__
    assert int(ran.read_text()) == os.getpid()


def test_check_target_imports_the_standard_library_modules_the_target_imported(
    tmp_path: Path, clean_imports: None
) -> None:
    """Workers re-import the user's modules, not the standard library's (a cheaper boot)."""
    (tmp_path / "wave.py").write_text("SHADOW = True\n")  # a user's module with a stdlib name
    app = tmp_path / "stdlib_app.py"
    app.write_text("import colorsys, wave\n" + HANDLER_SOURCE.format(reply=b"x\n"))
    saved: dict[str, ModuleType] = {n: sys.modules.pop(n) for n in ("colorsys", "wave") if n in sys.modules}
    try:
        check_target(f"{app}:Handler")
        assert "colorsys" in sys.modules  # the standard library's: imported here too
        assert "wave" not in sys.modules  # the user's, though named as a stdlib module: not
        assert "stdlib_app" not in sys.modules
    finally:
        sys.modules.update(saved)


def test_the_stand_in_is_a_handler_of_the_same_kind() -> None:
    assert issubclass(stand_in("Web", "http"), http.server.BaseHTTPRequestHandler)
    assert issubclass(stand_in("Lines", "stream"), socketserver.StreamRequestHandler)
    assert issubclass(stand_in("Packets", "datagram"), socketserver.DatagramRequestHandler)
    plain = stand_in("Raw", "base")
    assert plain.__name__ == "Raw" and not issubclass(plain, socketserver.StreamRequestHandler)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise RuntimeError('no config')\n", "RuntimeError: no config"),
        ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
        ("import os\nos._exit(0)\n", "the check exited with status 0 before it said why"),
        ("import ctypes\nctypes.string_at(0)\n", "the check was killed by SIGSEGV before it said why"),
        ("def __getattr__(name):\n    raise ImportError('lazy ' + name)\n", "ImportError: lazy Handler"),
        ("X = 1\n", "has no attribute 'Handler'"),
    ],
)
def test_check_target_says_why_a_target_does_not_load(
    tmp_path: Path, clean_imports: None, source: str, message: str
) -> None:
    app = tmp_path / "broken_app.py"
    app.write_text(source)
    with pytest.raises(UsageError, match=message):
        check_target(f"{app}:Handler")
    assert not psutil.Process().children()


def test_a_check_that_hangs_is_ended(
    tmp_path: Path, clean_imports: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(target_module, "CHECK_TIMEOUT", 0.5)
    app = tmp_path / "hanging_app.py"
    app.write_text("import time\ntime.sleep(60)\n")
    with pytest.raises(UsageError, match=r"took over 0\.5 s"):
        check_target(f"{app}:Handler")
    assert not psutil.Process().children()  # the child was killed and reaped


@pytest.mark.timeout(40)
def test_without_preload_the_master_keeps_none_of_the_targets_memory(
    serve_cli: Callable[..., CLIServer], tmp_path: Path
) -> None:
    """An app that builds 64 MiB at import: each worker holds it, the master does not (it is
    as small as Python with prefork imported)."""
    app = tmp_path / "big_app.py"
    app.write_text("DATA = b'x' * (64 << 20)\n" + HANDLER_SOURCE.format(reply=b"x\n"))
    server = serve_cli(f"{app}:Handler", "--workers", "1")
    (worker,) = server.wait_workers(1)
    assert request_line(server.address, b"x\n") == b"x\n"
    assert psutil.Process(worker).memory_info().rss > 64 << 20
    assert psutil.Process(server.pid).memory_info().rss < 32 << 20


@pytest.mark.timeout(30)
def test_a_process_the_target_forks_does_not_hold_the_check(tmp_path: Path, clean_imports: None) -> None:
    """A target that starts a long-lived process at import (it inherits the pipe) is checked
    as soon as the checking child has said what it found."""
    app = tmp_path / "forking_app.py"
    app.write_text(
        "import os, time\nif os.fork() == 0:\n    time.sleep(5)\n    os._exit(0)\n"
        + HANDLER_SOURCE.format(reply=b"x\n")
    )
    started = time.monotonic()
    assert check_target(f"{app}:Handler").__name__ == "Handler"
    assert time.monotonic() - started < 3
