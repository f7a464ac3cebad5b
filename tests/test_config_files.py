"""Reading a configuration file (:mod:`prefork.config.files`): hostile paths and contents
are one line each, never a hang or a traceback; ``[tool.prefork]`` of pyproject.toml; values
written back as TOML."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from prefork.config import files
from prefork.config.files import ConfigError
from prefork.config.sources import resolve
from tests.test_config_sources import NAMES, write


def test_files_that_cannot_be_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # opened non-blocking: no writer cannot hang the start
    large = write(tmp_path / "large.toml", "#" * (files.MAX_FILE_SIZE + 1))
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"proc_name = '\xe9'\n")
    deep = write(tmp_path / "deep.toml", "a = " + "[" * 100_000)
    cases = {
        tmp_path / "missing.toml": "No such file or directory",
        tmp_path: "not a regular file",
        fifo: "not a regular file",
        Path("/dev/zero"): "not a regular file",
        large: f"larger than {files.MAX_FILE_SIZE} bytes",
        latin: "not UTF-8",
        deep: "nested too deeply",
        Path("bad\0name"): "cannot read",
    }
    for path, words in cases.items():
        with pytest.raises(ConfigError, match=words):
            resolve({}, {}, str(path), tmp_path)


def test_a_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    text = "workers = 2\n"
    path = write(tmp_path / "app.toml", text + "#" * (files.MAX_FILE_SIZE - len(text)))
    assert resolve({}, {}, str(path), tmp_path)["workers"] == 2


# -- pyproject.toml -----------------------------------------------------------------------


def test_pyproject_of_the_working_directory(tmp_path: Path) -> None:
    write(
        tmp_path / "pyproject.toml",
        '[project]\nname = "app"\n\n[tool.prefork]\nworkers = 2\nbind = "127.0.0.1:0"\n',
    )
    conf = resolve({}, {}, None, tmp_path)
    assert (conf["workers"], conf["bind"]) == (2, ("127.0.0.1:0",))
    assert conf.origin("workers") == f"file {tmp_path / 'pyproject.toml'}"
    assert resolve({}, {}, str(write(tmp_path / "other.toml", "workers = 3\n")), tmp_path)["workers"] == 3


@pytest.mark.parametrize(
    "text",
    [
        '[project]\nname = "app"\n',  # no [tool.prefork]
        '[project]\nname = "prefork-app"\n',  # mentions prefork, no table
        "this is [not TOML\n",  # not ours to judge: it does not mention prefork
    ],
)
def test_a_pyproject_without_our_table_is_ignored(tmp_path: Path, text: str) -> None:
    write(tmp_path / "pyproject.toml", text)
    conf = resolve({}, {}, None, tmp_path)
    assert not any(conf.given(name) for name in NAMES)
    assert "has no [tool.prefork] table" in conf.describe()


def test_a_broken_pyproject_with_our_table_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.prefork]\nworkers = \n")
    with pytest.raises(ConfigError, match=r"pyproject\.toml is not valid TOML"):
        resolve({}, {}, None, tmp_path)
    write(tmp_path / "pyproject.toml", "[tool]\nprefork = 3\n")
    with pytest.raises(ConfigError, match=r"tool\.prefork must be a table"):
        resolve({}, {}, None, tmp_path)


def test_config_naming_a_pyproject_reads_its_table(tmp_path: Path) -> None:
    path = write(tmp_path / "pyproject.toml", "[tool.prefork]\nworkers = 2\n")
    assert resolve({}, {}, str(path), "/")["workers"] == 2
    write(path, '[project]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"no \[tool.prefork\] table"):
        resolve({}, {}, str(path), "/")


def test_print_config_of_hostile_text_is_still_toml() -> None:
    conf = resolve({}, {"PREFORK_PROC_NAME": 'a"b\\c\n\x7f\udcff'}, None, "/")
    assert tomllib.loads(conf.describe())["proc_name"] == 'a"b\\c\n\x7f\ufffd'
