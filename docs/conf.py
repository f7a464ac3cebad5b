"""Sphinx configuration of the prefork documentation (MyST Markdown sources).

Build: ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors).
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # the repository root: build without installing prefork
sys.path.insert(0, str(DOCS / "_ext"))  # the local extensions below

import prefork  # noqa: E402

project = "prefork"
author = "the prefork authors"
copyright = "the prefork authors"
version = release = prefork.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    # Local: tables and help text generated from the code at build time.
    "settings_table",  # prefork.config.SETTINGS -> the settings reference
    "cli_help",  # prefork.cli.build_parser() -> the `prefork --help` text
    "signal_table",  # prefork.master.SIGNALS + Master.handle_* -> the master's signal table
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_enable_extensions = ["deflist"]  # the option lists of cli.md
myst_heading_anchors = 3  # so [text](page.md#heading) links resolve

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}

html_theme = "alabaster"
html_title = f"prefork {release}"
