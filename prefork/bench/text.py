"""Plain-text formatting shared by the reports of ``prefork bench``: tables and sizes.
Pure functions."""

from __future__ import annotations

from collections.abc import Sequence


def grid(rows: Sequence[Sequence[str]], left: Sequence[int] = ()) -> str:
    """``rows`` (the first is the head) as a table: columns two spaces apart, right-aligned
    but for the column numbers in ``left``, a line of dashes under the head. Raises nothing."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i in left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_bytes(size: float) -> str:
    """``size`` bytes in the largest binary unit that leaves at least 1: ``2 GiB``, ``1.5 GiB``,
    ``18.7 MiB``, ``512 bytes``. Raises nothing."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if abs(size) >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
    return f"{size:.0f} bytes"


def mib(size: float | None) -> str:
    """``size`` bytes in MiB with one decimal, ``-`` for None. Raises nothing."""
    return "-" if size is None else f"{size / 2**20:.1f}"


def ms(value: float | None) -> str:
    """Milliseconds to 3 significant digits (thousands whole, with commas), ``-`` for None.
    Raises nothing."""
    if value is None:
        return "-"
    return f"{value:,.0f} ms" if value >= 1000 else f"{value:.3g} ms"
