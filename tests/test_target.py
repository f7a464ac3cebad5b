"""Loading TARGET (prefork.target): checking it in the master, importing it afresh in workers."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from types import ModuleType

from prefork.target import check_target, load_target
from tests.test_cli import HANDLER_SOURCE


def test_check_target_forgets_the_modules_it_imported(tmp_path: Path) -> None:
    helper = tmp_path / "forgotten_helper.py"
    helper.write_text("VALUE = 1\n")
    app = tmp_path / "forgotten_app.py"
    app.write_text("import forgotten_helper\n" + HANDLER_SOURCE.format(reply=b"x\n"))
    before = set(sys.modules)
    try:
        handler = check_target(f"{app}:Handler")
        assert handler.__name__ == "Handler"
        assert "forgotten_app" not in sys.modules
        assert "forgotten_helper" not in sys.modules
        assert load_target(f"{app}:Handler") is not handler  # imported afresh
        assert "forgotten_app" in sys.modules
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
        with contextlib.suppress(ValueError):
            sys.path.remove(str(tmp_path))


def test_check_target_keeps_the_standard_library_modules_it_imported(tmp_path: Path) -> None:
    """Workers re-import the user's modules, not the standard library's (a cheaper boot)."""
    (tmp_path / "wave.py").write_text("SHADOW = True\n")  # a user's module with a stdlib name
    app = tmp_path / "stdlib_app.py"
    app.write_text("import colorsys, wave\n" + HANDLER_SOURCE.format(reply=b"x\n"))
    saved: dict[str, ModuleType] = {n: sys.modules.pop(n) for n in ("colorsys", "wave") if n in sys.modules}
    before = set(sys.modules)
    try:
        check_target(f"{app}:Handler")
        assert "colorsys" in sys.modules  # the standard library's: kept
        assert "wave" not in sys.modules  # the user's, though named as a stdlib module: forgotten
        assert "stdlib_app" not in sys.modules
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
        sys.modules.update(saved)
        with contextlib.suppress(ValueError):
            sys.path.remove(str(tmp_path))
