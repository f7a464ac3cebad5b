"""The conformance suite needs the interpreter's ``test`` package: fail (not skip) without it.

Without it the other modules of this directory define no case at all, so this is what makes
CI fail. Some distributions ship it apart: Debian and Ubuntu in ``libpython3.X-testsuite``,
Fedora in ``python3-test``; pyenv, the python.org installers and the official Docker images
include it.
"""

from __future__ import annotations

import importlib
import sys
import unittest

import pytest

from tests.conformance import harness


@pytest.mark.parametrize("name", harness.STDLIB_TEST_MODULES)
def test_stdlib_test_module_importable(name: str) -> None:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        importlib.import_module(name)
    except ImportError as error:
        pytest.fail(
            f"cannot import {name} ({error}): the conformance suite (tests/conformance) runs the "
            f"standard library's own tests from the interpreter's `test` package, which "
            f"{sys.executable} (Python {version}) lacks; install it (Debian/Ubuntu: "
            f"apt install libpython{version}-testsuite; Fedora: dnf install python3-test) or use "
            f"a Python that includes it",
            pytrace=False,
        )
    except unittest.SkipTest as skip:
        pytest.fail(
            f"{name} skips itself at import ({skip}): its conformance cases cannot run", pytrace=False
        )
