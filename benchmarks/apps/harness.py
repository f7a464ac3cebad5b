"""What the benchmark scripts share: contenders in their own process group, wrk, the machine,
the command-line options, the runs and their medians, ratios, targets and the JSON report.

Every server runs in its own session (process group == its pid), on 127.0.0.1, and is stopped
by :meth:`Server.stop`: SIGTERM to the group, SIGKILL to what remains after a grace period, then
a psutil check that no process of the group is left. Never by name.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import psutil

import prefork

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS_DIR = os.path.join(BENCH_DIR, "apps")
REPO_DIR = os.path.dirname(BENCH_DIR)
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


class Skip(Exception):
    """A contender that cannot run here (not installed, rejected option): skipped, not failed."""


def machine() -> dict[str, Any]:
    """Cores, Python, prefork and platform, for the header and the JSON."""
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "prefork": prefork.__version__,
        "platform": platform.platform(),
        "load_avg_1m": os.getloadavg()[0],
    }


def machine_line(m: dict[str, Any]) -> str:
    """The header line that says what :func:`machine` found."""
    return (
        f"machine: {m['cpu_count']} cores, Python {m['python']}, prefork {m['prefork']}, "
        f"load average {m['load_avg_1m']:.2f} at start"
    )


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound then closed: loopback only, a tiny race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gunicorn_command() -> list[str] | None:
    """How to run gunicorn with this Python, or None when it is not installed."""
    if importlib.util.find_spec("gunicorn") is None:
        return None
    return [sys.executable, "-m", "gunicorn"]


UWSGI_MAIN = "import sys; from pyuwsgi import run; sys.argv[0] = 'uwsgi'; sys.exit(run())"


def uwsgi_command() -> list[str] | None:
    """How to run uWSGI from pyuwsgi with this Python (what its ``uwsgi`` console script runs), or
    None when it is not installed."""
    if importlib.util.find_spec("pyuwsgi") is None:
        return None
    return [sys.executable, "-c", UWSGI_MAIN]


# The WSGI contenders of wsgi_command: the server and its worker class.
WSGI_KINDS = ("prefork-sync", "prefork-thread", "gunicorn-sync", "gunicorn-gthread", "uwsgi", "uwsgi-thread")


def wsgi_command(
    kind: str,
    app: str,
    port: int,
    workers: int,
    threads: int = 1,
    backlog: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of WSGI contender ``kind`` (one of ``WSGI_KINDS``) serving ``app``
    (``module:callable``, the module a file of ``apps/``) on 127.0.0.1:port with ``workers``
    processes, at log level warning; ``extra`` options come last before the app:

    - ``prefork-sync``: ``python -m prefork apps/MODULE.py:CALLABLE -k sync``;
    - ``prefork-thread``: the same with ``-k thread --threads T``;
    - ``gunicorn-sync``, ``gunicorn-gthread``: ``gunicorn -k sync`` or ``-k gthread --threads T``,
      ``--chdir apps/``;
    - ``uwsgi``: uWSGI from pyuwsgi, ``--http-socket ADDR --master --processes N --module
      MODULE:CALLABLE --need-app --disable-logging --die-on-term``, ``--pythonpath apps/`` (as
      ANCHORS.md's). It closes every connection after its answer, which says HTTP/1.1 and no
      ``Connection: close``: wrk counts a read error per request;
    - ``uwsgi-thread``: the same with ``--http11-socket ADDR --threads T``, its keep-alive server
      (``--http-keepalive`` is the HTTP router's option: ``--http-socket`` closes all the same).
      It keeps every connection open, even when the request says ``Connection: close``.

    Raises :class:`Skip` when gunicorn or uWSGI is not installed."""
    n, t, addr = str(workers), str(threads), f"127.0.0.1:{port}"
    server, _, worker_class = kind.partition("-")
    if server == "prefork":
        module, _, name = app.partition(":")
        target = os.path.join(APPS_DIR, f"{module}.py:{name}")
        cmd = [sys.executable, "-m", "prefork", target, "--bind", addr, "-w", n, "-k", worker_class]
        cmd += ["--threads", t] if worker_class == "thread" else []
        cmd += ["--backlog", str(backlog)] if backlog else []
        return [*cmd, "--log-level", "warning", *extra]
    if server == "gunicorn":
        gunicorn = gunicorn_command()
        if gunicorn is None:
            raise Skip(f"{kind}: gunicorn is not installed (pip install '.[bench]')")
        cmd = [*gunicorn, "-b", addr, "-w", n, "-k", worker_class]
        cmd += ["--threads", t] if worker_class == "gthread" else []
        cmd += ["--backlog", str(backlog)] if backlog else []
        return [*cmd, "--chdir", APPS_DIR, "--log-level", "warning", *extra, app]
    uwsgi = uwsgi_command()
    if uwsgi is None:
        raise Skip(f"{kind}: uWSGI is not installed (pip install pyuwsgi)")
    socket_option = "--http11-socket" if worker_class == "thread" else "--http-socket"
    cmd = [*uwsgi, socket_option, addr, "--master", "--processes", n, "--pythonpath", APPS_DIR]
    cmd += ["--module", app, "--need-app", "--disable-logging", "--die-on-term"]
    cmd += ["--threads", t] if worker_class == "thread" else []
    cmd += ["--listen", str(backlog)] if backlog else []
    return [*cmd, *extra]


def group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes whose process group is pgid."""
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


class Server:
    """One contender's command, started in its own session; stderr+stdout to a temp file.

    The contender gets Python's default bytecode caching even where the environment turns it
    off (``PYTHONDONTWRITEBYTECODE``, set on these sandboxes): an installed server runs from
    ``.pyc`` files, and compiling every module at each start would measure the compiler.
    """

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.log = tempfile.TemporaryFile()
        full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_DIR, BENCH_DIR]))
        full_env.pop("PYTHONDONTWRITEBYTECODE", None)
        full_env.update(env or {})
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
            cwd=REPO_DIR,
            env=full_env,
        )
        self.pid = self.proc.pid
        self.needed_sigkill = False

    def text(self) -> str:
        """All the server has written so far, stdout and stderr together. Read with pread: the
        file offset is shared with the server's processes, and a seek would move where they write."""
        fd = self.log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def output(self, chars: int = 2000) -> str:
        """The last ``chars`` characters of :meth:`text`."""
        return self.text()[-chars:]

    def wait_ready(self, probe: Any, timeout: float = 20.0, interval: float = 0.02) -> float:
        """Call ``probe()`` until it returns True; seconds since the start. Raises RuntimeError
        (or Skip, when the server exits with status 2: bad usage, an option it rejects)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe():
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                msg = f"{self.name}: exited with status {self.proc.returncode}: {self.output(600).strip()}"
                raise Skip(msg) if self.proc.returncode == 2 else RuntimeError(msg)
            time.sleep(interval)
        raise RuntimeError(f"{self.name}: not ready after {timeout:g} s:\n{self.output()}")

    def stop(self, grace: float = 10.0) -> list[int]:
        """SIGTERM the group, SIGKILL it after ``grace`` s; the pids left after that (normally []).
        ``needed_sigkill`` says afterwards whether anything outlived the grace period."""
        pgid = self.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.proc.poll()
            if not group_members(pgid):
                break
            time.sleep(0.05)
        self.needed_sigkill = bool(group_members(pgid))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        deadline = time.monotonic() + 5
        while (left := group_members(pgid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.log.close()
        return left


def http_ok(port: int, timeout: float = 1.0) -> bool:
    """True when GET / on 127.0.0.1:port answers 200."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


def line_ok(port: int, timeout: float = 1.0) -> bool:
    """True when a line sent to 127.0.0.1:port gets a line back."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"ping\n")
            return s.recv(100).endswith(b"\n")
    except OSError:
        return False


# -- `SCRIPT --serve KIND`: a server in a subprocess of the script, on 127.0.0.1:0 -------------------


def print_port(server: socketserver.TCPServer) -> None:
    """Print the port the server was given, as its first line: what :func:`wait_printed_port` reads."""
    print(server.server_address[1], flush=True)


def serve_bare(server: socketserver.TCPServer, workers: int) -> None:
    """The bare fork loop: print the port, then ``workers`` forked children each run the stdlib
    ``serve_forever()`` on the one inherited listening socket; returns when they have all exited."""
    print_port(server)
    for _ in range(workers):
        if os.fork() == 0:
            try:
                server.serve_forever()
            finally:
                os._exit(0)
    for _ in range(workers):
        os.wait()


def script_server(script: str, kind: str, *options: str) -> Server:
    """``python SCRIPT --serve KIND OPTIONS...``, a benchmark script's own server side, started."""
    return Server(kind, [sys.executable, os.path.abspath(script), "--serve", kind, *options])


def pool_contender(script: str, kind: str, args: argparse.Namespace) -> Server:
    """:func:`script_server` for a script whose ``--serve KIND`` takes the run's ``--workers``
    and ``--backlog``."""
    return script_server(script, kind, "--workers", str(args.workers), "--backlog", str(args.backlog))


def wait_printed_port(server: Server, probe: Callable[[int], bool], timeout: float = 20.0) -> int:
    """The port a ``--serve`` subprocess printed (:func:`print_port`), once ``probe(port)`` is True.
    Raises as :meth:`Server.wait_ready`."""
    port = 0

    def ready() -> bool:
        nonlocal port
        if not port:
            first, newline, _ = server.text().partition("\n")
            if not newline or not first.strip().isdigit():
                return False
            port = int(first)
        return probe(port)

    server.wait_ready(ready, timeout)
    return port


# -- wrk ----------------------------------------------------------------------------------------------


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk_missing() -> bool:
    """True, after saying on stderr how to install it, when wrk is not on PATH (exit status 2)."""
    if have_wrk():
        return False
    print("wrk not found on PATH: install it (apt-get install -y wrk) and rerun.", file=sys.stderr)
    return True


def wrk_cmd(
    url: str, duration: float, connections: int, keepalive: bool, latency: bool = True, threads: int = 2
) -> list[str]:
    """wrk with ``threads`` threads (and ``--latency`` unless told not); ``-H 'Connection: close'``
    unless keepalive."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s"] + (["--latency"] if latency else [])
    if not keepalive:
        cmd += ["-H", "Connection: close"]
    return [*cmd, url]


def wrk_line(duration: float, connections: int, keepalive: bool, latency: bool = True) -> str:
    """The wrk command as the headers print it, PORT for the port."""
    cmd = wrk_cmd("http://127.0.0.1:PORT/", duration, connections, keepalive, latency)
    return " ".join(cmd).replace("Connection: close", "'Connection: close'")


def _ms(value: str, unit: str) -> float:
    return float(value) * UNITS[unit]


def parse_wrk(out: str) -> dict[str, float]:
    """req/s, latency avg/p50/p99 (ms), requests, socket errors and non-2xx/3xx from wrk --latency
    (p50 and p99 are NaN without --latency)."""
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s|m|h)\b", out)
    p50 = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s|m|h)\b", out, re.M)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\b", out, re.M)
    total = re.search(r"(\d+) requests in", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    nan = float("nan")
    return {
        "rps": float(rps.group(1)),
        "latency_avg_ms": _ms(*lat.groups()) if lat else nan,
        "p50_ms": _ms(*p50.groups()) if p50 else nan,
        "p99_ms": _ms(*p99.groups()) if p99 else nan,
        "requests": int(total.group(1)) if total else 0,
        "socket_errors": sum(int(g) for g in sock.groups()) if sock else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of process group ``pgid``
    and by the children they reaped (a ForkingMixIn's, a master's replaced workers)."""
    total = 0.0
    for pid in group_members(pgid):
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def run_wrk(
    url: str,
    duration: float,
    connections: int,
    keepalive: bool,
    warmup: float = 1.0,
    latency: bool = True,
    server_pgid: int | None = None,
    threads: int = 2,
) -> dict[str, Any]:
    """A warm-up run (not kept), then the measured one, with ``threads`` wrk threads; bounded by
    wrk's own -d plus 30 s.

    With ``server_pgid``, also ``cpu_us_per_request``: the CPU the server's process group used
    during the measured run, per request (µs). On a machine whose cores wrk shares with the
    server, this is steadier than req/s, which also measures how wrk and the server share."""
    if warmup > 0:
        warm = wrk_cmd(url, warmup, connections, keepalive, latency, threads)
        subprocess.run(warm, capture_output=True, timeout=warmup + 30)
    cpu_before = group_cpu_seconds(server_pgid) if server_pgid else 0.0
    res = subprocess.run(
        wrk_cmd(url, duration, connections, keepalive, latency, threads),
        capture_output=True,
        text=True,
        timeout=duration + 30,
    )
    if res.returncode != 0:
        raise RuntimeError(f"wrk exited {res.returncode}: {res.stderr.strip()}")
    figures: dict[str, Any] = parse_wrk(res.stdout)
    if server_pgid:
        cpu = group_cpu_seconds(server_pgid) - cpu_before
        figures["cpu_us_per_request"] = 1e6 * cpu / figures["requests"] if figures["requests"] else None
    return figures


# -- command line -------------------------------------------------------------------------------------


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose description is the first paragraph of the script's docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def add_duration_option(ap: argparse.ArgumentParser, default: float, of: str = "wrk run") -> None:
    """``--duration S``: seconds of each load run."""
    ap.add_argument(
        "--duration", type=float, default=default, help=f"seconds of each {of} (default {default:g})"
    )


def add_runs_option(ap: argparse.ArgumentParser, default: int, what: str = "repetitions") -> None:
    """``--runs N``: how many times each figure is measured; the median is kept."""
    ap.add_argument("--runs", type=int, default=default, help=f"{what}, median kept (default {default})")


def add_backlog_option(ap: argparse.ArgumentParser) -> None:
    """``--backlog N``: the listen backlog every contender is given (1024)."""
    ap.add_argument("--backlog", type=int, default=1024, help="listen backlog of every contender (1024)")


def hello_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options of the hello benchmarks (wsgi_hello.py, tls_hello.py): ``--duration`` (5),
    ``--runs`` (1), ``--workers`` (2), ``--threads`` (25), ``--connections`` (50), the
    backlog, ``--only``, ``--json`` and ``--check``."""
    ap = bench_parser(doc)
    add_duration_option(ap, 5)
    add_runs_option(ap, 1)
    ap.add_argument("--workers", type=int, default=2, help="workers of every contender (default 2)")
    ap.add_argument("--threads", type=int, default=25, help="threads per worker, thread/gthread (25)")
    ap.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    add_backlog_option(ap)
    add_only_option(ap)
    add_report_options(ap, check="a target fails")
    return ap


def add_only_option(ap: argparse.ArgumentParser) -> None:
    """``--only A,B``: run only these contenders (see :func:`chosen`)."""
    ap.add_argument("--only", help="comma-separated contenders to run (default: all)")


def chosen(contenders: Sequence[str], only: str | None) -> list[str]:
    """The contenders that ``--only`` names (all of them without it), in their own order."""
    return [k for k in contenders if not only or k in only.split(",")]


def add_report_options(ap: argparse.ArgumentParser, check: str | None) -> None:
    """``--json PATH`` and, unless ``check`` is None, ``--check`` ("exit 1 when <check>")."""
    ap.add_argument("--json", metavar="PATH", help="write every figure to PATH as JSON")
    if check is not None:
        ap.add_argument("--check", action="store_true", help=f"exit 1 when {check}")


# -- measuring: contenders in turn, what failed, medians ----------------------------------------------

Figures = dict[str, Any]


class Tally:
    """The contenders skipped and whether a measurement failed, said on stderr as they come."""

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}
        self.failed = False

    def measure(self, kind: str, label: str, measure: Callable[[], Figures]) -> Figures | None:
        """``measure()``'s figures, or None when ``kind`` is skipped (:class:`Skip`, now or before)
        or the measurement failed. Figures with pids in ``left`` (processes that outlived their
        group's SIGKILL) are returned, and count as a failure."""
        if kind in self.skipped:
            return None
        try:
            fig = measure()
        except Skip as exc:
            self.skipped[kind] = str(exc)
            print(f"SKIPPED {kind}: {exc}", file=sys.stderr)
            return None
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"{label}: FAILED: {exc}", file=sys.stderr)
            self.failed = True
            return None
        if fig["left"]:
            print(f"{label}: processes left after SIGKILL: {fig['left']}", file=sys.stderr)
            self.failed = True
        return fig


def interleaved_runs(
    kinds: Sequence[str],
    repeats: int,
    measure: Callable[[str], Figures],
    show: Callable[[Figures], str],
    width: int,
) -> tuple[dict[str, list[Figures]], Tally]:
    """``measure(kind)`` for each kind in turn, ``repeats`` times over (a round), printing ``run R
    KIND`` (the kind in ``width`` columns) and ``show(figures)`` for each. Every other round runs
    the kinds in reverse order, so a machine that speeds up or slows down steadily favours no
    kind. The figures by kind (failed and skipped ones left out; each has its ``round``,
    1..repeats), and the :class:`Tally` of what failed or was skipped."""
    tally = Tally()
    runs: dict[str, list[Figures]] = {k: [] for k in kinds}
    for r in range(repeats):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            fig = tally.measure(kind, f"run {r + 1} {kind}", functools.partial(measure, kind))
            if fig is not None:
                fig["round"] = r + 1
                runs[kind].append(fig)
                print(f"run {r + 1} {kind:<{width}} {show(fig)}", flush=True)
    return runs, tally


def show_rps_by_mode(modes: Sequence[str]) -> Callable[[Figures], str]:
    """For :func:`interleaved_runs`, figures keyed by mode: ``close  1234.5 req/s  keepalive ...``."""

    def show(fig: Figures) -> str:
        return "  ".join(f"{mode} {fig[mode]['rps']:>9.1f} req/s" for mode in modes)

    return show


def medians_by_mode(
    runs: Mapping[str, list[Figures]], modes: Sequence[str], keys: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """Per contender with figures, per mode, the median over its runs of each of ``keys``."""
    return {
        kind: {
            mode: {key: statistics.median(float(f[mode][key]) for f in figs) for key in keys}
            for mode in modes
        }
        for kind, figs in runs.items()
        if figs
    }


def print_mode_table(
    summary: Mapping[str, Mapping[str, Mapping[str, float]]],
    modes: Sequence[str],
    labels: Mapping[str, str],
    width: int,
    error_keys: Sequence[str],
) -> None:
    """The table of :func:`medians_by_mode`: contender, mode, req/s, p50, p99 and errors (the sum
    of ``error_keys``), mode by mode; ``width`` is that of the contender column."""
    print(f"\n{'contender':<{width}} {'mode':<10} {'req/s':>9} {'p50':>9} {'p99':>9} {'errors':>7}")
    for mode in modes:
        for kind, s in summary.items():
            f = s[mode]
            errors = int(sum(f[k] for k in error_keys))
            print(
                f"{labels[kind]:<{width}} {mode:<10} {f['rps']:>9.1f}",
                f"{f['p50_ms']:>7.2f}ms {f['p99_ms']:>7.2f}ms {errors:>7}",
            )


# -- ratios, targets, report --------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    if a is None or b is None or not b:
        return None
    return a / b


def paired_ratio(runs: dict[str, list[Figures]], a: str, b: str, key: str) -> float | None:
    """The median over the rounds of :func:`interleaved_runs` of ``a``'s ``key`` / ``b``'s in the
    same round, or None when no round has both. Contenders of one round run minutes apart at
    most, so a machine that speeds up or slows down during the run moves both alike; the ratio
    of the medians (:func:`ratio`) mixes rounds and does not cancel that."""
    by_round = {fig["round"]: float(fig[key]) for fig in runs.get(b, []) if float(fig[key])}
    pairs = [float(fig[key]) / by_round[fig["round"]] for fig in runs.get(a, []) if fig["round"] in by_round]
    return statistics.median(pairs) if pairs else None


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def mode_ratios(
    summary: Mapping[str, Mapping[str, Mapping[str, float]]],
    modes: Sequence[str],
    pairs: Sequence[tuple[str, str]],
) -> dict[str, float | None]:
    """``A/B (mode)``: A's median req/s over B's, for each mode and pair (None where one is missing)."""

    def rps(kind: str, mode: str) -> float | None:
        return summary[kind][mode]["rps"] if kind in summary else None

    return {f"{a}/{b} ({mode})": ratio(rps(a, mode), rps(b, mode)) for mode in modes for a, b in pairs}


def print_ratios(ratios: Mapping[str, float | None], width: int) -> None:
    """A blank line, then a line a ratio: its name in ``width`` columns, then the ratio."""
    print()
    for name, value in ratios.items():
        print(f"{name:<{width}} {fmt_ratio(value)}")


def ratio_target(target: str, value: float | None, minimum: float) -> dict[str, Any]:
    """A verdict ``{"target", "ratio", "ok"}``: ok when the ratio is known and at least ``minimum``."""
    return {"target": target, "ratio": value, "ok": value is not None and value >= minimum}


def time_target(target: str, value: float | None, maximum: float, unit: str = "ms") -> dict[str, Any]:
    """A verdict ``{"target", "value", "unit", "ok"}``: ok when the value (a time in ms unless
    ``unit`` says otherwise) is known and at most ``maximum``."""
    return {"target": target, "value": value, "unit": unit, "ok": value is not None and value <= maximum}


def print_verdicts(verdicts: Iterable[Mapping[str, Any]], prefix: str = "") -> None:
    """A blank line, then ``PASS``/``FAIL`` ``prefix`` target (the ratio, or the value and its unit) each."""
    print()
    for v in verdicts:
        shown = fmt_ratio(v["ratio"]) if "ratio" in v else f"{fmt_ms(v['value'])} {v.get('unit', 'ms')}"
        print(f"{'PASS' if v['ok'] else 'FAIL'} {prefix}{v['target']} ({shown})")


def print_skipped(skipped: Mapping[str, str]) -> None:
    """A line for each skipped contender, with the first line of why."""
    for kind, why in skipped.items():
        print(f"skipped {kind}: {why.splitlines()[0][:200]}")


def write_json(path: str | None, report: Any) -> None:
    """Write ``report`` to ``path`` as indented JSON and say so; nothing when path is None."""
    if not path:
        return
    with open(path, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"\nfigures written to {path}")


def exit_status(failed: bool, check: bool, verdicts: Iterable[Mapping[str, Any]]) -> int:
    """1 when a measurement failed or, with ``--check``, a target was missed; 0 otherwise."""
    return 1 if failed or (check and not all(v["ok"] for v in verdicts)) else 0


# -- the hello benchmarks (wsgi_hello.py, tls_hello.py): contenders loaded in two modes -----------------

HELLO_MODES = ("close", "keepalive")
HELLO_KEYS = ("rps", "p50_ms", "p99_ms", "socket_errors", "non_2xx")
# A target of a hello benchmark: (its name, the mode, contender A, contender B, the least A/B of req/s).
HelloTarget = tuple[str, str, str, str, float]


def load_modes(server: Server, probe: Callable[[], bool], url: str, args: argparse.Namespace) -> Figures:
    """Once ``probe()`` is True, ``url`` loaded with :func:`run_wrk` in each of ``HELLO_MODES``
    (``args.duration``, ``args.connections``); the figures by mode, and ``left`` (what
    :meth:`Server.stop` left). The server is stopped whatever happens."""
    out: Figures = {}
    try:
        server.wait_ready(probe)
        for mode in HELLO_MODES:
            out[mode] = run_wrk(url, args.duration, args.connections, mode == "keepalive")
    finally:
        out["left"] = server.stop()
    return out


def hello_benchmark(
    args: argparse.Namespace,
    contenders: Sequence[str],
    measure: Callable[[str], Figures],
    labels: Mapping[str, str],
    pairs: Sequence[tuple[str, str]],
    targets: Sequence[HelloTarget],
    note: str = "",
) -> int:
    """The run of a hello benchmark (options of :func:`hello_parser`): prints the header, runs
    ``measure(kind)`` for the contenders ``--only`` keeps (:func:`interleaved_runs`), prints the
    table of the medians (``T`` in a label: ``--threads``), the ratios of ``pairs`` per mode and
    the verdicts of ``targets``, writes ``--json`` (``args`` but the attributes named ``*file``);
    returns the exit status (:func:`exit_status`)."""
    kinds = chosen(contenders, args.only)
    m = machine()
    wrk = {mode: wrk_line(args.duration, args.connections, mode == "keepalive") for mode in HELLO_MODES}
    print(machine_line(m))
    for mode in HELLO_MODES:
        print(f"wrk ({mode}): {wrk[mode]}", "(1 s warm-up first)")
    print(f"workers {args.workers}, threads {args.threads}, backlog {args.backlog}, runs {args.runs}{note}\n")
    runs, tally = interleaved_runs(kinds, args.runs, measure, show_rps_by_mode(HELLO_MODES), 17)
    summary = medians_by_mode(runs, HELLO_MODES, HELLO_KEYS)
    shown = {kind: label.replace("T threads", f"{args.threads} threads") for kind, label in labels.items()}
    print_mode_table(summary, HELLO_MODES, shown, 45, ("socket_errors", "non_2xx"))
    ratios = mode_ratios(summary, HELLO_MODES, pairs)
    print_ratios(ratios, 45)
    verdicts = [
        ratio_target(name, ratios.get(f"{a}/{b} ({mode})"), least) for name, mode, a, b, least in targets
    ]
    print_verdicts(verdicts)
    print_skipped(tally.skipped)
    report = {
        "machine": m,
        "wrk": wrk,
        "settings": {k: v for k, v in vars(args).items() if not k.endswith("file")},
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
        "targets": verdicts,
        "skipped": tally.skipped,
    }
    write_json(args.json, report)
    return exit_status(tally.failed, args.check, verdicts)
