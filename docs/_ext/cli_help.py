"""``prefork-help`` directive: the ``prefork --help`` text, generated from ``prefork.cli``.

Inserts :func:`prefork.cli.build_parser` ``.format_help()`` as a literal block at build time,
formatted at a fixed width so the output does not depend on the terminal of the build.
"""

from __future__ import annotations

import argparse
import inspect
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from prefork import cli, config

WIDTH = 88


class PreforkHelp(SphinxDirective):
    """Insert ``prefork --help`` as a literal block."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        for module in (cli, config):  # the flags come from both
            self.env.note_dependency(inspect.getfile(module))
        parser = cli.build_parser()
        parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=WIDTH)
        text = parser.format_help().rstrip()
        block = nodes.literal_block(text, text)
        block["language"] = "none"
        return [block]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("prefork-help", PreforkHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
