"""Where each setting's value comes from: defaults < configuration file < environment < flags.

- **The file**: ``--config PATH`` (TOML; its top-level keys are setting names), or else the
  ``[tool.prefork]`` table of ``pyproject.toml`` in the working directory (a ``--config``
  file named ``pyproject.toml`` is read the same way). Keys are the names of
  :data:`prefork.config.ALL_SETTINGS`; an unknown key is an error naming the file, the key
  and the closest valid name.
- **The environment**: ``PREFORK_<NAME>`` for each setting (``PREFORK_WORKERS=4``); a list
  is comma-separated (``PREFORK_BIND=127.0.0.1:8000,unix:/run/app.sock``). Other
  ``PREFORK_`` variables are not settings (prefork's own, such as ``PREFORK_UPGRADE_FROM``
  on a USR2 upgrade, and test switches): they are ignored, with a warning only for a name
  close to a setting's (``PREFORK_WORKER``), the likely typo.
- **The flags**, as parsed by the command.

:func:`resolve` combines them into a :class:`Configuration`, which says for each setting its
value and where it came from (``prefork --print-config``) and reads the file again on HUP
(:meth:`Configuration.reread`). Every failure is a :class:`~prefork.config.files.ConfigError`
with one line. Used by the ``prefork`` command, in the master.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from prefork.config import ALL_SETTINGS, Setting
from prefork.config.convert import optional_octal
from prefork.config.files import PYPROJECT, ConfigError, read_pyproject, read_toml, toml_value

#: The origin of a value nobody gave.
DEFAULT = "default"
#: Every environment variable that starts as a setting's does.
ENV_PREFIX = "PREFORK_"
#: prefork's own variables (the USR2 upgrade's, :data:`prefork.upgrade.UPGRADE_FROM_ENV` and
#: :data:`prefork.sockets.INHERITED_FDS_ENV`; a test keeps them equal): never settings.
INTERNAL_ENV = frozenset({"PREFORK_UPGRADE_FROM", "PREFORK_INHERITED_FDS"})

_BY_NAME: dict[str, Setting[Any]] = {s.name: s for s in ALL_SETTINGS}
#: A flag's name as a key (``timeout`` for ``--timeout``) -> the setting, for suggestions.
_BY_FLAG: dict[str, Setting[Any]] = {
    f.lstrip("-").replace("-", "_"): s for s in ALL_SETTINGS for f in s.flags if f.startswith("--")
}


class Value(NamedTuple):
    """A setting's value (converted) and where it came from: ``default``, ``file PATH``,
    ``env NAME`` or ``flag --NAME`` (``argument TARGET`` for the positional one)."""

    value: Any
    origin: str


class Source(NamedTuple):
    """The file the settings are read from: ``path`` (absolute), and whether it is the
    working directory's ``pyproject.toml`` looked for without ``--config`` (then ``path`` is
    where it is looked for again on HUP, and ``found`` whether it had a ``[tool.prefork]``)."""

    path: str | None
    pyproject: bool = False
    found: bool = False


class Configuration:
    """Every setting's effective value and where it came from, the file it was read from,
    and the warnings to log (unknown ``PREFORK_`` variables that look like a typo). Made by
    :func:`resolve`; the ``prefork`` command keeps it (in the master) to read the file again
    on HUP. Values are converted (``workers`` an int, ``allow`` a tuple of networks)."""

    def __init__(
        self,
        values: dict[str, Value],
        source: Source,
        env: dict[str, Value],
        flags: dict[str, Value],
        warnings: list[str],
    ) -> None:
        self.values = values
        self.source = source
        self.env = env
        self.flags = flags
        self.warnings = warnings

    def __getitem__(self, name: str) -> Any:
        """The value of the setting ``name``."""
        return self.values[name].value

    def origin(self, name: str) -> str:
        """Where the value of ``name`` came from (``default``, ``file PATH``, ...)."""
        return self.values[name].origin

    def given(self, name: str) -> bool:
        """Whether ``name`` was given (in the file, the environment or a flag)."""
        return self.values[name].origin != DEFAULT

    def where(self, name: str) -> str:
        """A prefix naming where ``name`` was given, for an error found later (an address
        that cannot be parsed): ``PATH: `` or ``PREFORK_NAME: ``; "" for a flag or default."""
        origin = self.origin(name)
        kind, _, place = origin.partition(" ")
        return f"{place}: " if kind in ("file", "env") else ""

    def given_values(self, settings: Iterable[Setting[Any]]) -> dict[str, Any]:
        """The values of those of ``settings`` that were given (for the server's: the
        constructor's keyword arguments; defaults are left to the server class)."""
        return {s.name: self[s.name] for s in settings if self.given(s.name)}

    def reread(self) -> Configuration:
        """The configuration with the file read again (the one given, or the working
        directory's ``pyproject.toml``) and the same environment and flags (the master's do
        not change). Raises :class:`ConfigError` when the file cannot be used now."""
        if self.source.pyproject:
            assert self.source.path is not None
            source, table = _pyproject(os.path.dirname(self.source.path))
        else:
            source, table = self.source, _file_table(self.source.path)
        return _combine(table, source, self.env, self.flags, self.warnings)

    def keeping(self, kept: Mapping[str, Value]) -> Configuration:
        """This configuration with the values ``kept`` instead (those a HUP did not apply:
        the next HUP compares the file with what runs, and says it again)."""
        return Configuration({**self.values, **kept}, self.source, self.env, self.flags, self.warnings)

    def describe(self) -> str:
        """``prefork --print-config``: each setting as a TOML line with where its value came
        from, under a line naming the file read. A setting without a value (None) is a
        comment; the rest is a valid configuration file."""
        if self.source.path is None:
            read = "none"
        elif self.source.pyproject and not self.source.found:
            read = f"none ({self.source.path} has no [tool.prefork] table)"
        else:
            read = str(self.source.path) + (" [tool.prefork]" if self.source.pyproject else "")
        lines = ["# prefork --print-config: each setting's value, and where it came from", f"# file: {read}"]
        rows = []
        for setting in ALL_SETTINGS:
            value = self[setting.name]
            text = f"{setting.name} = {toml_value(value, octal=setting.convert is optional_octal)}"
            rows.append(("# " if value is None else "") + text)
        width = min(max(map(len, rows)), 48)
        for row, setting in zip(rows, ALL_SETTINGS, strict=True):
            lines.append(f"{row.ljust(width)}  # {self.origin(setting.name)}")
        return "\n".join(lines)


def resolve(
    flags: Mapping[str, Value],
    environ: Mapping[str, str],
    config: str | None = None,
    directory: str | os.PathLike[str] = ".",
) -> Configuration:
    """The configuration of the ``prefork`` command: the defaults, then the file (``config``,
    a path; None: ``pyproject.toml`` in ``directory``, if it has ``[tool.prefork]``), then
    ``environ``'s ``PREFORK_<NAME>`` variables, then ``flags`` (the converted values of the
    flags given, with their origin). Raises :class:`ConfigError` (one line) for a file that
    cannot be read or parsed, an unknown key, or a value of the file or the environment that
    its setting refuses."""
    if config is None:
        source, table = _pyproject(directory)
    else:
        source = Source(os.path.abspath(config))
        table = _file_table(source.path)
    env, warnings = from_environment(environ)
    return _combine(table, source, env, dict(flags), warnings)


def from_file(table: Mapping[str, Any], path: str) -> dict[str, Value]:
    """The settings of a configuration file's ``table`` (read from ``path``), converted.
    Raises :class:`ConfigError` for an unknown key (with the closest valid name) or a value
    its setting refuses, naming the file."""
    found = {}
    for key, raw in table.items():
        setting = _BY_NAME.get(key)
        if setting is None:
            raise ConfigError(f"{path}: unknown setting {key!r}{_suggestion(key, repr)}")
        try:
            found[key] = Value(setting.validate(raw), f"file {path}")
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return found


def from_environment(environ: Mapping[str, str]) -> tuple[dict[str, Value], list[str]]:
    """The settings given as ``PREFORK_<NAME>`` variables of ``environ``, converted, and a
    warning for each other ``PREFORK_`` variable whose name is close to a setting's (the
    others are prefork's own or someone else's: ignored). Raises :class:`ConfigError` for a
    value its setting refuses, naming the variable."""
    found = {}
    for setting in ALL_SETTINGS:
        raw = environ.get(setting.env)
        if raw is not None:
            try:
                found[setting.name] = Value(setting.validate(raw), f"env {setting.env}")
            except ValueError as exc:
                raise ConfigError(f"{setting.env}: {exc}") from None
    warnings = []
    for variable in sorted(environ):
        if variable.startswith(ENV_PREFIX) and variable not in INTERNAL_ENV:
            key = variable[len(ENV_PREFIX) :].lower()
            if key not in _BY_NAME:
                hint = _suggestion(key, lambda name: ENV_PREFIX + name.upper(), cutoff=0.8)
                if hint:
                    warnings.append(f"{variable} is not a setting{hint}; ignored")
    return found, warnings


def _combine(
    table: Mapping[str, Any] | None,
    source: Source,
    env: dict[str, Value],
    flags: dict[str, Value],
    warnings: list[str],
) -> Configuration:
    values = {s.name: Value(s.default, DEFAULT) for s in ALL_SETTINGS}
    if table is not None:
        assert source.path is not None
        values.update(from_file(table, source.path))
    values.update(env)
    values.update(flags)
    return Configuration(values, source, env, flags, warnings)


def _file_table(path: str | None) -> dict[str, Any] | None:
    """The settings table of the file at ``path``: the document, or the ``[tool.prefork]``
    table of a file named ``pyproject.toml``."""
    if path is None:
        return None
    document = read_toml(path)
    if os.path.basename(path) != PYPROJECT:
        return document
    tool = document.get("tool")
    table = tool.get("prefork") if isinstance(tool, dict) else None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: no [tool.prefork] table of settings")
    return table


def _pyproject(directory: str | os.PathLike[str]) -> tuple[Source, dict[str, Any] | None]:
    found = read_pyproject(directory)
    if found is None:
        return Source(os.path.abspath(os.path.join(directory, PYPROJECT)), pyproject=True), None
    path, table = found
    return Source(path, pyproject=True, found=True), table


def _suggestion(key: str, spell: Callable[[str], str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'workers'?)`` for ``key``: the setting it names with dashes
    (``max-requests``), the setting of the flag of that name (``timeout``:
    ``request_timeout``), else the closest setting name; "" when none is close. ``spell``
    writes a setting's name as the user would have to."""
    normal = key.replace("-", "_")
    if normal in _BY_NAME:
        return f" (did you mean {spell(normal)}?)"
    setting = _BY_FLAG.get(normal)
    if setting is not None:
        return f" (did you mean {spell(setting.name)}? the setting of --{normal.replace('_', '-')})"
    import difflib  # here: only a mistake pays for importing it

    close = difflib.get_close_matches(normal, list(_BY_NAME), n=1, cutoff=cutoff)
    return f" (did you mean {spell(close[0])}?)" if close else ""
