"""No script but the page's own runs in a report: its Content-Security-Policy lists the page's two scripts by hash
(no 'unsafe-inline'), and markup in every name a user controls (checkpoints, classes, the data file, the analysis
folder, methods) stays text in every section, checked in headless Chromium by counting dialogs and injected nodes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import browser
from fixtures_pipeline import tiny_run  # noqa: F401  (pytest fixture)
from i2x import api
from i2x.io.store import Store
from i2x.io.workdir import BENCHMARK, RELIANCE, SUMMARY
from i2x.reporting.page import Section, render_page, script_hash

#: Markup that would run (onerror) or add nodes (the custom element) if a name reached the page unescaped; no "/",
#: so it can be a file name.
PAYLOAD = "<img src=x onerror=alert({n}) class=i2x-injected><i2x-injected>"
INJECTED = "return document.querySelectorAll('.i2x-injected, i2x-injected').length"
_SCRIPT = re.compile(r"<script( [^>]*)?>(.*?)</script>", re.S)


def _policy(text: str) -> dict[str, list[str]]:
    """The page's CSP as directive -> sources."""
    (content,) = re.findall(r'http-equiv="Content-Security-Policy" content="([^"]*)"', text)
    return {d.split()[0]: d.split()[1:] for d in content.split(";") if d.strip()}


def test_the_policy_runs_only_the_pages_own_scripts_by_hash():
    text = render_page("t", "s", [Section("a", "A", "intro", "<p>body</p>")], {}, [], "footer")
    policy = _policy(text)
    assert "'unsafe-inline'" not in policy["script-src"] and policy["default-src"] == ["'none'"]
    runnable = [body for attrs, body in _SCRIPT.findall(text) if 'type="application/json"' not in (attrs or "")]
    assert len(runnable) == 2  # the Vega bundle and the page's script
    assert sorted(s for s in policy["script-src"] if s.startswith("'sha256-")) == sorted(map(script_hash, runnable))
    # the hash is the CSP one: base64 of the SHA-256 of the UTF-8 text (a known vector)
    assert script_hash("alert(1)") == "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"


@pytest.fixture(scope="module")
def hostile_report(tiny_run, tmp_path_factory) -> Path:  # noqa: F811
    """The tiny run (classes already named with markup) with markup in its checkpoint names, checkpoint folder,
    data file, analysis folder and a benchmarked method's name; every study run, then the report."""
    root = tmp_path_factory.mktemp("hostile-report")
    ckpts = root / ("ck" + PAYLOAD.format(n=11))
    ckpts.mkdir()
    renamed = {}
    for path in sorted((tiny_run.parent / "ck").iterdir()):
        renamed[path.name] = path.stem + PAYLOAD.format(n=12) + path.suffix
        shutil.copy(path, ckpts / renamed[path.name])
    npz = root / ("d" + PAYLOAD.format(n=13) + ".npz")
    shutil.copy(tiny_run.parent / "d.npz", npz)
    out = root / ("an" + PAYLOAD.format(n=14))
    shutil.copytree(tiny_run, out)
    store = Store.open(out, mode="a")
    store.root.attrs["config"] = {**store.config, "checkpoints": str(ckpts), "data": f"npz:{npz}"}
    store.root.attrs["checkpoints"] = [{**c, "name": renamed[c["name"]]} for c in store.checkpoints]
    moved = {**renamed, str(tiny_run.parent / "d.npz"): str(npz), str(tiny_run.parent / "ck"): str(ckpts),
             str(tiny_run): str(out)}
    for name in (SUMMARY, RELIANCE):
        text = (out / name).read_text()
        for old, new in moved.items():
            text = text.replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1])
        (out / name).write_text(text)
    api.drift(out, progress=False)
    api.faithfulness(out, per_bucket=3, steps=4, random_draws=1, device="cpu", progress=False)
    api.evidence(out, samples="3,5", checkpoints="first,final", iterations=3, device="cpu", progress=False)
    api.benchmark(out, methods=("gradcam",), checkpoints=("final",), samples=8, detail_samples=4, percentiles=(50,),
                  random_draws=1, sensitivity_samples=2, device="cpu", progress=False)
    bench = json.loads((out / BENCHMARK).read_text())
    method = PAYLOAD.format(n=15)
    bench["results"] = {c: {method: s for s in scores.values()} for c, scores in bench["results"].items()}
    (out / BENCHMARK).write_text(json.dumps(bench))
    return api.report(out, progress=False, pngs=False)


@pytest.mark.slow
def test_markup_in_every_name_stays_text_in_every_section(hostile_report, tmp_path):
    why = browser.missing()
    if why:
        pytest.skip(why)
    text = hostile_report.read_text(encoding="utf-8")
    assert "'unsafe-inline'" not in _policy(text)["script-src"]
    for n in (12, 13, 15):  # the checkpoint, data and method names reached the page (as text)
        assert f"onerror=alert({n})" in text.replace("&lt;", "<").replace("&gt;", ">")
    driver = browser.open_offline(tmp_path / "profile")
    try:
        driver.get(hostile_report.as_uri())
        assert browser.wait_for(driver, "document.body && document.body.getAttribute('data-charts')") == "rendered"
        sections = driver.execute_script("return Array.from(document.querySelectorAll('section')).map(s => s.id)")
        assert {"overview", "reliance", "films", "faithfulness", "drift", "evidence", "benchmark"} <= set(sections)
        assert driver.execute_script("return window.__dialogs") == []
        assert driver.execute_script(INJECTED) == 0
    finally:
        driver.quit()
