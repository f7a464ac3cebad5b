"""A handler module that cannot be imported (for the CLI's exit status 2)."""

raise RuntimeError("this module fails to import on purpose")
