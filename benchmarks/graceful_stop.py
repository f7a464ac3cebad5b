"""Graceful stop (SIGTERM to the master): what prefork and gunicorn lose, in one run.

Run it (needs wrk: ``apt-get install -y wrk``, and gunicorn: ``pip install ".[bench]"``)::

    python benchmarks/graceful_stop.py [--runs 3] [--json PATH] [--check] [--no-gunicorn]

One WSGI app (``app`` below: GET /sleep -> sleeps 0.2 s, then 200 ``Hello, world!\\n``; any other
path -> the same at once) is served by each contender, 2 workers, in its own process group on a
free 127.0.0.1 port, backlog 1024:

- ``prefork``: ``python -m prefork benchmarks/graceful_stop.py:app -k sync -w 2`` (prefork's WSGI
  server, sync workers, default ``accept = shared``);
- ``gunicorn`` (``--no-gunicorn`` to skip): ``gunicorn -k sync -w 2 graceful_stop:app``.

Two scenarios, each ``--runs`` times (3), the contenders interleaved; a fresh server each run:

1. **Queued connections**: once both workers serve (two concurrent GET /sleep answered together),
   20 clients connect and send ``GET /sleep`` at once; 0.3 s later the master gets SIGTERM
   (about 2 answered, 2 in progress, 16 waiting in the listen queue). Each client counts as
   answered (a 200), reset (ECONNRESET) or another error; an ``X-Pid`` header says how many
   each worker answered. Target for prefork: 0 reset.
2. **TERM under load**: ``wrk -t2 -c50 -d6s -H 'Connection: close' http://127.0.0.1:PORT/``
   (hello, no sleep), SIGTERM to the master 3 s in. From wrk's ``Socket errors`` line: connect,
   read, write and timeout errors, and its request count. Once no listening socket is left,
   every new connection is refused: wrk 4.1 connects without blocking and learns of the refusal
   when it writes its request, so refusals count as write errors (some may count as connect
   errors), hundreds of thousands of them in the 3 s left, and harmless: the client knows
   nothing was sent. A read error is a connection reset after the client sent its request: a
   request lost. Target for prefork: 0 read errors.

It also times each stop (SIGTERM -> the master exits). It prints each run, a table of the totals
side by side and PASS/FAIL for prefork's two targets. /work/shared/ANCHORS.md has the figures
of prefork before its lossless stop and of gunicorn 27 ("Graceful stop with queued connections",
"TERM under load"). Every server is stopped afterwards as ``apps.harness.Server.stop`` does
(SIGTERM, then SIGKILL to its process group, then a psutil check that nothing is left).

Exit status: 0 when everything was measured (whatever the figures, unless ``--check``: then 1
when a prefork target fails), 1 when a server failed to start or to stop within 30 s of the
TERM, or a process outlived its group's SIGKILL, 2 when wrk or gunicorn is missing.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

from apps import harness
from apps.wsgi_hello import BODY, HEADERS

WORKERS = 2
BACKLOG = 1024
SLEEP = 0.2  # seconds GET /sleep takes
CLIENTS = 20
TERM_AFTER = 0.3  # seconds from the queued clients' start to the TERM
WRK_DURATION = 6.0
WRK_CONNECTIONS = 50
TERM_AT = 3.0  # seconds from wrk's start to the TERM
STOP_WAIT = 30.0  # seconds a master may take to exit after the TERM
CONTENDERS = ("prefork", "gunicorn")
QUEUED_KEYS = ("answered", "reset", "other")
WRK_KEYS = ("requests", "connect", "read", "write", "timeout", "non_2xx")


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The app both contenders serve: ``/sleep`` sleeps ``SLEEP`` s first. ``X-Pid`` says which
    worker answered."""
    if environ.get("PATH_INFO") == "/sleep":
        time.sleep(SLEEP)
    start_response("200 OK", [*HEADERS, ("X-Pid", str(os.getpid()))])
    return [BODY]


# -- contenders ---------------------------------------------------------------------------------------


def command(kind: str, port: int) -> list[str]:
    """The contender's command line, bound to 127.0.0.1:port."""
    if kind == "prefork":
        target = os.path.abspath(__file__) + ":app"
        cmd = [sys.executable, "-m", "prefork", target, "--bind", f"127.0.0.1:{port}", "-w", str(WORKERS)]
        return [*cmd, "-k", "sync", "--backlog", str(BACKLOG), "--log-level", "warning"]
    gunicorn = harness.gunicorn_command()
    if gunicorn is None:
        raise harness.Skip("gunicorn is not installed (pip install '.[bench]')")
    cmd = [*gunicorn, "-b", f"127.0.0.1:{port}", "-w", str(WORKERS), "-k", "sync"]
    cmd += ["--backlog", str(BACKLOG), "--chdir", harness.BENCH_DIR, "--log-level", "warning"]
    return [*cmd, "graceful_stop:app"]


Outcome = tuple[str, int]


def get(port: int, path: str, timeout: float) -> Outcome:
    """One connection: GET ``path``, read to EOF. The outcome, 'answered' (a 200), 'reset',
    'eof' (closed without an answer), 'status NNN' or the name of the error, and the pid of
    the worker that answered (``X-Pid``; 0 when none did)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except ConnectionResetError:
        return "reset", 0
    except OSError as exc:
        return type(exc).__name__, 0
    answer = b"".join(chunks)
    if not answer:
        return "eof", 0
    status = answer.split(b" ", 2)[1:2]
    pid = re.search(rb"\r\nX-Pid: (\d+)\r\n", answer, re.I)
    if status != [b"200"]:
        return f"status {b''.join(status).decode(errors='replace')}", 0
    return "answered", int(pid.group(1)) if pid else 0


def concurrently(port: int, path: str, n: int, timeout: float) -> list[Outcome]:
    """``n`` clients GET ``path`` at once (released together by a barrier); their outcomes."""
    results: list[Outcome] = []
    barrier = threading.Barrier(n, timeout=10)

    def client() -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            results.append(("barrier", 0))
            return
        results.append(get(port, path, timeout))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout + 15
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return results + [("hung", 0)] * sum(t.is_alive() for t in threads)


def all_workers_serve(port: int) -> bool:
    """True when ``WORKERS`` concurrent GET /sleep are all answered within 1.5 x SLEEP: each
    worker (sync, one request at a time) is up and took one."""
    began = time.monotonic()
    outcomes = concurrently(port, "/sleep", WORKERS, timeout=5)
    answered = all(outcome == "answered" for outcome, _ in outcomes)
    return answered and len(outcomes) == WORKERS and time.monotonic() - began < 1.5 * SLEEP


def started(kind: str) -> tuple[harness.Server, int]:
    """The contender started on a free port, with every worker serving."""
    port = harness.free_port()
    server = harness.Server(kind, command(kind, port))
    try:
        server.wait_ready(lambda: all_workers_serve(port), timeout=30)
    except BaseException:
        if left := server.stop():
            print(f"{kind}: processes left after SIGKILL: {left}", file=sys.stderr)
        raise
    return server, port


def term_master(server: harness.Server) -> float:
    """SIGTERM to the master only (as an init system sends it); returns the monotonic time."""
    termed = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    return termed


def wait_master(server: harness.Server, termed: float) -> tuple[float, int]:
    """Seconds from the TERM to the master's exit, and its status. RuntimeError after STOP_WAIT."""
    try:
        status = server.proc.wait(max(0.0, termed + STOP_WAIT - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{server.name}: master still running {STOP_WAIT:g} s after SIGTERM") from None
    return time.monotonic() - termed, status


def finish(server: harness.Server, fig: harness.Figures) -> harness.Figures:
    """Stop what is left of the server's group; ``left`` and ``needed_sigkill`` into ``fig``."""
    fig["left"] = server.stop()
    fig["needed_sigkill"] = server.needed_sigkill
    return fig


# -- scenario 1: connections queued when TERM arrives -------------------------------------------------


def measure_queued(kind: str) -> harness.Figures:
    """20 clients GET /sleep at once, TERM to the master 0.3 s later; what each client got."""
    server, port = started(kind)
    fig: harness.Figures = {}
    try:
        results: list[Outcome] = []
        runner = threading.Thread(
            target=lambda: results.extend(concurrently(port, "/sleep", CLIENTS, timeout=20)), daemon=True
        )
        began = time.monotonic()
        runner.start()
        time.sleep(max(0.0, began + TERM_AFTER - time.monotonic()))
        termed = term_master(server)
        fig["stop_s"], fig["master_status"] = wait_master(server, termed)
        runner.join(60)
        if runner.is_alive():
            raise RuntimeError(f"{kind}: queued clients still running 60 s after the TERM")
        outcomes = [outcome for outcome, _ in results]
        fig["outcomes"] = {r: outcomes.count(r) for r in sorted(set(outcomes))}
        fig["answered"] = outcomes.count("answered")
        fig["reset"] = outcomes.count("reset")
        fig["other"] = len(outcomes) - fig["answered"] - fig["reset"]
        pids = [pid for outcome, pid in results if outcome == "answered"]
        fig["per_worker"] = sorted((pids.count(pid) for pid in set(pids)), reverse=True)
    finally:
        finish(server, fig)
    return fig


def show_queued(fig: harness.Figures) -> str:
    others = {k: v for k, v in fig["outcomes"].items() if k not in ("answered", "reset")}
    text = f"answered {fig['answered']:>3}  reset {fig['reset']:>3}  other {fig['other']:>3}"
    text += f"  stop {fig['stop_s']:.2f} s  master exit {fig['master_status']}"
    text += f"  answered by worker {'+'.join(map(str, fig['per_worker'])) or '-'}"
    return text + (f"  ({', '.join(f'{k} {v}' for k, v in others.items())})" if others else "")


# -- scenario 2: TERM under wrk -----------------------------------------------------------------------


def wrk_command(port: int) -> list[str]:
    return harness.wrk_cmd(
        f"http://127.0.0.1:{port}/", WRK_DURATION, WRK_CONNECTIONS, keepalive=False, latency=False
    )


def parse_wrk(out: str) -> dict[str, int]:
    """Requests, the four socket error counts and non-2xx/3xx responses from wrk's output."""
    total = re.search(r"(\d+) requests in", out)
    if total is None:
        raise RuntimeError(f"no request count in wrk output:\n{out}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = [int(g) for g in sock.groups()] if sock else [0, 0, 0, 0]
    return {
        "requests": int(total.group(1)),
        **dict(zip(("connect", "read", "write", "timeout"), errors, strict=True)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def measure_wrk(kind: str) -> harness.Figures:
    """wrk for 6 s, a connection per request, TERM to the master 3 s in; wrk's counts."""
    server, port = started(kind)
    fig: harness.Figures = {}
    try:
        began = time.monotonic()
        wrk = subprocess.Popen(wrk_command(port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(max(0.0, began + TERM_AT - time.monotonic()))
            termed = term_master(server)
            fig["stop_s"], fig["master_status"] = wait_master(server, termed)
            out, err = wrk.communicate(timeout=max(0.0, began + WRK_DURATION + 30 - time.monotonic()))
        finally:
            if wrk.poll() is None:  # timed out or failed above: ours, ended by pid
                wrk.kill()
                wrk.wait(5)
        if wrk.returncode != 0:
            raise RuntimeError(f"wrk exited {wrk.returncode}: {err.strip()}")
        fig.update(parse_wrk(out))
    finally:
        finish(server, fig)
    return fig


def show_wrk(fig: harness.Figures) -> str:
    counts = "  ".join(f"{k} {fig[k]:>6}" for k in ("connect", "read", "write", "timeout"))
    text = f"requests {fig['requests']:>6}  {counts}"
    text += f"  stop {fig['stop_s']:.2f} s  master exit {fig['master_status']}"
    return text + (f"  non-2xx {fig['non_2xx']}" if fig["non_2xx"] else "")


# -- report -------------------------------------------------------------------------------------------


def totals(runs: dict[str, list[harness.Figures]], keys: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per contender with runs: the sum over its runs of each key, and ``runs``."""
    return {
        kind: {"runs": len(figs), **{k: sum(int(f[k]) for f in figs) for k in keys}}
        for kind, figs in runs.items()
        if figs
    }


def print_table(kinds: list[str], queued: dict[str, dict[str, int]], wrk: dict[str, dict[str, int]]) -> None:
    """The totals, one column per contender."""

    def row(label: str, table: dict[str, dict[str, int]], key: str) -> None:
        cells = (str(table[k][key]) if k in table else "n/a" for k in kinds)
        print(f"  {label:<30}" + "".join(f"{c:>12}" for c in cells))

    print(f"\n{'totals':<32}" + "".join(f"{k:>12}" for k in kinds))
    print(f"queued: {CLIENTS} clients, {SLEEP:g} s each, TERM at {TERM_AFTER:g} s")
    row("runs", queued, "runs")
    for key, label in (("answered", "answered"), ("reset", "reset"), ("other", "other errors")):
        row(label, queued, key)
    print(f"wrk -c{WRK_CONNECTIONS} -d{WRK_DURATION:g}s, TERM at {TERM_AT:g} s")
    row("runs", wrk, "runs")
    labels = ("requests", "connect errors", "read errors", "write errors", "timeouts", "non-2xx")
    for key, label in zip(WRK_KEYS, labels, strict=True):
        row(label, wrk, key)


def verdict(target: str, table: dict[str, dict[str, int]], key: str) -> dict[str, Any]:
    """prefork's total ``key`` over its runs must be 0 (and measured)."""
    runs = table["prefork"]["runs"] if "prefork" in table else 0
    value = table["prefork"][key] if "prefork" in table else None
    return {"target": target, "value": value, "runs": runs, "ok": value == 0}


def main() -> int:
    ap = harness.bench_parser(__doc__)
    harness.add_runs_option(ap, 3, "repetitions of each scenario (totals kept)")
    ap.add_argument("--no-gunicorn", action="store_true", help="measure prefork only")
    harness.add_report_options(ap, check="a prefork target fails")
    args = ap.parse_args()
    if harness.wrk_missing():
        return 2
    if not args.no_gunicorn and harness.gunicorn_command() is None:
        print("gunicorn not found: pip install '.[bench]' (or --no-gunicorn), and rerun.", file=sys.stderr)
        return 2
    kinds = ["prefork"] if args.no_gunicorn else list(CONTENDERS)
    m = harness.machine()
    wrk_line = harness.wrk_line(WRK_DURATION, WRK_CONNECTIONS, keepalive=False, latency=False)
    print(harness.machine_line(m))
    print(f"contenders: {', '.join(kinds)}; {WORKERS} sync workers each, backlog {BACKLOG}, runs {args.runs}")
    print(
        f"queued: {CLIENTS} clients GET /sleep ({SLEEP:g} s) at once, TERM to the master at {TERM_AFTER:g} s"
    )
    print(f"load: {wrk_line}, TERM to the master at {TERM_AT:g} s\n")

    queued_runs, queued_tally = harness.interleaved_runs(kinds, args.runs, measure_queued, show_queued, 8)
    print()
    wrk_runs, wrk_tally = harness.interleaved_runs(kinds, args.runs, measure_wrk, show_wrk, 8)
    queued = totals(queued_runs, QUEUED_KEYS)
    wrk = totals(wrk_runs, WRK_KEYS)
    print_table(kinds, queued, wrk)
    verdicts = [
        verdict(f"prefork: 0 resets among {CLIENTS} queued connections", queued, "reset"),
        verdict("prefork: 0 read errors under wrk", wrk, "read"),
    ]
    print()
    for v in verdicts:
        print(f"{'PASS' if v['ok'] else 'FAIL'} {v['target']} (total {v['value']}, {v['runs']} runs)")
    skipped = {**queued_tally.skipped, **wrk_tally.skipped}
    harness.print_skipped(skipped)

    report = {
        "machine": m,
        "settings": {
            **vars(args),
            "workers": WORKERS,
            "backlog": BACKLOG,
            "clients": CLIENTS,
            "sleep_s": SLEEP,
            "term_after_s": TERM_AFTER,
            "wrk": wrk_line,
            "term_at_s": TERM_AT,
        },
        "runs": {"queued": queued_runs, "wrk": wrk_runs},
        "totals": {"queued": queued, "wrk": wrk},
        "targets": verdicts,
        "skipped": skipped,
    }
    harness.write_json(args.json, report)
    failed = queued_tally.failed or wrk_tally.failed or bool(skipped)
    return harness.exit_status(failed, args.check, verdicts)


if __name__ == "__main__":
    sys.exit(main())
