"""HUP reads the configuration file again (:mod:`prefork.config.reload`): each setting's new
value is applied for the new workers, or said in one log line to take a new master or a
restart. Every setting is tested against a fake master (no fork); one real start checks that
a HUP after editing ``max_requests`` recycles workers with the new limit.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from prefork import config
from prefork.config.convert import optional_octal
from prefork.config.files import toml_value
from prefork.config.reload import reloading_settings
from prefork.config.sources import Configuration, resolve
from prefork.errors import PreforkError
from tests.conftest import request_line, wait_for
from tests.test_config_sources import NAMES, SAMPLES, TARGET, write


class FakeMaster:
    """What reloading_settings uses of the master: its server, watchdog and resize."""

    def __init__(self, conf: Configuration) -> None:
        self.server = SimpleNamespace(**{s.name: conf[s.name] for s in config.SETTINGS}, configuration=conf)
        self.watchdog = SimpleNamespace(request_timeout=conf["request_timeout"], max_worker_memory=0)
        self.sizes: list[tuple[int, str]] = []

    def set_size(self, size: int, why: str) -> str:
        self.sizes.append((size, why))
        return ""


@pytest.fixture(autouse=True)
def root_level() -> Iterator[None]:
    """Restore the root logger's level (log_level applies to it)."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def started(tmp_path: Path, text: str = "", environ: dict[str, str] | None = None) -> tuple[Path, FakeMaster]:
    path = write(tmp_path / "app.toml", text)
    return path, FakeMaster(resolve({}, environ or {}, str(path), tmp_path))


def hup(master: FakeMaster) -> None:
    with reloading_settings(master):
        pass


@pytest.mark.parametrize("setting", config.ALL_SETTINGS, ids=NAMES)
def test_every_setting_at_hup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, setting: config.Setting[Any]
) -> None:
    path, master = started(tmp_path)
    sample = SAMPLES[setting.name]
    write(path, f"{setting.name} = {sample.toml}\n")
    caplog.set_level(logging.INFO, "prefork")
    hup(master)
    server, said = master.server, caplog.text
    if setting.at_hup == config.HUP:
        octal = setting.convert is optional_octal
        assert (
            f"Settings changed in {path}, applied: {setting.name} {toml_value(sample.value, octal)}" in said
        )
        assert master.server.configuration[setting.name] == sample.value
        if setting.name == "log_level":
            assert logging.getLogger().level == logging.DEBUG
        else:
            assert getattr(server, setting.name) == sample.value
        if setting.name in ("request_timeout", "max_worker_memory"):
            assert getattr(master.watchdog, setting.name) == sample.value
        assert master.sizes == ([(3, f"workers changed in {path}")] if setting.name == "workers" else [])
        return
    remedy = "takes a restart" if setting.at_hup == config.RESTART else "takes a new master (USR2)"
    assert f"{setting.name} changed in {path}: {remedy}" in said
    assert "Settings changed" not in said
    if setting in config.SETTINGS:
        assert getattr(server, setting.name) == setting.default  # not applied
    caplog.clear()
    hup(master)  # the file still differs from what runs: said again
    assert f"{setting.name} changed in {path}" in caplog.text


def test_only_server_settings_and_log_level_apply_at_hup() -> None:
    for setting in config.COMMAND_SETTINGS:
        assert setting.at_hup != config.HUP or setting.name == "log_level", setting.name


def test_a_failed_reload_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, master = started(tmp_path, "max_requests = 5\n")
    before = logging.getLogger().level
    caplog.set_level(logging.INFO, "prefork")
    write(
        path, "max_requests = 10\nrequest_timeout = 5\nlog_level = 'debug'\nworkers = 7\nbind = '[::1]:0'\n"
    )
    with pytest.raises(PreforkError, match="bad certificate"), reloading_settings(master):
        assert master.server.max_requests == 10  # applied for the body: the TLS context is built there
        raise PreforkError("bad certificate")
    assert caplog.text == ""  # the reload failed: only that is said (by the master)
    assert (master.server.max_requests, master.server.request_timeout, master.server.workers) == (
        5,
        30.0,
        None,
    )
    assert master.watchdog.request_timeout == 30.0
    assert logging.getLogger().level == before
    assert master.sizes == []
    assert master.server.configuration["max_requests"] == 5  # the next HUP tries again
    hup(master)
    assert master.server.max_requests == 10


@pytest.mark.parametrize(
    ("text", "words"),
    [("max_requests = \n", "is not valid TOML"), ("max_request = 2\n", "did you mean 'max_requests'?")],
)
def test_a_broken_file_fails_the_reload(tmp_path: Path, text: str, words: str) -> None:
    path, master = started(tmp_path, "max_requests = 5\n")
    write(path, text)
    with pytest.raises(PreforkError, match=words):
        hup(master)
    assert master.server.max_requests == 5
    os.unlink(path)
    with pytest.raises(PreforkError, match="No such file"):
        hup(master)


def test_the_environment_and_flags_still_win(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, master = started(tmp_path, "max_requests = 5\n", {"PREFORK_MAX_REQUESTS": "9"})
    write(path, "max_requests = 6\n")
    caplog.set_level(logging.INFO, "prefork")
    hup(master)
    assert master.server.max_requests == 9
    assert caplog.text == ""


def test_a_dynamic_pool_keeps_its_size(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, master = started(tmp_path, "max_workers = 8\nworkers = 2\n")
    write(path, "max_workers = 8\nworkers = 4\n")
    hup(master)
    assert "workers changed in" in caplog.text and "takes a new master (USR2)" in caplog.text
    assert master.sizes == [] and master.server.workers == 2


def test_auto_workers_at_hup_is_the_cpu_count(tmp_path: Path) -> None:
    path, master = started(tmp_path, "workers = 2\n")
    write(path, "workers = 'auto'\n")
    hup(master)
    assert master.sizes == [(config.usable_cpus(), f"workers changed in {path}")]


def test_a_server_without_configuration_is_left_alone() -> None:
    master = FakeMaster(resolve({}, {}, None, "/"))
    master.server.configuration = None
    hup(master)
    master.server.configuration = resolve({}, {}, None, "/")  # no file: nothing to read again
    hup(master)


def test_pyproject_appearing_after_the_start_is_read_on_hup(tmp_path: Path) -> None:
    master = FakeMaster(resolve({}, {}, None, tmp_path))
    write(tmp_path / "pyproject.toml", "[tool.prefork]\nmax_requests = 3\n")
    hup(master)
    assert master.server.max_requests == 3


# -- for real -----------------------------------------------------------------------------


def _hup_reads_the_file() -> bool:
    from prefork.commands import MasterCommands

    return "reloading_settings" in inspect.getsource(MasterCommands.handle_hup)


@pytest.mark.timeout(40)
@pytest.mark.skipif(not _hup_reads_the_file(), reason="handle_hup does not call reloading_settings yet")
def test_hup_after_editing_max_requests_recycles_with_the_new_limit(serve_cli: Any, tmp_path: Path) -> None:
    path = write(tmp_path / "app.toml", f'target = "{TARGET}"\nworkers = 1\n')
    server = serve_cli("--config", str(path))
    (old,) = server.wait_workers(1)
    for _ in range(3):  # no limit yet
        request_line(server.address, b"x\n")
    assert server.worker_pids() == {old}
    write(path, f'target = "{TARGET}"\nworkers = 1\nmax_requests = 2\nproc_name = "renamed"\n')
    server.signal(signal.SIGHUP)
    (new,) = wait_for(lambda: (pids := server.wait_workers(1)) != {old} and pids, timeout=15)
    server.wait_logged(f"Settings changed in {path}, applied: max_requests 2 (was 0).")
    server.wait_logged(f"proc_name changed in {path}: takes a new master (USR2)")
    for _ in range(2):
        assert request_line(server.address, b"x\n") == f"{new} x\n".encode()
    wait_for(lambda: (pids := server.wait_workers(1)) != {new} and pids, timeout=15)  # recycled


def test_a_change_reaches_every_listener(tmp_path: Path) -> None:
    """With several --bind addresses the pool has several servers: a new deny (or any
    setting HUP applies) reaches each of them, not only the first."""
    path, master = started(tmp_path, "max_requests = 5\n")
    second = SimpleNamespace(**{s.name: getattr(master.server, s.name) for s in config.SETTINGS})
    master.server.listeners = [second]
    write(path, 'max_requests = 5\ndeny = ["127.0.0.0/8"]\n')
    hup(master)
    assert [str(n) for n in master.server.deny] == [str(n) for n in second.deny] == ["127.0.0.0/8"]
