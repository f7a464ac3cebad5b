"""A WSGI app holding a large heap of small Python objects, for ``benchmarks/memory.py``.

At import it builds ``RECORDS``: about ``MEMORY_APP_MB`` MB (default 200) of records, each a dict
of an int, two strings, a float, a bool and a list of two strings (about 700 bytes a record on
CPython 3.11): a realistic heap of many small objects, not one bytes blob. The list in each record
keeps the record tracked by the garbage collector, as most application objects are, so a full
collection visits (and writes to the header of) every record.

- ``app``: GET / reads ``MEMORY_APP_READS`` (1,000) random records among the first
  ``MEMORY_APP_TOUCH`` (0.1: 10%) of ``RECORDS``, and answers 200 with the sum of some of their
  fields; every ``MEMORY_APP_GC_EVERY`` (500) requests served by a process, it calls
  ``gc.collect()``. GET /health answers at once without reading any record (the readiness
  probe, which leaves an idle server idle). An ``X-Pid`` header names the answering process.
- ``MEMORY_APP_FREEZE=1``: ``gc.freeze()`` at the end of the import, which is what a server that
  does not freeze before it forks asks of its users (``gunicorn --preload``, uWSGI).
- prefork serves ``app`` as ``python -m prefork benchmarks/apps/memory_app.py:app``; gunicorn and
  uWSGI as ``memory_app:app``.

Reading a record writes to it all the same: CPython increments the reference count of each object
it reads, so a page read by a forked worker is copied. Settings come from the environment so that
every server, which imports the module by name, builds the same app.
"""

from __future__ import annotations

import gc
import os
import random
from collections.abc import Iterable
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

#: Bytes of memory a record takes (measured on CPython 3.11: RSS growth / records built).
RECORD_BYTES = 700
MB = float(os.environ.get("MEMORY_APP_MB", "200"))
TOUCH = float(os.environ.get("MEMORY_APP_TOUCH", "0.1"))
READS = int(os.environ.get("MEMORY_APP_READS", "1000"))
GC_EVERY = int(os.environ.get("MEMORY_APP_GC_EVERY", "500"))
FREEZE = os.environ.get("MEMORY_APP_FREEZE", "") == "1"


def record(i: int) -> dict[str, Any]:
    """Record ``i``: what a row of an application's in-memory table looks like."""
    return {
        "id": i,
        "name": f"user-{i:08d}",
        "email": f"user{i}@example.com",
        "score": i * 0.5,
        "tags": [f"t{i % 97}", f"g{i % 13}"],
        "active": i % 3 == 0,
    }


RECORDS = [record(i) for i in range(max(1, int(MB * 2**20 / RECORD_BYTES)))]
#: Requests read records [0, HOT): the first TOUCH of the data, built (so laid out) together.
HOT = max(1, int(len(RECORDS) * TOUCH))
served = 0
if FREEZE:
    gc.freeze()


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Read ``READS`` random hot records; ``gc.collect()`` every ``GC_EVERY`` requests."""
    global served
    total = 0
    if environ.get("PATH_INFO") != "/health":
        randrange, records, hot = random.randrange, RECORDS, HOT
        for _ in range(READS):
            r = records[randrange(hot)]
            total += r["id"] + len(r["name"]) + len(r["tags"])
        served += 1
        if GC_EVERY and served % GC_EVERY == 0:
            gc.collect()
    body = b"%d\n" % total
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    start_response("200 OK", [*headers, ("X-Pid", str(os.getpid()))])
    return [body]
