"""Report a measured figure: one ``FIGURE: name = value (limit ...)`` line on stdout (seen with
``pytest -s``; pytest-xdist drops a worker's stdout) and, when the environment variable
``PREFORK_FAULT_FIGURES`` names a file, one JSON line appended to it (safe across xdist workers:
a single ``O_APPEND`` write each)."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

FIGURES_ENV = "PREFORK_FAULT_FIGURES"


def report(name: str, value: Any, limit: str, **details: Any) -> None:
    """Print the figure ``name`` and append it (with ``details``) to $PREFORK_FAULT_FIGURES."""
    extra = "".join(f", {k}={_text(v)}" for k, v in details.items())
    print(f"FIGURE: {name} = {_text(value)} (limit {limit}{extra})", flush=True)
    path = os.environ.get(FIGURES_ENV)
    if path:
        record = {"name": name, "value": value, "limit": limit, "time": time.time(), **details}
        line = (json.dumps(record, default=str) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def distribution(values: Sequence[float]) -> dict[str, float]:
    """Median, 90th percentile and max of ``values`` (rounded; empty -> zeros)."""
    if not values:
        return {"n": 0, "median": 0.0, "p90": 0.0, "max": 0.0}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 4),
        "p90": round(p90, 4),
        "max": round(ordered[-1], 4),
    }


def _text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
