"""Settings: declared once, validated with clear messages, turned into docs."""

from __future__ import annotations

import pytest

from prefork import PreforkMixIn, config


def test_every_setting_is_a_server_attribute_with_its_declared_default() -> None:
    for setting in config.SETTINGS:
        assert getattr(PreforkMixIn, setting.name) == setting.default


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        (config.WORKERS, "4", 4),
        (config.WORKERS, None, None),
        (config.WORKERS, "auto", None),
        (config.GRACEFUL_TIMEOUT, "2.5", 2.5),
        (config.GRACEFUL_TIMEOUT, 0, 0.0),
        (config.REQUEST_QUEUE_SIZE, 128, 128),
        (config.PROC_NAME, "api", "api"),
        (config.WORKER_CLASS, "sync", "sync"),
    ],
)
def test_valid_values(setting: config.Setting[object], value: object, expected: object) -> None:
    assert setting.validate(value) == expected


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        (config.WORKERS, 0),
        (config.WORKERS, -1),
        (config.WORKERS, True),
        (config.WORKERS, "x"),
        (config.GRACEFUL_TIMEOUT, -0.1),
        (config.GRACEFUL_TIMEOUT, float("nan")),
        (config.REQUEST_QUEUE_SIZE, 0),
        (config.PROC_NAME, ""),
        (config.WORKER_CLASS, "eventlet"),
        (config.SOCKET_TIMEOUT, "inf"),
        (config.SOCKET_TIMEOUT, 1e12),
        (config.REQUEST_TIMEOUT, float("inf")),
        (config.GRACEFUL_TIMEOUT, "1e7"),
        (config.WORKERS, 1025),
    ],
)
def test_invalid_values_name_the_setting(setting: config.Setting[object], value: object) -> None:
    with pytest.raises(ValueError, match=f"^{setting.name} "):
        setting.validate(value)


def test_usable_cpus_is_positive() -> None:
    assert config.usable_cpus() >= 1


def test_reference_lists_every_setting_flag_file_key_and_variable() -> None:
    text = config.reference_markdown()
    rows = {
        line.split(" | ")[0].removeprefix("| "): line for line in text.splitlines() if line.startswith("| `")
    }
    assert list(rows) == [f"`{s.name}`" for s in config.ALL_SETTINGS]  # the name is the file key
    for setting in config.ALL_SETTINGS:
        row = rows[f"`{setting.name}`"]
        assert f"`PREFORK_{setting.name.upper()}`" in row
        assert {"HUP": "applied", "USR2": "USR2", "restart": "restart"}[setting.at_hup] in row
        for flag in setting.flags:
            assert f"`{flag}`" in row


def test_command_settings_are_not_server_attributes() -> None:
    assert config.ALL_SETTINGS == config.COMMAND_SETTINGS + config.SETTINGS
    for setting in config.COMMAND_SETTINGS:
        assert not hasattr(PreforkMixIn, setting.name), setting.name
    names = [s.name for s in config.ALL_SETTINGS]
    assert len(names) == len(set(names))
    flags = [f for s in config.ALL_SETTINGS for f in s.flags]
    assert len(flags) == len(set(flags))


def test_every_setting_declares_how_its_flag_takes_a_value() -> None:
    for setting in config.ALL_SETTINGS:
        assert setting.action in ("store", "append", "switch"), setting.name
        assert setting.at_hup in (config.HUP, config.USR2, config.RESTART), setting.name
        assert bool(setting.flags) or setting.name == "target"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8000", ("127.0.0.1:8000",)),
        (" 127.0.0.1:1 , unix:/run/a.sock ", ("127.0.0.1:1", "unix:/run/a.sock")),
        (["unix:/run/a,b.sock"], ("unix:/run/a,b.sock",)),
        (("[::1]:0",), ("[::1]:0",)),
    ],
)
def test_bind_takes_a_list_or_a_comma_separated_string(value: object, expected: tuple[str, ...]) -> None:
    from prefork.config.commandline import BIND

    assert BIND.validate(value) == expected


@pytest.mark.parametrize("value", ["", ",", ["a", ""], [1], 8000, None, {"a": 1}])
def test_bind_refuses_no_address(value: object) -> None:
    from prefork.config.commandline import BIND

    with pytest.raises(ValueError, match=r"^bind must be"):
        BIND.validate(value)


def test_worker_class_names_are_the_registered_worker_classes() -> None:
    from prefork.workers import WORKER_CLASSES

    assert tuple(WORKER_CLASSES) == config.WORKER_CLASS_NAMES


def test_an_error_quoting_a_huge_value_stays_short() -> None:
    with pytest.raises(ValueError) as raised:
        config.WORKERS.validate("9" * 5000)
    assert raised.value.args[0].startswith("workers ") and len(raised.value.args[0]) <= 220
