"""Memory of a pool serving a big app: total PSS of prefork, gunicorn and uWSGI, with and without preload.

Run it (gunicorn and uWSGI: ``pip install gunicorn pyuwsgi``; a server not installed is skipped
with a line on stderr)::

    python benchmarks/memory.py [--app-mb 200] [--requests 20000] [--workers 4] [--touch 0.1]
                                [--gc-every 500] [--clients 4] [--quick] [--json PATH] [--check]

One WSGI app (``benchmarks/apps/memory_app.py``: about ``--app-mb`` MB of small Python objects
built at import, each request reading 1,000 random records among the first ``--touch`` of them,
``gc.collect()`` every ``--gc-every`` (500) requests in each process) is served by each server
with ``--workers`` workers, in its own process group on a free 127.0.0.1 port, one after another:

- ``prefork``: ``python -m prefork benchmarks/apps/memory_app.py:app -w N`` (prefork's WSGI server,
  sync workers; ``--preload`` in the preload modes);
- ``gunicorn``: ``gunicorn -k sync -w N memory_app:app`` (``--preload`` in the preload modes);
- ``uwsgi``: ``uwsgi --http-socket 127.0.0.1:PORT --master --processes N --module memory_app:app``
  from pyuwsgi (it preloads by default; ``--lazy-apps`` in the no-preload mode).

Modes (rows):

1. ``no-preload``: each server's default, uWSGI with ``--lazy-apps``: every worker builds its own
   copy of the data; the master should hold none of it.
2. ``preload``: the app imported once before the fork, each server at its defaults otherwise
   (prefork's include a ``gc.freeze()`` before the fork where this prefork has it).
3. ``app-freeze``: the same, the app calling ``gc.freeze()`` at the end of its import (what
   gunicorn and uWSGI users must do themselves to keep the heap shared).
4. ``freeze-off``: prefork only, ``--preload`` with its own freeze turned off, when its ``--help``
   names a setting for that (``--no-gc-freeze``, or ``--gc-freeze off``); skipped otherwise.

For each server and mode: start it; wait until GET /health answers (no record read) and the
group's RSS has not moved by 0.5% for 1 s, with all workers up (the idle figures); then send
``--requests`` GET / (HTTP/1.0, a connection per request) from ``--clients`` threads, and measure
again (the loaded figures); stop it (SIGTERM, then SIGKILL to its group). The figure is the total
PSS (psutil ``memory_full_info().pss``) of every process of the server's group, the master and its
workers; the master's own PSS and RSS are shown apart. For reference it measures one Python with
``import prefork`` and with ``import prefork.cli`` (what the master runs; issue 16 wants the
master without preload near it), and one Python with the app imported (the data's size).

Prints the tables (MB) and the ratios prefork/gunicorn and prefork/uWSGI per mode, then
PASS/FAIL for issue 16's targets, on the loaded figures: without preload, prefork <= 1.0x
gunicorn; with preload at the defaults, prefork <= 0.55x gunicorn ``--preload`` and <= 0.55x
uWSGI. ``--quick``: a 30 MB app, 2,000 requests and a collection every 100 (a smoke run; the
issue's figures come from the full one). Exit status: 0 when measured (``--check``: 1 when a
target fails), 1 when a server failed, lost requests or left a process after its group's SIGKILL.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import importlib.metadata
import importlib.util
import itertools
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
from apps import harness

SERVERS = ("prefork", "gunicorn", "uwsgi")
MODES = {
    "no-preload": "no preload (each default)",
    "preload": "preload, defaults",
    "app-freeze": "preload + gc.freeze() in the app",
    "freeze-off": "preload, prefork's freeze off",
}
# (target, mode, contender, other contender, maximum ratio of total PSS after load)
TARGETS = (
    ("no preload: prefork <= 1.0x gunicorn", "no-preload", "prefork", "gunicorn", 1.0),
    ("preload: prefork <= 0.55x gunicorn --preload", "preload", "prefork", "gunicorn", 0.55),
    ("preload: prefork <= 0.55x uWSGI", "preload", "prefork", "uwsgi", 0.55),
)
QUICK = {"app_mb": 30.0, "requests": 2000, "gc_every": 100}
FULL = {"app_mb": 200.0, "requests": 20000, "gc_every": 500}
BOOT_TIMEOUT = 120.0  # seconds from the exec to a settled pool: 4 workers building 200 MB on 2 cores
LOAD_TIMEOUT = 600.0  # seconds the requests of one run may take in all
SETTLE = 1.0  # seconds the group's RSS must stay within SETTLE_DRIFT for the pool to count as booted
SETTLE_DRIFT = 0.005
MB = 2**20

Runs = dict[str, dict[str, harness.Figures]]  # figures by mode, then by server


# -- the servers ---------------------------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    """Each server's version, None where it is not installed."""
    out: dict[str, str | None] = {"prefork": harness.machine()["prefork"]}
    for server, dist in (("gunicorn", "gunicorn"), ("uwsgi", "pyuwsgi")):
        try:
            out[server] = importlib.metadata.version(dist) if importlib.util.find_spec(dist) else None
        except importlib.metadata.PackageNotFoundError:
            out[server] = None
    return out


def prefork_help() -> str:
    """``python -m prefork --help`` (empty when it fails)."""
    res = subprocess.run(
        [sys.executable, "-m", "prefork", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=harness.REPO_DIR,
        env=dict(os.environ, PYTHONPATH=harness.REPO_DIR),
    )
    return res.stdout if res.returncode == 0 else ""


def freeze_off_flags(help_text: str) -> list[str] | None:
    """The options that turn prefork's own ``gc.freeze()`` off, read from its ``--help``; None
    where it names none (a prefork without the freeze, or one that cannot be turned off)."""
    if "--no-gc-freeze" in help_text:
        return ["--no-gc-freeze"]
    match = re.search(r"--gc-freeze[ =]\{?([\w,|]+)\}?", help_text)
    if match is None:
        return None
    choices = re.split(r"[,|]", match.group(1))
    for off in ("off", "false", "no", "0"):
        if off in choices:
            return ["--gc-freeze", off]
    return ["--gc-freeze", "off"]


def command(server: str, mode: str, port: int, args: argparse.Namespace) -> list[str]:
    """The command line of ``server`` in ``mode``, listening on 127.0.0.1:port."""
    n = str(args.workers)
    preload = mode != "no-preload"
    if server == "prefork":
        target = os.path.join(harness.APPS_DIR, "memory_app.py:app")
        cmd = [sys.executable, "-m", "prefork", target, "--bind", f"127.0.0.1:{port}", "-w", n]
        cmd += ["--backlog", "1024", "--log-level", "warning"] + (["--preload"] if preload else [])
        return cmd + ((args.freeze_off or []) if mode == "freeze-off" else [])
    if server == "gunicorn":
        cmd = [*(harness.gunicorn_command() or []), "-b", f"127.0.0.1:{port}", "-w", n, "-k", "sync"]
        cmd += ["--backlog", "1024", "--chdir", harness.APPS_DIR, "--log-level", "warning"]
        return [*cmd, *(["--preload"] if preload else []), "memory_app:app"]
    cmd = [*(harness.uwsgi_command() or []), "--http-socket", f"127.0.0.1:{port}", "--master"]
    cmd += ["--processes", n, "--pythonpath", harness.APPS_DIR, "--module", "memory_app:app"]
    cmd += ["--need-app", "--disable-logging", "--die-on-term"]
    return cmd + ([] if preload else ["--lazy-apps"])


def app_env(args: argparse.Namespace, freeze: bool) -> dict[str, str]:
    """The environment that sizes ``apps/memory_app.py`` for this run."""
    env = {"MEMORY_APP_MB": f"{args.app_mb:g}", "MEMORY_APP_TOUCH": f"{args.touch:g}"}
    env["MEMORY_APP_GC_EVERY"] = str(args.gc_every)
    return env | {"MEMORY_APP_FREEZE": "1" if freeze else "0"}


# -- memory ---------------------------------------------------------------------------------------------


def memory(pgid: int) -> dict[str, Any]:
    """Total PSS, USS and RSS (MB) of the live processes of group ``pgid``, the master's (``pgid``
    itself) PSS and RSS, and how many processes there are."""
    total = {"pss_mb": 0.0, "uss_mb": 0.0, "rss_mb": 0.0}
    master = {"master_pss_mb": 0.0, "master_rss_mb": 0.0}
    procs = 0
    for pid in harness.group_members(pgid):
        with contextlib.suppress(psutil.Error):
            info = psutil.Process(pid).memory_full_info()
            procs += 1
            total["pss_mb"] += info.pss / MB
            total["uss_mb"] += info.uss / MB
            total["rss_mb"] += info.rss / MB
            if pid == pgid:
                master = {"master_pss_mb": info.pss / MB, "master_rss_mb": info.rss / MB}
    return total | master | {"processes": procs}


def group_rss(pgid: int) -> tuple[int, int]:
    """(processes, total RSS in bytes) of group ``pgid``: cheap, for the settle loop."""
    n = rss = 0
    for pid in harness.group_members(pgid):
        with contextlib.suppress(psutil.Error):
            rss += psutil.Process(pid).memory_info().rss
            n += 1
    return n, rss


def wait_settled(pgid: int, processes: int, timeout: float) -> None:
    """Return once group ``pgid`` has ``processes`` processes or more and its total RSS has stayed
    within SETTLE_DRIFT for SETTLE seconds (every worker has built what it builds at boot).
    RuntimeError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    readings: collections.deque[int] = collections.deque(maxlen=int(SETTLE / 0.25) + 1)
    while time.monotonic() < deadline:
        n, rss = group_rss(pgid)
        readings.append(rss if n >= processes else 0)
        if len(readings) == readings.maxlen and min(readings) >= max(readings) * (1 - SETTLE_DRIFT) > 0:
            return
        time.sleep(0.25)
    raise RuntimeError(f"the pool did not settle within {timeout:g} s ({processes} processes wanted)")


def process_memory(code: str, env: dict[str, str]) -> dict[str, float]:
    """PSS and RSS (MB) of ``python -c CODE`` once it has run, measured while it waits on stdin."""
    wait = "import sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([harness.REPO_DIR, harness.BENCH_DIR])) | env
    with subprocess.Popen(
        [sys.executable, "-c", f"{code}\n{wait}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=harness.REPO_DIR,
        env=full_env,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            if proc.stdout.readline() != b"ready\n":
                raise RuntimeError(f"python -c {code!r} failed")
            info = psutil.Process(proc.pid).memory_full_info()
            return {"pss_mb": info.pss / MB, "rss_mb": info.rss / MB}
        finally:
            proc.stdin.close()
            proc.wait(30)


def baselines(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """One Python with prefork imported (the package, then the CLI the master runs) and one with
    the app imported."""
    return {
        "python + import prefork": process_memory("import prefork", {}),
        "python + import prefork.cli": process_memory("import prefork.cli", {}),
        "python + the app (one copy)": process_memory("import apps.memory_app", app_env(args, False)),
    }


# -- load -----------------------------------------------------------------------------------------------


def get(port: int, path: str = "/", timeout: float = 10.0) -> int | None:
    """One GET over a fresh HTTP/1.0 connection: the answering pid (X-Pid) of a 200, None on any
    other answer or failure. GET /health reads no record: the readiness probe."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
            data = b""
            while len(data) < 65536 and (chunk := s.recv(65536)):
                data += chunk
    except OSError:
        return None
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1")
    pid = re.search(r"^X-Pid:\s*(\d+)", head, re.M | re.I)
    return int(pid.group(1)) if head.split(" ", 2)[1:2] == ["200"] and pid else None


def load(port: int, requests: int, clients: int, timeout: float) -> dict[str, Any]:
    """``requests`` GET / from ``clients`` threads, bounded by ``timeout`` s in all: answered and
    failed counts, seconds, req/s and the answers per pid."""
    numbers = itertools.count()
    deadline = time.monotonic() + timeout
    lock = threading.Lock()
    by_pid: collections.Counter[int] = collections.Counter()
    failed = 0

    def client() -> None:
        nonlocal failed
        mine: collections.Counter[int] = collections.Counter()
        errors = 0
        while next(numbers) < requests and time.monotonic() < deadline:
            pid = get(port)
            if pid is None:
                errors += 1
            else:
                mine[pid] += 1
        with lock:
            by_pid.update(mine)
            failed += errors

    start = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 15)
    seconds = time.monotonic() - start
    answered = sum(by_pid.values())
    return {
        "answered": answered,
        "failed": failed,
        "seconds": seconds,
        "rps": answered / seconds if seconds else 0.0,
        "by_pid": {str(pid): n for pid, n in sorted(by_pid.items())},
    }


# -- one run --------------------------------------------------------------------------------------------


def measure(server: str, mode: str, args: argparse.Namespace) -> harness.Figures:
    """Start ``server`` in ``mode``, measure it idle, load it, measure it again, stop it."""
    if mode == "freeze-off" and not args.freeze_off:
        raise harness.Skip("this prefork's --help names no setting that turns its gc.freeze() off")
    port = harness.free_port()
    env = app_env(args, freeze=mode == "app-freeze")
    proc = harness.Server(f"{server} ({mode})", command(server, mode, port, args), env)
    out: harness.Figures = {"command": proc.command}
    try:
        proc.wait_ready(lambda: get(port, "/health", 1.0) is not None, BOOT_TIMEOUT)
        wait_settled(proc.pid, args.workers + 1, BOOT_TIMEOUT)
        out["boot_s"] = time.monotonic() - proc.started
        out["idle"] = memory(proc.pid)
        out["load"] = load(port, args.requests, args.clients, LOAD_TIMEOUT)
        time.sleep(0.5)
        out["loaded"] = memory(proc.pid)
    finally:
        out["left"] = proc.stop()
    done = out["load"]["answered"]
    if done < args.requests:
        raise RuntimeError(f"{done} of {args.requests} requests answered ({out['load']['failed']} failed)")
    return out


def show(fig: harness.Figures) -> str:
    """One run's line: total PSS idle and loaded, the master's, boot time and load."""
    idle, loaded, ld = fig["idle"], fig["loaded"], fig["load"]
    spread = list(ld["by_pid"].values())
    return (
        f"PSS idle {idle['pss_mb']:7.1f} MB, loaded {loaded['pss_mb']:7.1f} MB; "
        f"master PSS {loaded['master_pss_mb']:6.1f} MB RSS {loaded['master_rss_mb']:6.1f} MB; "
        f"{idle['processes']} processes, boot {fig['boot_s']:.1f} s; "
        f"{ld['rps']:.0f} req/s, per process {min(spread)}-{max(spread)}"
    )


# -- report ---------------------------------------------------------------------------------------------


def print_table(
    title: str, runs: Runs, columns: list[str], heads: dict[str, str], cell: Callable[[harness.Figures], str]
) -> None:
    """A table: a row per mode measured, a column per server, ``cell(figures)`` in each."""
    print(f"\n{title}")
    print(f"{'mode':<34}" + "".join(f"{heads[s]:>22}" for s in columns))
    for mode, label in MODES.items():
        if not any(s in runs[mode] for s in columns):
            continue
        cells = (cell(runs[mode][s]) if s in runs[mode] else "-" for s in columns)
        print(f"{label:<34}" + "".join(f"{c:>22}" for c in cells))


def ratios(runs: Runs) -> dict[str, float | None]:
    """prefork over gunicorn and over uWSGI, total PSS, idle and loaded, per mode."""
    out: dict[str, float | None] = {}
    for mode in MODES:
        for other in ("gunicorn", "uwsgi"):
            for when in ("idle", "loaded"):
                a, b = runs[mode].get("prefork"), runs[mode].get(other)
                value = harness.ratio(a[when]["pss_mb"] if a else None, b[when]["pss_mb"] if b else None)
                if value is not None:
                    out[f"{mode}: prefork/{other} ({when})"] = value
    return out


def verdicts(runs: Runs) -> list[dict[str, Any]]:
    """Issue 16's targets on the loaded total PSS: ok when the ratio is known and at most its maximum."""
    out = []
    for name, mode, a, b, maximum in TARGETS:
        fa, fb = runs[mode].get(a), runs[mode].get(b)
        value = harness.ratio(fa["loaded"]["pss_mb"] if fa else None, fb["loaded"]["pss_mb"] if fb else None)
        out.append({"target": name, "ratio": value, "ok": value is not None and value <= maximum})
    return out


def main() -> int:
    ap = harness.bench_parser(__doc__)
    ap.add_argument("--app-mb", type=float, help="MB of Python objects the app builds (default 200)")
    ap.add_argument("--requests", type=int, help="requests per server and mode (default 20000)")
    ap.add_argument("--workers", type=int, default=4, help="workers of every server (default 4)")
    ap.add_argument("--touch", type=float, default=0.1, help="share of the records requests read (0.1)")
    ap.add_argument("--gc-every", type=int, help="requests between gc.collect() calls (default 500)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent client threads (default 4)")
    ap.add_argument("--quick", action="store_true", help="30 MB, 2,000 requests, --gc-every 100 (smoke)")
    harness.add_only_option(ap)
    harness.add_report_options(ap, check="a target fails")
    args = ap.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    started = time.monotonic()

    m = harness.machine()
    have = versions()
    help_text = prefork_help()
    args.freeze_off = freeze_off_flags(help_text)
    heads = {"prefork": "prefork", "gunicorn": "gunicorn", "uwsgi": "uWSGI"}
    columns = []
    for server in harness.chosen(SERVERS, args.only):
        if server != "prefork" and have[server] is None:
            dist = "pyuwsgi" if server == "uwsgi" else server
            print(f"{server}: not installed (pip install {dist}): its column is skipped", file=sys.stderr)
            continue
        heads[server] = f"{heads[server]} {have[server]}"
        columns.append(server)
    print(harness.machine_line(m))
    print(
        f"app {args.app_mb:g} MB of small objects, requests read 1,000 records of the first "
        f"{args.touch:.0%}, gc.collect() every {args.gc_every} requests; {args.workers} workers, "
        f"{args.requests} requests from {args.clients} clients per server and mode"
    )
    freeze = "yes" if "gc.freeze" in help_text or "gc-freeze" in help_text else "not named in --help"
    print(f"prefork --preload freezes the heap: {freeze}; turned off with: {args.freeze_off or 'n/a'}")
    base = baselines(args)
    for name, b in base.items():
        print(f"{name:<30} PSS {b['pss_mb']:7.1f} MB  RSS {b['rss_mb']:7.1f} MB")
    print()

    tally = harness.Tally()
    runs: Runs = {mode: {} for mode in MODES}
    for mode in MODES:
        for server in columns:
            if mode == "freeze-off" and server != "prefork":
                continue
            label = f"{mode:<10} {server:<8}"
            fig = tally.measure(f"{server} {mode}", label, functools.partial(measure, server, mode, args))
            if fig is not None:
                runs[mode][server] = fig
                print(f"{label} {show(fig)}", flush=True)

    def pss(when: str) -> Callable[[harness.Figures], str]:
        return lambda f: f"{f[when]['pss_mb']:,.0f}"

    def master(f: harness.Figures) -> str:
        idle, loaded = f["idle"], f["loaded"]
        return f"{idle['master_pss_mb']:.0f} / {idle['master_rss_mb']:.0f} / {loaded['master_rss_mb']:.0f}"

    print_table("total PSS after load, MB (the issue's figure)", runs, columns, heads, pss("loaded"))
    print_table("total PSS idle, after boot, MB", runs, columns, heads, pss("idle"))
    print_table("the master alone: PSS idle / RSS idle / RSS after load, MB", runs, columns, heads, master)
    rs = ratios(runs)
    harness.print_ratios(rs, 45)
    verdict = verdicts(runs)
    harness.print_verdicts(verdict)
    harness.print_skipped(tally.skipped)
    print(f"\n{time.monotonic() - started:.0f} s in all")

    report = {
        "machine": m,
        "versions": have,
        "settings": vars(args),
        "baselines": base,
        "runs": runs,
        "ratios": rs,
        "targets": verdict,
        "skipped": tally.skipped,
    }
    harness.write_json(args.json, report)
    return harness.exit_status(tally.failed, args.check, verdict)


if __name__ == "__main__":
    sys.exit(main())
