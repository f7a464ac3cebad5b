"""Instructions per request executed by a worker, under callgrind: what each engine adds.

Run it::

    python benchmarks/request_cost.py [--requests 200,1200] [--clients 8] [--json PATH]

Needs valgrind (``apt-get install valgrind``); without it the script says so and exits 0.

Each contender of ``http_hello.py`` (``prefork``, ``prefork-no-timeout``, ``bare``) runs with
one worker under ``valgrind --tool=callgrind``, the worker serving the HTTP hello
(``BaseHTTPRequestHandler``). A client of ``--clients`` threads sends A requests (a connection
each), the contender is stopped and callgrind writes the worker's instruction count (``Ir``);
then the same with B requests. ``(Ir(B) - Ir(A)) / (B - A)`` is the worker's count per request,
its start and stop cancelled out. Under callgrind the worker is about 50 times slower than the
client, so connections are always queued, as under load.

Unlike req/s on a shared machine, this count is deterministic (to about 0.5% between runs):
it measures the Python and C code each engine runs per request in user space, not the
kernel's work (``strace -c`` shows the same 8 system calls per request for prefork and the
bare loop) nor the scheduling. The bare fork loop (the stdlib ``serve_forever()`` in a
forked child) is the floor: ``prefork / bare`` above 1 is what the engine adds.

Exit status: 0 when every contender was measured (or valgrind is missing), 1 otherwise.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import glob
import os
import shutil
import socket
import sys
import tempfile
import time

import psutil
from apps import harness

CONTENDERS = ("prefork", "prefork-no-timeout", "bare")
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def send_requests(port: int, count: int, clients: int) -> None:
    """``count`` HTTP requests, a connection each, from ``clients`` threads; each reply read to EOF."""

    def one(_: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as conn:
            conn.sendall(REQUEST)
            while conn.recv(65536):
                pass

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(count)))


def callgrind_total(path: str) -> int:
    """The total instruction count in one callgrind output file."""
    with open(path) as fh:
        for line in fh:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no instruction count in {path}")


def worker_instructions(kind: str, requests: int, clients: int, tmp: str) -> tuple[int, list[int]]:
    """Start ``kind`` under callgrind with one worker, send ``requests``, stop it; return the
    worker's instruction count and the pids that outlived the group's SIGKILL (normally [])."""
    out = tempfile.mkdtemp(dir=tmp)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "http_hello.py")
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.%p"]
    command.append(f"--log-file={out}/valgrind.%p.log")  # not in the output, whose first line is the port
    command += [sys.executable, script, "--serve", kind, "--workers", "1", "--backlog", "1024"]
    server = harness.Server(kind, command)
    workers: set[int] = set()
    try:
        # No probe request: the port is printed once the socket listens; connections queue.
        port = harness.wait_printed_port(server, lambda port: True, timeout=120)
        send_requests(port, requests, clients)
        workers = {child.pid for child in psutil.Process(server.pid).children(recursive=True)}
    finally:
        left = server.stop(grace=60)
    counts = {int(path.rsplit(".", 1)[1]): path for path in glob.glob(f"{out}/callgrind.*")}
    found = [callgrind_total(counts[pid]) for pid in workers if pid in counts]
    if len(found) != 1:
        raise RuntimeError(f"{kind}: expected one worker's callgrind file, found {len(found)}")
    return found[0], left


def measure(kind: str, low: int, high: int, clients: int, tmp: str) -> harness.Figures:
    """The worker's instructions for ``low`` and for ``high`` requests, and per request."""
    a, left_a = worker_instructions(kind, low, clients, tmp)
    b, left_b = worker_instructions(kind, high, clients, tmp)
    return {"low": a, "high": b, "per_request": (b - a) / (high - low), "left": left_a + left_b}


def main() -> int:
    ap = harness.bench_parser(__doc__)
    ap.add_argument("--requests", default="200,1200", help="the two request counts A,B (200,1200)")
    ap.add_argument("--clients", type=int, default=8, help="client threads (8)")
    harness.add_only_option(ap)
    harness.add_report_options(ap, check=None)
    args = ap.parse_args()
    low, high = (int(n) for n in args.requests.split(","))
    if not 0 < low < high:
        ap.error("--requests takes two counts A,B with 0 < A < B")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind): nothing measured")
        return 0
    kinds = harness.chosen(CONTENDERS, args.only)
    m = harness.machine()
    print(harness.machine_line(m))
    print(f"instructions of the one worker, {low} and {high} requests, {args.clients} client threads\n")
    tally = harness.Tally()
    per_request: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="request-cost-") as tmp:
        for kind in kinds:  # an unmeasured start writes the .pyc files
            with contextlib.suppress(Exception):
                worker_instructions(kind, 1, 1, tmp)
        for kind in kinds:
            started = time.monotonic()
            fig = tally.measure(kind, kind, functools.partial(measure, kind, low, high, args.clients, tmp))
            if fig is not None:
                per_request[kind] = float(fig["per_request"])
                print(
                    f"{kind:<20} {per_request[kind]:>10,.0f} instructions/request"
                    f"   ({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
    ratios = {
        f"{kind}/bare": harness.ratio(per_request.get(kind), per_request.get("bare"))
        for kind in kinds
        if kind != "bare"
    }
    harness.print_ratios(ratios, 28)
    harness.print_skipped(tally.skipped)
    harness.write_json(
        args.json,
        {"machine": m, "settings": vars(args), "per_request": per_request, "ratios": ratios},
    )
    return harness.exit_status(tally.failed, False, [])


if __name__ == "__main__":
    sys.exit(main())
