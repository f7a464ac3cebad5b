"""The conformance suite's fixture: each case runs in its own temporary directory.

The stdlib tests create files relative to the current directory (``os_helper.TESTFN``, the
Unix socket names of ``socket_helper.create_unix_domain_name()``), as they do under regrtest,
which runs them in a temporary directory; here too, rather than in the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
