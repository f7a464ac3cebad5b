"""Settings from a configuration file (``--config``, ``[tool.prefork]`` of pyproject.toml) and
the environment (``PREFORK_<NAME>``), with their precedence: defaults < file < env < flags.

Every setting of :data:`prefork.config.ALL_SETTINGS` is tested from the file, from the
environment, from its flag and with precedence, by pure functions (``resolve``, the real
argument parser); a few real starts check that the command serves what the file says.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from prefork import config
from prefork.cli import _flag_values, build_parser
from prefork.config import sources
from prefork.config.files import ConfigError
from prefork.config.sources import Configuration, resolve
from tests.conftest import ROOT, CLIServer, ServerProcess, request_line

PYTHON = sys.executable
TARGET = "tests.handlers:PidEchoHandler"


class Sample(NamedTuple):
    """A setting's value other than its default: as a TOML value, as an environment
    variable's text (a flag's too), and converted."""

    toml: str
    text: str
    value: Any


def _networks(*texts: str) -> tuple[Any, ...]:
    import ipaddress

    return tuple(ipaddress.ip_network(t) for t in texts)


SAMPLES: dict[str, Sample] = {
    "target": Sample('"tests.handlers:PidEchoHandler"', "tests.handlers:PidEchoHandler", TARGET),
    "bind": Sample(
        '["127.0.0.1:0", "unix:/tmp/a.sock"]',
        "127.0.0.1:0,unix:/tmp/a.sock",
        ("127.0.0.1:0", "unix:/tmp/a.sock"),
    ),
    "udp": Sample("true", "on", True),
    "preload": Sample("true", "yes", True),
    "log_level": Sample('"debug"', "DEBUG", "debug"),
    "log_file": Sample('"/tmp/prefork.log"', "/tmp/prefork.log", "/tmp/prefork.log"),
    "workers": Sample("3", "3", 3),
    "min_workers": Sample("2", "2", 2),
    "max_workers": Sample("8", "8", 8),
    "worker_class": Sample('"thread"', "thread", "thread"),
    "threads": Sample("8", "8", 8),
    "accept": Sample('"reuseport"', "reuseport", "reuseport"),
    "graceful_timeout": Sample("2.5", "2.5", 2.5),
    "shutdown_delay": Sample("1", "1", 1.0),
    "request_timeout": Sample("60", "60", 60.0),
    "max_requests": Sample("1000", "1000", 1000),
    "max_requests_jitter": Sample("50", "50", 50),
    "max_worker_memory": Sample('"512M"', "512M", 512 << 20),
    "gc_freeze": Sample("false", "off", False),
    "scoreboard_file": Sample('"/tmp/scoreboard"', "/tmp/scoreboard", "/tmp/scoreboard"),
    "request_queue_size": Sample("128", "128", 128),
    "socket_timeout": Sample("5", "5", 5.0),
    "read_min_rate": Sample("100", "100", 100),
    "read_deadline": Sample("10.5", "10.5", 10.5),
    "defer_accept": Sample("3", "3", 3.0),
    "allow": Sample('["10.0.0.0/8", "::1"]', "10.0.0.0/8,::1", _networks("10.0.0.0/8", "::1")),
    "deny": Sample('"192.168.0.0/16"', "192.168.0.0/16", _networks("192.168.0.0/16")),
    "unix_socket_mode": Sample("0o660", "660", 0o660),
    "proc_name": Sample('"api"', "api", "api"),
    "pidfile": Sample('"/tmp/app.pid"', "/tmp/app.pid", "/tmp/app.pid"),
    "user": Sample("12345", "12345", 12345),
    "group": Sample("12345", "12345", 12345),
    "umask": Sample("0o27", "027", 0o27),
    "control_socket": Sample('"/tmp/ctl.sock"', "/tmp/ctl.sock", "/tmp/ctl.sock"),
    "metrics": Sample('"127.0.0.1:9100"', "127.0.0.1:9100", "127.0.0.1:9100"),
    "log_format": Sample('"json"', "json", "json"),
    "access_log": Sample('"-"', "-", "-"),
    "certfile": Sample('"/tmp/cert.pem"', "/tmp/cert.pem", "/tmp/cert.pem"),
    "keyfile": Sample('"/tmp/key.pem"', "/tmp/key.pem", "/tmp/key.pem"),
    "ca_certs": Sample('"/tmp/ca.pem"', "/tmp/ca.pem", "/tmp/ca.pem"),
    "cert_reqs": Sample('"required"', "required", "required"),
    "ciphers": Sample('"ECDHE+AESGCM"', "ECDHE+AESGCM", "ECDHE+AESGCM"),
    "tls_min_version": Sample('"1.3"', "1.3", "1.3"),
    "proxy_protocol": Sample('"v2"', "v2", "v2"),
    "proxy_allow": Sample('["10.0.0.0/8"]', "10.0.0.0/8", _networks("10.0.0.0/8")),
    "keepalive": Sample("5", "5", 5.0),
    "limit_request_line": Sample("8190", "8190", 8190),
    "limit_request_fields": Sample("50", "50", 50),
    "limit_request_field_size": Sample("4096", "4096", 4096),
    "root_path": Sample('"/api"', "/api", "/api"),
    "forwarded_allow_ips": Sample('["10.1.0.0/16"]', "10.1.0.0/16", _networks("10.1.0.0/16")),
    "forwarded_header": Sample('"forwarded"', "Forwarded", "forwarded"),
}
NAMES = [s.name for s in config.ALL_SETTINGS]


def flag_args(setting: config.Setting[Any], sample: Sample) -> list[str]:
    """The command-line arguments that give ``setting`` the ``sample`` value."""
    if not setting.flags:
        return [sample.text]
    if setting.action == "append":
        return [arg for item in sample.text.split(",") for arg in (setting.flags[-1], item)]
    if setting.action == "switch":
        return [setting.flags[-1] if sample.value else "--no-" + setting.flags[-1][2:]]
    return [setting.flags[-1], sample.text]


def flags_of(*args: str) -> dict[str, sources.Value]:
    parser = build_parser()
    return _flag_values(parser, parser.parse_args(list(args)))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_every_setting_has_a_sample() -> None:
    assert list(SAMPLES) == NAMES, "a new setting needs a sample here (in the order of ALL_SETTINGS)"
    for setting in config.ALL_SETTINGS:
        assert SAMPLES[setting.name].value != setting.default, setting.name
        assert setting.env == "PREFORK_" + setting.name.upper()


@pytest.mark.parametrize("name", NAMES)
def test_setting_from_the_file(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "app.toml", f"{name} = {SAMPLES[name].toml}\n")
    conf = resolve({}, {}, str(path), tmp_path)
    assert conf[name] == SAMPLES[name].value
    assert conf.origin(name) == f"file {path}"
    assert all(not conf.given(other) for other in NAMES if other != name)


@pytest.mark.parametrize("name", NAMES)
def test_setting_from_the_environment(tmp_path: Path, name: str) -> None:
    variable = "PREFORK_" + name.upper()
    conf = resolve({}, {variable: SAMPLES[name].text}, None, tmp_path)
    assert conf[name] == SAMPLES[name].value
    assert conf.origin(name) == f"env {variable}"
    assert conf.warnings == []


@pytest.mark.parametrize("setting", config.ALL_SETTINGS, ids=NAMES)
def test_setting_from_its_flag(tmp_path: Path, setting: config.Setting[Any]) -> None:
    conf = resolve(flags_of(*flag_args(setting, SAMPLES[setting.name])), {}, None, tmp_path)
    assert conf[setting.name] == SAMPLES[setting.name].value
    assert conf.origin(setting.name) == (f"flag {setting.flags[-1]}" if setting.flags else "argument TARGET")


@pytest.mark.parametrize("setting", config.ALL_SETTINGS, ids=NAMES)
def test_precedence_flag_beats_env_beats_file_beats_default(
    tmp_path: Path, setting: config.Setting[Any]
) -> None:
    sample = SAMPLES[setting.name]
    path = write(tmp_path / "app.toml", f"{setting.name} = {sample.toml}\n")
    env = {setting.env: sample.text}
    flags = flags_of(*flag_args(setting, sample))
    layers: list[tuple[dict[str, sources.Value], dict[str, str], str | None, str]] = [
        ({}, {}, None, "default"),
        ({}, {}, str(path), f"file {path}"),
        ({}, env, str(path), f"env {setting.env}"),
        (flags, env, str(path), "flag " + setting.flags[-1] if setting.flags else "argument TARGET"),
        (flags, {}, None, "flag " + setting.flags[-1] if setting.flags else "argument TARGET"),
    ]
    for given_flags, environ, file, origin in layers:
        conf = resolve(given_flags, environ, file, tmp_path)
        assert conf.origin(setting.name) == origin
        assert conf[setting.name] == (setting.default if origin == "default" else sample.value)


def test_precedence_with_different_values(tmp_path: Path) -> None:
    path = write(tmp_path / "app.toml", "workers = 2\nmax_requests = 10\nthreads = 5\n")
    env = {"PREFORK_WORKERS": "3", "PREFORK_MAX_REQUESTS": "20"}
    conf = resolve(flags_of("-w", "4"), env, str(path), tmp_path)
    assert (conf["workers"], conf["max_requests"], conf["threads"], conf["graceful_timeout"]) == (
        4,
        20,
        5,
        30.0,
    )
    assert conf.given_values(config.SETTINGS) == {"workers": 4, "max_requests": 20, "threads": 5}


def test_a_flag_switches_off_what_the_file_switched_on(tmp_path: Path) -> None:
    path = write(tmp_path / "app.toml", "preload = true\nudp = true\n")
    conf = resolve(flags_of("--no-preload"), {"PREFORK_UDP": "off"}, str(path), tmp_path)
    assert (conf["preload"], conf["udp"]) == (False, False)


def test_repeated_bind_flags_replace_the_file_list(tmp_path: Path) -> None:
    path = write(tmp_path / "app.toml", 'bind = ["127.0.0.1:1", "127.0.0.1:2"]\n')
    conf = resolve(flags_of("-b", "unix:/tmp/a,b.sock", "--bind", "[::1]:0"), {}, str(path), tmp_path)
    assert conf["bind"] == ("unix:/tmp/a,b.sock", "[::1]:0")  # a flag's value is taken whole


# -- errors: one line naming where --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("worker = 2\n", ["unknown setting 'worker'", "did you mean 'workers'?"]),
        ("max-requests = 2\n", ["unknown setting 'max-requests'", "did you mean 'max_requests'?"]),
        (
            "timeout = 2\n",
            ["unknown setting 'timeout'", "did you mean 'request_timeout'? the setting of --timeout"],
        ),
        ("[tool.prefork]\nworkers = 2\n", ["unknown setting 'tool'"]),
        ("workers = 0\n", ["workers must be a positive integer, got 0"]),
        ("workers = true\n", ["workers must be a number"]),
        ("pidfile = ['a']\n", ["pidfile must be a string"]),
        ("bind = []\n", ["bind must be one or more non-empty addresses"]),
        ("bind = [1]\n", ["bind must be one or more non-empty addresses"]),
        ("allow = '10.0.0.1/8'\n", ["did you mean 10.0.0.0/8?"]),
        ("log_level = 'loud'\n", ["log_level must be one of debug"]),
        ("graceful_timeout = inf\n", ["graceful_timeout must be a number of seconds"]),
        ("workers = [\n", ["is not valid TOML", "at end of document"]),
        ("workers = 2\nworkers = 3\n", ["is not valid TOML"]),
    ],
)
def test_a_bad_file_is_one_error_naming_it(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write(tmp_path / "app.toml", text)
    with pytest.raises(ConfigError) as caught:
        resolve({}, {}, str(path), tmp_path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("variable", "text", "words"),
    [
        ("PREFORK_WORKERS", "many", ["PREFORK_WORKERS: workers must be a number, got 'many'"]),
        ("PREFORK_BIND", "", ["PREFORK_BIND: bind must be one or more"]),
        ("PREFORK_GC_FREEZE", "maybe", ["PREFORK_GC_FREEZE: gc_freeze must be on or off"]),
        ("PREFORK_PIDFILE", "", ["PREFORK_PIDFILE: pidfile must not be empty"]),
        ("PREFORK_USER", "no-such-user-here", ["PREFORK_USER: user must name an existing user"]),
        ("PREFORK_PROC_NAME", "\udcff", []),  # not UTF-8: taken as it is (surrogate escapes)
    ],
)
def test_a_bad_variable_is_one_error_naming_it(variable: str, text: str, words: list[str]) -> None:
    if not words:
        assert resolve({}, {variable: text}, None, "/")["proc_name"] == text
        return
    with pytest.raises(ConfigError) as caught:
        resolve({}, {variable: text}, None, "/")
    for word in words:
        assert word in str(caught.value)


def test_prefork_variables_that_are_not_settings_are_never_an_error() -> None:
    ours = {
        "PREFORK_UPGRADE_FROM": "1234",
        "PREFORK_INHERITED_FDS": "3,4",
        "PREFORK_REQUIRE_COMPONENTS": "1",
        "PREFORK_TEST_ACCEPT_WAIT": "blocking",
        "PREFORK_FAULT_STRICT": "1",
        "PREFORK_FAULT_FIGURES": "/tmp/f",
        "PREFORK_STATUS_SCREENSHOT": "/tmp/s.png",
        "PREFORK_SOMETHING_ELSE": "x",
    }
    conf = resolve({}, ours, None, "/")
    assert conf.warnings == []
    assert not any(conf.given(name) for name in NAMES)


def test_a_variable_close_to_a_setting_is_a_warning() -> None:
    conf = resolve({}, {"PREFORK_WORKER": "3", "PREFORK_TIMEOUT": "5", "PREFORK_MAXREQUESTS": "1"}, None, "/")
    assert conf.warnings == [
        "PREFORK_MAXREQUESTS is not a setting (did you mean PREFORK_MAX_REQUESTS?); ignored",
        "PREFORK_TIMEOUT is not a setting (did you mean PREFORK_REQUEST_TIMEOUT? the setting of --timeout);"
        " ignored",
        "PREFORK_WORKER is not a setting (did you mean PREFORK_WORKERS?); ignored",
    ]
    assert conf["workers"] is None


def test_internal_variables_are_prefork_s_own_names() -> None:
    from prefork import sockets, upgrade

    assert {upgrade.UPGRADE_FROM_ENV, sockets.INHERITED_FDS_ENV} == sources.INTERNAL_ENV


# -- --print-config -----------------------------------------------------------------------


def run_cli(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "prefork", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def test_print_config_is_a_config_file_saying_where_each_value_came_from(tmp_path: Path) -> None:
    every = "".join(f"{name} = {sample.toml}\n" for name, sample in SAMPLES.items() if name != "workers")
    path = write(tmp_path / "app.toml", every)
    done = run_cli("--config", str(path), "--print-config", "-w", "4", env={"PREFORK_MAX_REQUESTS": "7"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = {line.split(" =")[0]: line for line in done.stdout.splitlines() if " = " in line}
    assert list(lines) == NAMES
    assert lines["workers"].endswith("# flag --workers")
    assert lines["max_requests"].endswith("# env PREFORK_MAX_REQUESTS")
    assert lines["threads"].endswith(f"# file {path}")
    printed = tomllib.loads(done.stdout)  # a valid configuration file
    for setting in config.ALL_SETTINGS:
        expected = {"workers": 4, "max_requests": 7}.get(setting.name, SAMPLES[setting.name].value)
        assert setting.validate(printed[setting.name]) == expected, setting.name


def test_print_config_of_the_defaults_round_trips(tmp_path: Path) -> None:
    conf = resolve({}, {}, None, tmp_path)
    printed = tomllib.loads(conf.describe())
    for setting in config.ALL_SETTINGS:
        if setting.default is None:
            assert setting.name not in printed  # a comment: TOML has no None
            assert f"# {setting.name} = none" in conf.describe()
        else:
            assert setting.validate(printed[setting.name]) == setting.default
    assert "# default" in conf.describe()


# -- the command, for real ----------------------------------------------------------------


def test_an_unknown_key_exits_2_with_the_closest_name(tmp_path: Path) -> None:
    path = write(tmp_path / "app.toml", "wokers = 2\n")
    done = run_cli("--config", str(path))
    assert done.returncode == 2
    assert done.stderr == f"prefork: error: {path}: unknown setting 'wokers' (did you mean 'workers'?)\n"


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (
            [],
            {"PREFORK_WORKERS": "0"},
            "prefork: error: PREFORK_WORKERS: workers must be a positive integer, got '0'",
        ),
        (["--config", "/nonexistent/app.toml"], {}, "prefork: error: cannot read the configuration file"),
        ([], {"PREFORK_BIND": "nonsense"}, "prefork: error: PREFORK_BIND: bad address 'nonsense'"),
        (
            [],
            {"PREFORK_LOG_FILE": "/nonexistent/x.log"},
            "prefork: error: PREFORK_LOG_FILE: cannot open log file",
        ),
    ],
)
def test_bad_values_from_outside_are_one_line_exit_2(args: list[str], env: dict[str, str], line: str) -> None:
    done = run_cli(*args, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(line), done.stderr


def test_a_file_with_two_workers_serves_with_two(serve_cli: Any, tmp_path: Path) -> None:
    path = write(tmp_path / "app.toml", f'target = "{TARGET}"\nworkers = 2\nproc_name = "from-file"\n')
    server = serve_cli("--config", str(path))
    server.wait_workers(2)
    assert "with 2 sync workers" in server.log
    assert request_line(server.address, b"x\n").endswith(b" x\n")
    titles = {" ".join(p.cmdline()) for p in server.workers()}
    assert all("[from-file]" in title for title in titles), titles


def test_the_environment_beats_the_file_for_real(serve_cli: Any, tmp_path: Path) -> None:
    path = write(tmp_path / "app.toml", "workers = 3\n")
    env = {**os.environ, "PREFORK_WORKERS": "2", "PREFORK_WORKER": "9"}
    server: CLIServer = serve_cli(TARGET, "--config", str(path), env=env)
    server.wait_workers(2)
    assert "PREFORK_WORKER is not a setting (did you mean PREFORK_WORKERS?); ignored" in server.log


def test_pyproject_in_the_working_directory_is_read_for_real(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[tool.prefork]\nworkers = 2\nbind = ["127.0.0.1:0"]\n')
    handlers = ROOT / "tests" / "handlers.py"
    command = f"cd {tmp_path} && exec {PYTHON} -m prefork {handlers}:PidEchoHandler"
    server = ServerProcess(["/bin/sh", "-c", command], env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        server.wait_workers(2)
        assert request_line(server.address, b"x\n").endswith(b" x\n")
    finally:
        server.destroy()


def test_configuration_is_kept_by_the_first_server(tmp_path: Path) -> None:
    """The master keeps the configuration to read its file again on HUP (reload tests)."""
    conf = resolve({}, {}, str(write(tmp_path / "app.toml", "workers = 2\n")), tmp_path)
    assert isinstance(conf, Configuration)
    assert conf.reread()["workers"] == 2
    write(tmp_path / "app.toml", "workers = 5\n")
    assert conf.reread()["workers"] == 5
