"""``settings-table`` directive: the settings reference, generated from ``prefork.config``.

Every setting is declared once, in :data:`prefork.config.ALL_SETTINGS` (the servers' and the
command's); this directive inserts :func:`prefork.config.reference_markdown` (the same text
``python -m prefork.config`` prints: each setting's flags, file key, environment variable,
default and what a HUP does with it) into the page at build time, so the reference cannot
drift from the code.
"""

from __future__ import annotations

import inspect
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from prefork import config
from prefork.config import commandline, edge, observability, sizing


class SettingsTable(SphinxDirective):
    """Insert the Markdown settings reference (one subsection and table per section)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        for module in (config, commandline, edge, observability, sizing):  # rebuild when one changes
            self.env.note_dependency(inspect.getfile(module))
        container = nodes.container()
        text = config.reference_markdown()
        # With MyST, nested_parse parses Markdown; match_titles lets the "### Section" headings
        # become subsections of the page.
        lines = StringList(text.splitlines(), "prefork.config")
        self.state.nested_parse(lines, 0, container, match_titles=True)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("settings-table", SettingsTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
