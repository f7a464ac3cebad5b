"""The fault suite's marker: ``long`` tests (a 10 s storm, 1,000 restarts) can be run alone
(``-m long``) or left out (``-m "not long"``)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: a fault test that runs for 10 s or more")
