"""The import direction of prefork's modules: one way, from the command down to the
low-level modules, type-only imports included (docs/architecture.md).

:data:`ORDER` lists every module of ``prefork/``, top to bottom; a module may import only the
modules listed below it. A new module must be placed in the list, and an import that goes
up (or sideways) fails :func:`test_imports_go_down_the_stack`. The check reads the source
(``ast``): imports inside functions and under ``if TYPE_CHECKING:`` count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "prefork"

#: Every module of prefork, top to bottom: cli -> server -> master -> workers -> low level.
ORDER = (
    "prefork.__main__",
    "prefork.cli",
    # prefork status / prefork ctl, the control socket's client.
    "prefork.ctl",
    "prefork.ctltable",
    # prefork bench, the pool-size load tester: imports no server.
    "prefork.bench.client",
    "prefork.bench",
    "prefork.bench.modes",
    "prefork.bench.options",
    "prefork.bench.plot",
    "prefork.bench.report",
    "prefork.bench.rounds",
    "prefork.bench.slo",
    "prefork.bench.steps",
    "prefork.bench.runner",
    "prefork.bench.probe",
    "prefork.bench.server",
    "prefork.bench.memory",
    "prefork.bench.client_process",
    "prefork.bench.loadgen",
    "prefork.bench.protocols",
    "prefork.bench.schedule",
    "prefork.bench.load",
    "prefork.bench.parse",
    "prefork.bench.text",
    "prefork.bench.lifecycle",
    "prefork.bench.errors",
    # The socketserver-facing layer.
    "prefork.target",
    "prefork",
    "prefork.wsgi",
    "prefork.wsgi.server",
    "prefork.wsgi.handler",
    "prefork.wsgi.application",
    "prefork.wsgi.body",
    "prefork.wsgi.response",
    "prefork.wsgi.environ",
    "prefork.wsgi.reader",
    "prefork.demo",
    "prefork.httpserver",
    "prefork.server",
    # The master.
    "prefork.master",
    "prefork.commands",
    "prefork.observer",
    # What the master serves about the pool: the exporter process, its pages, the control socket.
    "prefork.exporter",
    "prefork.metricsocket",
    "prefork.exposition",
    "prefork.statuspage",
    "prefork.control",
    "prefork.stats",
    "prefork.spawn",
    "prefork.process",
    "prefork.upgrade",
    "prefork.watchdog",
    "prefork.signals",
    "prefork.events",
    "prefork.scaling",
    # The workers.
    "prefork.workers",
    "prefork.workers.thread",
    "prefork.workers.sync",
    "prefork.workers.base",
    "prefork.workers.signals",
    "prefork.workers.waiting",
    "prefork.workers.user",
    # Low level: each imports nothing above it.
    "prefork.edge",
    "prefork.tls",
    "prefork.proxyproto",
    "prefork.pool",
    "prefork.messages",
    "prefork.connections",
    "prefork.sockets",
    "prefork.contract",
    "prefork.metrics",
    "prefork.metricsregion",
    "prefork.scoreboard",
    "prefork.figures",
    "prefork.runtime",
    "prefork.systemd",
    "prefork.pidfile",
    "prefork.accesslog",
    "prefork.logs",
    "prefork.command",
    "prefork.version",
    "prefork.config.__main__",
    "prefork.config.reload",
    "prefork.config.attributes",
    "prefork.config.sources",
    "prefork.config",
    "prefork.config.commandline",
    "prefork.config.observability",
    "prefork.config.sizing",
    "prefork.config.edge",
    "prefork.config.wsgi",
    "prefork.config.files",
    "prefork.config.setting",
    "prefork.config.convert",
    "prefork.errors",
)


def module_name(path: Path) -> str:
    """``prefork/workers/base.py`` -> ``prefork.workers.base``; a package's ``__init__.py``
    -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(name: str, source: str, known: set[str]) -> set[str]:
    """The prefork modules that module ``name`` imports, anywhere in ``source`` (functions
    and ``if TYPE_CHECKING:`` blocks included). ``from P import X`` imports module ``P.X``
    when it is one of ``known``, else ``P``; importing ``P.Q.R`` also imports the packages
    ``P.Q`` (run first), except a package that ``name`` is itself in."""
    package = name if f"{name}.__init__" in known or any(k.startswith(name + ".") for k in known) else ""
    package = package or name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            if target != "prefork" and not target.startswith("prefork."):
                continue
            found.add(target)
            parts = target.split(".")
            for end in range(2, len(parts)):
                parent = ".".join(parts[:end])
                if not (name == parent or name.startswith(parent + ".")):
                    found.add(parent)
    found.discard(name)
    return found


def upward_imports(order: tuple[str, ...], sources: dict[str, str]) -> list[str]:
    """Each import in ``sources`` (module name -> source) of a module that is not listed
    below the importer in ``order``, as ``"importer -> imported"``."""
    rank = {name: index for index, name in enumerate(order)}
    known = set(sources)
    wrong = []
    for name, source in sorted(sources.items()):
        for target in sorted(imported_modules(name, source, known)):
            if rank.get(target, -1) <= rank[name]:
                wrong.append(f"{name} -> {target}")
    return wrong


def package_sources() -> dict[str, str]:
    return {module_name(path): path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py")}


def test_every_module_has_its_place_in_the_order() -> None:
    assert sorted(package_sources()) == sorted(ORDER), "place each new module in ORDER"


def test_imports_go_down_the_stack() -> None:
    assert upward_imports(ORDER, package_sources()) == []


@pytest.mark.parametrize(
    "line",
    [
        "from prefork.server import PreforkMixIn",
        "import prefork.master",
        "from prefork import server",
    ],
)
def test_an_upward_import_is_caught_even_when_type_only(line: str) -> None:
    sources = package_sources()
    sources["prefork.pool"] += f"\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    {line}\n"
    wrong = upward_imports(ORDER, sources)
    assert len(wrong) == 1 and wrong[0].startswith("prefork.pool -> prefork.")


def test_an_import_inside_a_function_counts() -> None:
    sources = package_sources()
    sources["prefork.config"] += "\ndef late():\n    from prefork.workers import WORKER_CLASSES\n"
    assert upward_imports(ORDER, sources) == ["prefork.config -> prefork.workers"]


def test_importing_a_submodule_imports_its_package_first() -> None:
    sources = package_sources()
    sources["prefork.messages"] += "\nfrom prefork.workers.waiting import ACCEPT_WAITS\n"
    assert upward_imports(ORDER, sources) == [
        "prefork.messages -> prefork.workers",
        "prefork.messages -> prefork.workers.waiting",
    ]
