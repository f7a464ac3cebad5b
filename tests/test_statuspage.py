"""prefork.statuspage: the /status HTML page and its History, and the page as headless
Chromium renders it (served by a real exporter child)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from prefork.statuspage import REFRESH_SECONDS, History, Point, chart_svg, render_html
from tests.conftest import skip_unless_installed, wait_for
from tests.exporter_child import exporter_child, fetch, make_snapshot

pytestmark = pytest.mark.timeout(120)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SVG_NS = "{http://www.w3.org/2000/svg}"


def filled_history(samples: int = 40, interval: float = 2.0) -> History:
    """A history of ``samples`` snapshots ``interval`` s apart: 50 requests/s, then 100."""
    history = History(size=30)
    snapshot = make_snapshot()
    requests = 0
    for i in range(samples):
        snapshot["totals"]["requests"] = requests
        snapshot["workers"][0]["requests"] = requests // 2
        snapshot["workers"][1]["state"] = "busy" if i % 2 else "idle"
        history.add(snapshot, now=1000.0 + interval * i)
        requests += int((50 if i < samples // 2 else 100) * interval)
    return history


def extract_svg(page: str) -> ET.Element:
    """The page's (only) SVG element, parsed as XML (fails if not well-formed)."""
    assert page.count("<svg") == 1
    return ET.fromstring(page[page.index("<svg") : page.index("</svg>") + len("</svg>")])


def test_history_rates_and_ring() -> None:
    history = filled_history()
    points = history.points()
    assert len(points) == 29  # the ring keeps 30 samples
    assert points[-1].age == 0.0 and points[0].age == pytest.approx(56.0)
    assert all(p.rate == pytest.approx(100.0) for p in points[-15:])
    assert {p.busy for p in points} == {0, 1}
    assert history.rate() == pytest.approx(100.0)
    rates = history.worker_rates()
    assert rates[40000] == pytest.approx(50.0)  # worker 0 counted half of the requests
    assert rates[40001] == 0.0


def test_history_empty_and_counter_reset() -> None:
    history = History()
    assert history.points() == [] and history.rate() is None and history.worker_rates() == {}
    snapshot = make_snapshot()
    history.add(snapshot, now=1.0)
    assert history.rate() is None
    snapshot["totals"]["requests"] = 0  # went down (a new master): no negative rate
    history.add(snapshot, now=3.0)
    assert history.rate() == 0.0 and history.points() == [Point(0.0, 0.0, 1)]


def test_page_content() -> None:
    page = render_html(make_snapshot(), filled_history())
    assert page.startswith("<!DOCTYPE html>")
    assert f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' in page
    assert "<title>TestServer - prefork status</title>" in page
    assert "master pid 1234" in page and "up 01:02:05" in page
    assert "2025-11-26 09:40:00 UTC" in page  # started_at
    assert "<td>Listen queue</td><td>3 / 128</td>" in page
    assert "<td>Requests/s (last 10 s)</td><td>100.0</td>" in page
    assert "<td>max requests</td><td>5</td>" in page and "<td>Boot failures</td><td>1</td>" in page
    assert "<code>_W_S</code>" in page  # the scoreboard line
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td>", page)
    assert rows == [("0", "40000"), ("1", "40001"), ("2", "40002"), ("3", "40003")]
    assert '<span class="state busy">busy</span>' in page
    assert "<td>1.50 s</td>" in page  # worker 1's request age
    assert "<td>20.0 MiB</td>" in page  # worker 0's RSS
    assert "&le; 5 ms" in page and "&gt; 10 s" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "").replace(
        "http://127.0.0.1:9100", ""
    )


def test_hostile_strings_escaped() -> None:
    snapshot = make_snapshot(name="<script>alert(1)</script>")
    snapshot["worker_class"] = '"><img src=x onerror=alert(2)>'
    snapshot["control_socket"] = "/tmp/<b>&"
    snapshot["workers"][0]["state"] = 'idle" onmouseover="alert(3)'
    page = render_html(snapshot, History())
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "/tmp/&lt;b&gt;&amp;" in page
    assert 'onmouseover="' not in page


def test_chart_is_well_formed_svg() -> None:
    svg = extract_svg(render_html(make_snapshot(), filled_history()))
    assert svg.tag == f"{SVG_NS}svg"
    plot = svg.find(f"{SVG_NS}rect")
    assert plot is not None
    left, top = float(plot.attrib["x"]), float(plot.attrib["y"])
    right, bottom = left + float(plot.attrib["width"]), top + float(plot.attrib["height"])
    lines = svg.findall(f"{SVG_NS}polyline")
    assert len(lines) == 2  # requests/s and busy workers
    for line in lines:
        pairs = [(float(x), float(y)) for x, y in (pair.split(",") for pair in line.attrib["points"].split())]
        assert len(pairs) == 29
        assert all(left <= x <= right and top <= y <= bottom for x, y in pairs)
        assert pairs[-1][0] == pytest.approx(right)  # now, at the right edge
    texts = [t.text for t in svg.iter(f"{SVG_NS}text")]
    assert "now" in texts and "-1 min" in texts and "100" in texts  # 100 req/s at most


def test_chart_without_samples() -> None:
    svg = ET.fromstring(chart_svg([], 4))
    assert "collecting samples..." in [t.text for t in svg.iter(f"{SVG_NS}text")]
    assert not svg.findall(f"{SVG_NS}polyline")
    page = render_html(make_snapshot(workers=0))
    assert "no live worker" in page
    extract_svg(page)


def run_chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with a profile of its own, in its own process group, killed whole
    after 60 s."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    env = dict(os.environ, HOME=str(tmp_path))
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # helpers left in its group, if any
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, err[-2000:]
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def test_status_page_in_headless_chromium(tmp_path: Path) -> None:
    if CHROMIUM is None:
        skip_unless_installed("chromium", None)
    with exporter_child("127.0.0.1:0", sample_interval=0.2) as child:
        # A few samples, so the chart has lines.
        wait_for(lambda: b"<polyline" in fetch(child.url, "/status").body, timeout=5, interval=0.1)
        url = child.url + "/status"
        dom = run_chromium(["--dump-dom", url], tmp_path).stdout
        assert "<title>TestServer - prefork status</title>" in dom
        for pid in ("40000", "40001", "40002", "40003"):
            assert f"<td>{pid}</td>" in dom
        assert '<span class="state busy">busy</span>' in dom
        assert "<svg" in dom and "<polyline" in dom
        screenshot = tmp_path / "status.png"
        run_chromium([f"--screenshot={screenshot}", "--window-size=1200,900", url], tmp_path)
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    if os.environ.get("PREFORK_STATUS_SCREENSHOT"):  # to look at it
        shutil.copyfile(screenshot, os.environ["PREFORK_STATUS_SCREENSHOT"])
