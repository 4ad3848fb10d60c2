"""`continuum plan --report FILE.html`: the numbers behind the plots, a self-contained file, and what
headless Chromium really draws (pixels inside each plot, no console errors), for the examples and a
generated 1,000 workloads × 100 pools instance.

Chromium is Debian's `chromium` (`apt-get install chromium`); without it the browser tests skip and
say so. The browser is driven over the DevTools protocol with aiohttp (already an operator
dependency): load the file, collect console errors and exceptions, take a full-page screenshot and
count, in the page itself, the non-background pixels of the screenshot inside every plot.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from continuum.api.loader import load_manifests
from continuum.plan import plan_result, snapshot_of
from continuum.report import build_report, render_html

from tests.cli.test_diff import _node, _pool, _workload
from tests.conftest import EXAMPLES, ROOT

CLUSTER = str(EXAMPLES / "cluster")
WORKLOADS = str(EXAMPLES / "workloads")
PLOTS = ("plot-latency", "plot-wan", "plot-sites", "plot-cost")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not found: `apt-get update && apt-get install -y chromium` (or set CHROMIUM)",
)
MAX_BYTES = 5 * 1024 * 1024


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "continuum", *args], capture_output=True, text=True, timeout=300, check=False
    )


# --- the numbers -----------------------------------------------------------------------------------


def _fixture(folder: Path) -> list[str]:
    """Near-edge pool at the plant (cpu 0.02/h), a MEC (0.01/h, 8 ms) and a cloud pool (0.03/h, 40 ms);
    four workloads preferring near-edge, 2+2+2+3 cpu, 1Gi, 10 Mbps each."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = [
        _node("edge-1", "edge", 16),
        _node("mec-1", "mec", 32),
        _node("cloud-1", "cloud", 64),
        _pool("edge", "near-edge", "plant", 1, 0.02),
        _pool("mec", "regional-mec", "mec-site", 8, 0.01),
        _pool("cloud", "cloud", "cloud-site", 40, 0.03),
        _workload("tight-a", 5, 2),
        _workload("tight-b", 5, 2),
        _workload("loose-c", 20, 2),
        _workload("loose-d", 20, 3),
    ]
    (folder / "all.yaml").write_text(yaml.safe_dump_all(docs))
    return [str(folder)]


def _report(paths: list[str]) -> Any:
    manifests = load_manifests(paths)
    return build_report(plan_result(paths), manifests.workloads, snapshot_of(manifests))


def test_cost_baselines_are_the_cheapest_pool_of_each_tier(tmp_path: Path) -> None:
    report = _report(_fixture(tmp_path))
    assert report.summary["placed"] == 4
    assert report.plan_cost == pytest.approx(9 * 0.02 + 4 * 0.001)  # all on the near-edge pool
    cloud, preferred = report.baselines
    # cloud: cpu 0.03 + memory 0.001 + 10 Mbps × 0.01 over the WAN, for each workload
    assert cloud.hourly_cost == pytest.approx(9 * 0.03 + 4 * 0.001 + 4 * 10 * 0.01)
    assert (cloud.workloads, cloud.breaking_rules, cloud.without_pool) == (4, 4, 0)  # 40 ms > 5 and 20 ms
    assert preferred.hourly_cost == pytest.approx(report.plan_cost)
    assert (preferred.workloads, preferred.breaking_rules, preferred.without_pool) == (4, 0, 0)


def test_latency_wan_and_site_data(tmp_path: Path) -> None:
    report = _report(_fixture(tmp_path))
    assert sorted((p.key, p.latency_ms, p.budget_ms) for p in report.latency) == [
        ("line/loose-c", 1.0, 20.0),
        ("line/loose-d", 1.0, 20.0),
        ("line/tight-a", 1.0, 5.0),
        ("line/tight-b", 1.0, 5.0),
    ]
    assert report.by_site_tier == {"plant": {"near-edge": 4}}
    assert report.unschedulable == []


def test_examples_unschedulable_with_hint_and_reasons() -> None:
    report = _report([CLUSTER, WORKLOADS])
    (u,) = report.unschedulable
    assert u.key == "manufacturing/quality-assistant"
    assert u.hint == "to fit on pool mec-frankfurt: raise requirements.latencyBudgetMs to 21 ms"
    assert u.rejected_by_reason["Latency"] == 7
    wan = {b.pool: b for b in report.wan}
    assert wan["mec-frankfurt"].used_mbps == 70 and wan["mec-frankfurt"].capacity_mbps == 2000
    assert "cloud-virginia" in wan and wan["cloud-virginia"].used_mbps == 5


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained_and_escaped(tmp_path: Path) -> None:
    report = _report([CLUSTER, WORKLOADS])
    report.unschedulable[0] = type(report.unschedulable[0])("ns/<b>x</b>", "<script>alert(1)</script>", {})
    text = render_html(report)
    parser = _Tags()
    parser.feed(text)
    tags = parser.tags
    assert not [t for t, _ in tags if t in ("script", "link", "img", "iframe", "object", "embed")]
    for tag, attrs in tags:
        for name in ("src", "href", "xlink:href"):
            assert name not in attrs, (tag, attrs)
    assert "http" not in "".join(re.findall(r"<style>.*?</style>", text, re.S))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "ns/&lt;b&gt;x&lt;/b&gt;" in text
    ids = [a.get("id") for t, a in tags if t == "svg"]
    assert ids == list(PLOTS)
    circles = re.findall(r'<circle class="mark"', text.split('id="plot-latency"')[1].split("</svg>")[0])
    assert len(circles) == report.summary["placed"]


def test_cli_writes_the_report_and_keeps_the_exit_code(tmp_path: Path) -> None:
    out = tmp_path / "plan.html"
    proc = run_cli("plan", "-f", CLUSTER, "-f", WORKLOADS, "--report", str(out), "-o", "json")
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["summary"]["unschedulable"] == 1  # stdout is still the plan
    assert out.read_text().startswith("<!DOCTYPE html>")
    bad = run_cli("plan", "-f", CLUSTER, "--report", str(tmp_path / "missing-dir" / "x.html"))
    assert bad.returncode == 1 and "error: --report:" in bad.stderr


# --- a generated 1,000 × 100 instance -------------------------------------------------------------


def write_instance(folder: Path, n_workloads: int, n_pools: int, seed: int = 1) -> list[str]:
    """bench/instances.py's instance as manifests (pools, nodes, workloads)."""
    sys.path.insert(0, str(ROOT))
    from bench.instances import generate

    snapshot, requests = generate(n_workloads, n_pools, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs: list[dict[str, Any]] = []
    for view in snapshot.pools:
        docs.append(view.pool.model_dump(by_alias=True, exclude_none=True, mode="json"))
        for node in view.nodes:
            alloc = {"cpu": f"{node.allocatable.cpu_millis}m", "memory": str(node.allocatable.memory_bytes)}
            if node.allocatable.gpu:
                alloc["nvidia.com/gpu"] = str(node.allocatable.gpu)
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": node.name, "labels": dict(node.labels)},
                    "spec": {},
                    "status": {"allocatable": alloc, "conditions": [{"type": "Ready", "status": "True"}]},
                }
            )
    for req in requests:
        namespace, _, name = req.key.partition("/")
        docs.append(
            {
                "apiVersion": "continuum.dev/v1alpha1",
                "kind": "EdgeWorkload",
                "metadata": {"name": name, "namespace": namespace},
                "spec": req.spec.model_dump(by_alias=True, exclude_none=True, mode="json"),
            }
        )
    (folder / "instance.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return [str(folder)]


@pytest.fixture(scope="module")
def large_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], float]:
    folder = tmp_path_factory.mktemp("large")
    paths = write_instance(folder / "manifests", 1000, 100)
    out = folder / "plan-1000x100.html"
    start = time.perf_counter()
    proc = run_cli("plan", "-f", paths[0], "--report", str(out), "-o", "json")
    wall = time.perf_counter() - start
    assert proc.returncode in (0, 2), proc.stderr
    return out, json.loads(proc.stdout), wall


@pytest.mark.slow
def test_large_instance_report_is_small_enough(large_report: tuple[Path, dict[str, Any], float]) -> None:
    out, doc, _ = large_report
    assert doc["summary"]["workloads"] == 1000
    size = out.stat().st_size
    assert size <= MAX_BYTES, f"{size} bytes"
    text = out.read_text()
    plot = text.split('id="plot-latency"')[1].split("</svg>")[0]
    assert plot.count('<circle class="mark"') == doc["summary"]["placed"]


# --- what Chromium draws ---------------------------------------------------------------------------

_MEASURE = """
(async () => {
  const shot = %s;
  const img = new Image();
  await new Promise((ok, bad) => { img.onload = ok; img.onerror = bad; img.src = 'data:image/png;base64,' + shot; });
  const canvas = document.createElement('canvas');
  canvas.width = img.width; canvas.height = img.height;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const out = {width: img.width, height: img.height, plots: {}};
  for (const svg of document.querySelectorAll('svg.plot')) {
    const r = svg.getBoundingClientRect();
    const x = Math.round(r.left + window.scrollX), y = Math.round(r.top + window.scrollY);
    const w = Math.round(r.width), h = Math.round(r.height);
    const data = ctx.getImageData(x, y, Math.max(w, 1), Math.max(h, 1)).data;
    let colored = 0;
    for (let i = 0; i < data.length; i += 4) {
      const [R, G, B] = [data[i], data[i + 1], data[i + 2]];
      if (Math.max(R, G, B) - Math.min(R, G, B) > 40) colored++;  // a tier/bar colour, not grey text or white
    }
    const marks = [...svg.querySelectorAll('.mark')].filter(m => { const b = m.getBBox(); return b.width > 0 && b.height > 0; }).length;
    out.plots[svg.id] = {width: w, height: h, colored, marks};
  }
  return JSON.stringify(out);
})()
"""


async def _cdp(path: Path, width: int) -> tuple[bytes, dict[str, Any], list[str]]:
    import aiohttp

    profile = tempfile.mkdtemp(prefix="continuum-chromium-")
    proc = await asyncio.create_subprocess_exec(
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        f"--window-size={width},1000",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    errors: list[str] = []
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = iter(range(1, 10**6))
                events: list[dict[str, Any]] = []

                async def call(method: str, **params: Any) -> dict[str, Any]:
                    msg_id = next(ids)
                    await ws.send_json({"id": msg_id, "method": method, "params": params})
                    while True:
                        msg = await asyncio.wait_for(ws.receive_json(), 60)
                        if msg.get("id") == msg_id:
                            assert "error" not in msg, msg
                            return msg["result"]
                        events.append(msg)

                await call("Page.enable")
                await call("Runtime.enable")
                await call("Log.enable")
                await call("Page.navigate", url=path.resolve().as_uri())
                while not any(e.get("method") == "Page.loadEventFired" for e in events):
                    events.append(await asyncio.wait_for(ws.receive_json(), 60))
                shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                measured = await call(
                    "Runtime.evaluate", expression=_MEASURE % json.dumps(shot["data"]), awaitPromise=True
                )
                await call("Runtime.evaluate", expression="0")  # drain events raised meanwhile
                for e in events:
                    method, params = e.get("method"), e.get("params", {})
                    if method == "Runtime.exceptionThrown":
                        details = params["exceptionDetails"]
                        errors.append(details.get("exception", {}).get("description") or details["text"])
                    elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                        errors.append(json.dumps(params.get("args"))[:300])
                    elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                        errors.append(params["entry"]["text"])
        return base64.b64decode(shot["data"]), json.loads(measured["result"]["value"]), errors
    finally:
        proc.terminate()
        await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def render_in_chromium(path: Path, width: int = 1100) -> tuple[bytes, dict[str, Any], list[str]]:
    """(PNG screenshot of the whole page, per-plot measurements, console errors)."""
    return asyncio.run(_cdp(path, width))


def _check_drawn(png: bytes, measured: dict[str, Any], errors: list[str]) -> None:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not errors, errors
    assert set(measured["plots"]) == set(PLOTS)
    for name, plot in measured["plots"].items():
        assert plot["width"] > 300 and plot["height"] > 40, (name, plot)
        assert plot["marks"] > 0, (name, plot)
        assert plot["colored"] > 200, f"{name}: only {plot['colored']} coloured pixels drawn"


@requires_chromium
def test_examples_report_in_headless_chromium(tmp_path: Path) -> None:
    out = tmp_path / "plan.html"
    assert run_cli("plan", "-f", CLUSTER, "-f", WORKLOADS, "--report", str(out)).returncode == 2
    assert out.stat().st_size <= MAX_BYTES
    png, measured, errors = render_in_chromium(out)
    _check_drawn(png, measured, errors)
    assert measured["plots"]["plot-latency"]["marks"] == 7  # one point per placed workload


@pytest.mark.slow
@requires_chromium
def test_large_instance_report_in_headless_chromium(large_report: tuple[Path, dict[str, Any], float]) -> None:
    out, doc, _ = large_report
    png, measured, errors = render_in_chromium(out)
    _check_drawn(png, measured, errors)
    assert measured["plots"]["plot-latency"]["marks"] == doc["summary"]["placed"]


@requires_chromium
def test_a_broken_page_is_caught(tmp_path: Path) -> None:
    """The browser check itself: a script error and a plot with nothing drawn are reported."""
    page = tmp_path / "broken.html"
    plots = "".join(f'<svg class="plot" id="{p}" width="400" height="100"></svg>' for p in PLOTS)
    page.write_text(f"<!DOCTYPE html><html><body>{plots}<script>undefinedFunction()</script></body></html>")
    png, measured, errors = render_in_chromium(page)
    assert errors and "undefinedFunction" in " ".join(errors)
    assert all(p["marks"] == 0 and p["colored"] == 0 for p in measured["plots"].values())
    with pytest.raises(AssertionError):
        _check_drawn(png, measured, [])


if (
    __name__ == "__main__"
):  # write a screenshot of the examples' report: python -m tests.cli.test_report OUT.png
    target = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        html_path = Path(tmp) / "plan.html"
        run_cli("plan", "-f", CLUSTER, "-f", WORKLOADS, "--report", str(html_path))
        shot, _, problems = render_in_chromium(html_path)
        assert not problems, problems
        target.write_bytes(shot)
        print(f"wrote {target} ({len(shot)} bytes)")
