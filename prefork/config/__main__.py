"""``python -m prefork.config``: print the settings reference (Markdown tables)."""

from prefork.config import reference_markdown

print(reference_markdown())
