"""The run report as a person sees it: rendered by headless Chromium (Debian's `chromium`
package; a browser cannot be downloaded here), driven over the DevTools protocol with aiohttp
(already a dependency: no browser driver to install).

The run is real: `tradingd backtest --report` in a subprocess, on the bundled S&P 500 and
NASDAQ index series (momentum, 2016-2018), as a user runs it.

"Drawn" is checked in pixels, not in the DOM: a screenshot of each chart's plot area (found
by the element id of the chart and plotly's plot-area rectangle inside it) must contain each
trace's own colour (the report draws data in saturated colours and everything else in greys),
and the heatmap must be mostly coloured. A negative control blanks two charts' data and
checks that exactly those two are reported, so the check cannot pass on bare axes. The page
must log no console error and load nothing but itself (it opens offline).

Skips, with the reason, when Chromium or Pillow (the PNG decoder, a dev dependency) is absent.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tradingd.analysis.report import build_report
from tradingd.analysis.report_charts import CHART_IDS

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
)
Image = pytest.importorskip("PIL.Image", reason="Pillow (a dev dependency) is not installed")

VIEWPORT = (1280, 6000)  # tall enough that every chart is drawn without scrolling or resizing
TIMEOUT = 60.0
MIN_TRACE_PIXELS = 20  # pixels of a trace's colour in its chart's plot area
COLOUR_DISTANCE = 40.0  # RGB distance still counted as that colour (anti-aliasing)
MIN_HEATMAP_SHARE = 0.10  # share of the heatmap's plot area in colour


def _config(tmp_path: Path) -> Path:
    p = tmp_path / "report.toml"
    p.write_text(f"""
[run]
run_id = "report-browser"
start = "2016-01-01"
end = "2018-12-31"
output_dir = "{tmp_path / "runs"}"
[orders]
brackets = false
[[signals]]
name = "momentum"
params = {{ lookback = 20 }}
[sizing]
name = "equal_weight"
params = {{ max_positions = 2, gross_exposure = 0.95 }}
[[risk]]
name = "max_position"
params = {{ max_position_pct = 0.5 }}
[storage]
url = "sqlite:///{tmp_path / "s.db"}"
[log]
audit_dir = "{tmp_path / "audit"}"
[health]
port = 0
""")
    return p


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """`tradingd backtest --report --json`: the summary on stdout, the report in the folder."""
    tmp = tmp_path_factory.mktemp("report_browser")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    r = subprocess.run(
        [sys.executable, "-m", "tradingd", "backtest", "-c", str(_config(tmp)), "--report",
         "--json", "--no-progress"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)  # --report keeps stdout one JSON object
    out = tmp / "runs" / "report-browser"
    assert summary["round_trips"] > 0 and summary["risk_verdicts"] > 0
    assert f"report: {out / 'report.html'}" in r.stderr
    return out


# ----------------------------------------------------------------------------- DevTools


class Page:
    """One Chromium tab over the DevTools protocol (flattened session on the browser socket)."""

    def __init__(self, ws: Any, session: str) -> None:
        self.ws, self.session = ws, session
        self.next_id = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.events: list[dict[str, Any]] = []
        self.waiters: list[tuple[str, asyncio.Future]] = []

    async def pump(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                fut = self.pending.pop(data["id"])
                if "error" in data:
                    fut.set_exception(RuntimeError(f"{data['error']}"))
                else:
                    fut.set_result(data.get("result", {}))
            elif "method" in data:
                self.events.append(data)
                for method, fut in list(self.waiters):
                    if method == data["method"] and not fut.done():
                        fut.set_result(data)

    async def send(self, method: str, params: dict | None = None, *, browser: bool = False) -> Any:
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if not browser:
            msg["sessionId"] = self.session
        await self.ws.send_str(json.dumps(msg))
        return await asyncio.wait_for(fut, TIMEOUT)

    def expect(self, method: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append((method, fut))
        return fut

    async def evaluate(self, expression: str) -> Any:
        out = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in out:
            raise AssertionError(f"page script failed: {out['exceptionDetails']}")
        return out["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors so far."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e["method"] == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:500])
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"{p['entry'].get('url', '')}: {p['entry']['text']}")
        return out

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]


async def _render(html_file: Path, profile: Path) -> tuple[dict[str, Any], Page]:
    """Open the file, wait for `window.reportReady` (every chart drawn) and return each
    chart's plot area, expected colours and screenshot, with the page (for its events)."""
    import aiohttp

    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--no-default-browser-check", "--disable-extensions", "--disable-sync",
        "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
        "--force-device-scale-factor=1", f"--user-data-dir={profile}",
        "--remote-debugging-port=0", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    log: list[str] = []
    drain = None
    try:
        assert proc.stderr is not None
        url = None
        while url is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)).decode()
            if not line:
                raise AssertionError("chromium exited before listening:\n" + "".join(log))
            log.append(line)
            if line.startswith("DevTools listening on "):
                url = line.split(" on ", 1)[1].strip()

        async def keep_draining() -> None:  # a full pipe would stall the browser
            assert proc.stderr is not None
            while await proc.stderr.readline():
                pass

        drain = asyncio.create_task(keep_draining())
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url, max_msg_size=0) as ws,
        ):
            page = Page(ws, "")
            pump = asyncio.create_task(page.pump())
            try:
                target = await page.send(
                    "Target.createTarget", {"url": "about:blank"}, browser=True
                )
                attached = await page.send(
                    "Target.attachToTarget",
                    {"targetId": target["targetId"], "flatten": True},
                    browser=True,
                )
                page.session = attached["sessionId"]
                for domain in ("Page", "Runtime", "Log", "Network"):
                    await page.send(f"{domain}.enable")
                width, height = VIEWPORT
                await page.send(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                )
                loaded = page.expect("Page.loadEventFired")
                await page.send("Page.navigate", {"url": html_file.resolve().as_uri()})
                await asyncio.wait_for(loaded, TIMEOUT)
                drawn = await asyncio.wait_for(
                    page.evaluate("window.reportReady.then(ids => ids)"), TIMEOUT
                )
                charts = await page.evaluate(_CHARTS_JS)
                assert sorted(drawn) == sorted(charts), (drawn, list(charts))
                for cid, c in charts.items():
                    assert c["y"] + c["height"] <= height, f"{cid} is below the viewport"
                    shot = await page.send(
                        "Page.captureScreenshot",
                        {
                            "format": "png",
                            "clip": {
                                "x": c["x"], "y": c["y"], "width": c["width"],
                                "height": c["height"], "scale": 1,
                            },
                        },
                    )  # fmt: skip
                    png = base64.b64decode(shot["data"])
                    c["pixels"] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), float)
                await page.send("Browser.close", browser=True)
            finally:
                pump.cancel()
        return charts, page
    finally:
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            drain.cancel()


# Each chart's plot area (plotly's drag rectangle: inside the axes, without the legend) in
# page coordinates, and the colour each trace is drawn in (user data, as the page has it).
_CHARTS_JS = """
(() => Object.fromEntries([...document.querySelectorAll('div.chart')].map(div => {
  const area = div.querySelector('.draglayer .nsewdrag') || div;
  const r = area.getBoundingClientRect();
  const colours = div.data.flatMap(t => {
    if (t.type === 'heatmap') return [];
    const c = (t.line && t.line.color) || (t.marker && t.marker.color);
    return Array.isArray(c) ? [...new Set(c)] : (c ? [c] : []);
  });
  return [div.id, {x: r.left + window.scrollX, y: r.top + window.scrollY,
                   width: r.width, height: r.height, colours,
                   heatmap: div.data.some(t => t.type === 'heatmap')}];
})))()
"""


def _rgb(hex_colour: str) -> np.ndarray:
    h = hex_colour.lstrip("#")
    return np.array([int(h[i : i + 2], 16) for i in (0, 2, 4)], float)


def blank_charts(charts: dict[str, Any]) -> dict[str, str]:
    """Chart id -> what is missing, for every chart whose data is not drawn."""
    out = {}
    for cid, c in charts.items():
        px = c["pixels"].reshape(-1, 3)
        if c["heatmap"]:
            coloured = float(np.mean(px.max(axis=1) - px.min(axis=1) > 60))
            if coloured < MIN_HEATMAP_SHARE:
                out[cid] = f"heatmap: {coloured:.1%} of the plot area in colour"
        for colour in c["colours"]:
            n = int(np.sum(np.linalg.norm(px - _rgb(colour), axis=1) <= COLOUR_DISTANCE))
            if n < MIN_TRACE_PIXELS:
                out[cid] = f"{colour}: {n} pixels"
    return out


# ----------------------------------------------------------------------------- tests


async def test_every_chart_is_drawn_offline_without_console_errors(run_dir, tmp_path):
    html_file = run_dir / "report.html"
    charts, page = await _render(html_file, tmp_path / "profile")
    assert set(charts) == set(CHART_IDS)
    for cid, c in charts.items():
        assert c["width"] > 300 and c["height"] > 50, (cid, c["width"], c["height"])
        assert c["heatmap"] or c["colours"], cid
    assert blank_charts(charts) == {}
    assert page.errors() == []
    # Offline: the page loads nothing but itself (plotly.js is inline; the heatmap is drawn
    # as an inline data: image).
    assert [u for u in page.requests() if not u.startswith("data:")] == [
        html_file.resolve().as_uri()
    ]
    # The sizes the lead wants reported.
    print(
        f"\nreport.html {html_file.stat().st_size:,} bytes, "
        f"report.json {(run_dir / 'report.json').stat().st_size:,} bytes"
    )


async def test_a_chart_without_its_data_is_reported_blank(run_dir, tmp_path):
    """The negative control: the same report with the strategy's equity line and the
    monthly heatmap emptied (valid plotly data, so no console error)."""
    report = build_report(run_dir)
    equity = report.figures["chart-equity"]["data"][0]
    assert equity["name"] == "strategy"
    equity["y"] = [None] * len(equity["y"])
    heat = report.figures["chart-monthly"]["data"][0]
    heat["z"] = [[None] * 12 for _ in heat["z"]]
    html_file = tmp_path / "broken.html"
    html_file.write_text(report.to_html())
    charts, page = await _render(html_file, tmp_path / "profile")
    blank = blank_charts(charts)
    assert set(blank) == {"chart-equity", "chart-monthly"}, blank
    assert blank["chart-equity"].startswith("#1f77b4")  # the benchmark's line is still drawn
    assert page.errors() == []
