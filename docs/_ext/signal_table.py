"""``signal-table`` directive: the master's signals, checked against ``prefork.signals`` and ``prefork.master``.

The rows come from :data:`prefork.signals.SIGNALS` (signal -> ``Master.handle_<name>``), in its
order. The effect column is the directive's content, one line per signal, ``NAME: text``
(inline Markdown allowed); it is written in the docs because most ``handle_*`` methods have no
docstring. The build warns (an error under ``-W``) when a signal of ``SIGNALS`` has no
description, or a description names a signal that ``SIGNALS`` lacks and does not start with
"Planned" (signals documented ahead of their implementation). Planned rows come last.
"""

from __future__ import annotations

import inspect
import signal
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from prefork import master
from prefork.signals import SIGNALS

log = logging.getLogger(__name__)


class SignalTable(SphinxDirective):
    """A table: signal, the master's method, effect."""

    has_content = True

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(inspect.getfile(master))
        effects: dict[str, str] = {}
        for line in self.content:
            if not line.strip():
                continue
            name, sep, text = line.partition(":")
            if not sep or not text.strip():
                self._warn(f"signal-table: expected 'NAME: effect', got {line!r}")
                continue
            effects[name.strip().upper().removeprefix("SIG")] = text.strip()

        rows: list[tuple[str, str, str]] = []
        for sig, method in SIGNALS.items():
            short = sig.name.removeprefix("SIG")
            if short not in effects:
                self._warn(f"signal-table: {sig.name} is in prefork.signals.SIGNALS but not described")
            if not hasattr(master.Master, f"handle_{method}"):
                self._warn(f"signal-table: Master has no handle_{method} for {sig.name}")
            rows.append((short, f"handle_{method}", effects.pop(short, "")))
        for short, text in effects.items():
            if not hasattr(signal, "SIG" + short):
                self._warn(f"signal-table: {short} is not a signal")
            elif not text.lower().startswith("planned"):
                self._warn(f"signal-table: SIG{short} is not in prefork.signals.SIGNALS; mark it Planned")
            rows.append((short, "", text))
        return [self._table(rows)]

    def _warn(self, message: str) -> None:
        log.warning(message, location=self.get_location())

    def _table(self, rows: list[tuple[str, str, str]]) -> nodes.table:
        table = nodes.table(classes=["signal-table"])
        group = nodes.tgroup(cols=3)
        table += group
        for width in (12, 22, 66):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += _row([nodes.Text("signal")], [nodes.Text("master method")], [nodes.Text("effect")])
        body = nodes.tbody()
        group += body
        for short, method, text in rows:
            method_cell: list[nodes.Node] = [nodes.literal("", f"Master.{method}")] if method else []
            effect, messages = self.parse_inline(text, lineno=self.lineno)
            body += _row([nodes.literal("", short)], method_cell, [*effect, *messages])
        return table


def _row(*cells: list[nodes.Node]) -> nodes.row:
    row = nodes.row()
    for content in cells:
        entry = nodes.entry()
        entry += nodes.paragraph("", "", *content)
        row += entry
    return row


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("signal-table", SignalTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
