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


def test_reference_lists_every_setting_and_flag() -> None:
    text = config.reference_markdown()
    for setting in config.SETTINGS:
        assert f"`{setting.name}`" in text
        for flag in setting.flags:
            assert f"`{flag}`" in text


def test_worker_class_names_are_the_registered_worker_classes() -> None:
    from prefork.workers import WORKER_CLASSES

    assert tuple(WORKER_CLASSES) == config.WORKER_CLASS_NAMES
