"""The two-run comparison page (``i2x compare``), the out-of-date marks, the film strips' methods and scales, and the
prototype matching maths.

The second run of the comparison (tests/fixtures_compare.py) is the tiny run with its prototypes renumbered by a
known permutation: the same model, so every prototype has a twin, and the page must pair prototype i of A with
perm[i] of B at similarity 1.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from i2x import api
from i2x.attribution import Attributor, get_methods
from i2x.cli import main
from i2x.errors import UserError
from i2x.io.store import Store
from i2x.metrics.matching import cell_overlap, cosine, match
from i2x.reporting.freshness import mark_out_of_date, stale_sections
from i2x.reporting.images import jet, map_tiles
from i2x.stages.context import open_context

from fixtures_compare import pair  # noqa: F401  (pytest fixture)
from fixtures_pipeline import HOSTILE_NAMES, tiny_report, tiny_run  # noqa: F401  (pytest fixtures)
from test_report import Page


# ---- the matching maths ---------------------------------------------------------------------------
def test_cell_overlap_is_the_jaccard_index_of_the_cells():
    a = np.array([[[0, 0], [1, 1]], [[0, 1], [1, 1]]])  # 2 samples, 2x2 grid; prototype 0 on 3 cells, 1 on 5
    b = np.array([[[1, 1], [0, 0]], [[1, 1], [0, 0]]])  # prototype 1 of B on the top rows, 0 on the bottom ones
    s = cell_overlap(a, b, 2, 2)
    # A0 = {s0 top-left, s0 top-right, s1 top-left}, B1 = both top rows (4 cells): 3 shared, union 4
    assert s[0, 1] == pytest.approx(3 / 4)
    assert s[0, 0] == 0.0
    assert s[1, 0] == pytest.approx(4 / 5)  # A1 (5 cells) holds all 4 cells of B0
    assert s[1, 1] == pytest.approx(1 / 8)


def test_match_recovers_a_permutation_and_leaves_extras_unpaired():
    rng = np.random.default_rng(0)
    perm = rng.permutation(6)
    assign = rng.integers(0, 6, size=(30, 4, 4))
    s = cell_overlap(assign, perm[assign], 6, 6)
    pairs = match(s)
    assert {(i, j) for i, j, _ in pairs} == {(i, int(perm[i])) for i in range(6)}
    assert all(v == pytest.approx(1.0) for _, _, v in pairs)
    wide = np.array([[0.1, 0.9, 0.2], [0.8, 0.7, 0.1]])  # 2 x 3: the best total is (0, 1) + (1, 0)
    assert [(i, j) for i, j, _ in match(wide)] == [(0, 1), (1, 0)]
    c = cosine(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[2.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(c, [[1.0, 2 ** -0.5], [0.0, 0.0]])


def test_strip_scale_keeps_a_weak_map_weak():
    strong = np.zeros((4, 4))
    strong[1, 1] = 1.0
    maps = np.stack([strong * 0.01, strong])[:, None]  # [T=2, B=1, 4, 4]: the first frame 100x weaker
    own, shared = map_tiles(maps, size=8), map_tiles(maps, size=8, shared=True)
    hot = jet(np.array(1.0))
    assert (own[0, 0] == hot).all(axis=-1).any() and (own[1, 0] == hot).all(axis=-1).any()  # both look as hot
    assert not (shared[0, 0] == hot).all(axis=-1).any() and (shared[1, 0] == hot).all(axis=-1).any()
    assert (map_tiles(np.full((1, 1, 4, 4), np.nan)) == 200).all()  # a diverged frame is grey


# ---- the comparison page -----------------------------------------------------------------------------
def test_prototypes_are_paired_with_their_twins(pair):
    _, _, perm, page = pair
    text = page.read_text(encoding="utf-8")
    section = text[text.index('<section id="prototypes"'):]
    rows = re.findall(r'<div class="pair"><div class="card" id="A-prototype-(\d+)".*?'
                      r'<div class="sim">([0-9.]+)</div><div class="card" id="B-prototype-(\d+)"', section, re.S)
    assert len(rows) == len(perm)
    assert {(int(a), int(b)) for a, _, b in rows} == {(i, int(perm[i])) for i in range(len(perm))}
    assert all(float(s) == pytest.approx(1.0) for _, s, _ in rows)
    # the centroids are in one feature space (same layer): their cosine is shown and is 1 for every pair
    assert "centroid cosine" in section and "Centroids are not compared" not in text


def test_shared_samples_agree_fully_with_a_twin(pair):
    a, _, _, page = pair
    text = page.read_text(encoding="utf-8")
    n = len(Store.open(a).read("labels"))
    assert f"<p>{n} shared samples.</p>" in text
    shared = text[text.index('<section id="shared"'):]
    shared = shared[:shared.index("</section>")]
    cells = re.findall(r"<td>(\d+)</td>", shared[:shared.index("<h3>Per class</h3>")])
    assert int(cells[1]) == 0 and int(cells[2]) == 0  # nobody is right in one run and wrong in the other
    assert "Where they disagree" not in shared
    per_class = shared[shared.index("<h3>Per class</h3>"):]
    ious = [float(v) for v in re.findall(r"<td>([01](?:\.\d+)?)</td><td>[-0-9.]+</td></tr>", per_class)]
    assert ious and all(v == pytest.approx(1.0) for v in ious)  # the same maps


def test_compare_page_is_escaped_offline_linked_and_pathless(pair, tmp_path):
    a, b, _, page = pair
    text = page.read_text(encoding="utf-8")
    parsed = Page(text)
    assert "<b>bold</b>" not in text and html.escape("<b>bold</b>") in text
    specs = json.loads(parsed.scripts["i2x-specs"])  # the run names survive exactly inside the chart data
    points = next(v for v in specs["chart-accuracy"]["datasets"].values() if v and "run" in v[0])
    assert {p["run"] for p in points} == {"A: <b>bold</b>", "B: plain & simple"}
    assert "<" not in parsed.scripts["i2x-specs"]
    for name in HOSTILE_NAMES[:3]:
        assert name not in text
    ids = parsed.ids()
    targets = [v["href"][1:] for t, v in parsed.tags if t == "a" and (v.get("href") or "").startswith("#")]
    assert any(t.startswith("A-prototype-") for t in targets) and any(t.startswith("B-prototype-") for t in targets)
    assert not [t for t in targets if t not in ids]
    for tag, attrs in parsed.tags:
        for key in ("src", "href"):
            assert not (attrs.get(key) or "").startswith(("http:", "https:", "//")), (tag, attrs)
    for path in (a.parent, a.parent.resolve(), b.parent, Path.home()):
        assert str(path) not in text
    assert page.stat().st_size < 5_000_000


def test_compare_cli_and_its_errors(pair, tmp_path, capsys):
    a, b, perm, _ = pair
    out = tmp_path / "c.html"
    assert main(["compare", str(a), str(b), "--out", str(out), "--match", "centroid"]) == 0
    assert f"comparison: {out}" in capsys.readouterr().out
    assert "cosine similarity of the centroids" in out.read_text(encoding="utf-8")
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "c.json")]) == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(UserError, match="--names"):
        api.compare(a, b, out=str(out), names=("only-one",))


# ---- out-of-date marks -------------------------------------------------------------------------------
def test_a_study_run_after_the_report_marks_its_section_and_report_clears_it(tiny_run, tmp_path, capsys):
    out = tmp_path / "an"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("report*", "drift.json"))
    api.report(out, progress=False, pngs=False)
    assert stale_sections(out) == {} and mark_out_of_date(out) == {}
    assert main(["compare", str(tiny_run), str(out), "--out", str(tmp_path / "c.html")]) == 0  # not a study: no mark
    assert 'class="stale-banner"' not in (out / "report.html").read_text(encoding="utf-8")
    assert main(["drift", str(out)]) == 0  # the study writes drift.json after the report; the CLI marks the page
    assert f"out of date (drift); rebuild it with: i2x report {out}" in capsys.readouterr().out
    assert stale_sections(out) == {"drift": ["drift.json"]}
    mark_out_of_date(out)  # marking again leaves one banner and one note
    text = (out / "report.html").read_text(encoding="utf-8")
    assert text.count('class="stale-banner"') == 1 and text.count("stale-note") == 1
    assert '<section id="drift" class="stale">' in text and f"<code>i2x report {out.name}</code>" in text
    assert '<section id="faithfulness">' in text  # untouched
    api.report(out, progress=False, pngs=False)
    assert stale_sections(out) == {} and 'class="stale-banner"' not in (out / "report.html").read_text(encoding="utf-8")
    # a study that adds its entry to the summary marks the sections that read that entry only
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "reliance": {"verdict": "v", "shortcut_found": False}}))
    stale = stale_sections(out)
    assert stale["verdict"] == ["summary.json"] and not {"prototypes", "films", "classes", "dynamics"} & set(stale)
    # a re-analysis (new timings, new store arrays) changes what every section shows
    (out / "summary.json").write_text(json.dumps({**summary, "timings": {"extract": 1.0}}))
    stale = stale_sections(out)
    assert set(stale) == set(Page((out / "report.html").read_text(encoding="utf-8")).ids()) & set(stale) and \
        {"verdict", "overview", "prototypes", "classes", "dynamics", "uncertain", "films", "faithfulness"} <= set(stale)


# ---- film strips -------------------------------------------------------------------------------------
def test_film_strips_show_every_method_and_the_answer_on_errors(tiny_report):
    text = tiny_report.read_text(encoding="utf-8")
    films = text[text.index('<section id="films"'):]
    films = films[:films.index("</section>")]
    store = Store.open(tiny_report.parent)
    counts = {m: films.count(f'<img data-method="{m}" data-scale="frame"') for m in store.methods}
    assert len(counts) == 3 and len(set(counts.values())) == 1 and counts["gradcam"] > 0
    assert all(films.count(f'<img data-method="{m}" data-scale="strip"') == counts[m] for m in counts)
    options = re.findall(r'<option value="(\w+)">', films[:films.index("</select>")])
    assert options[0] == json.loads((tiny_report.parent / "summary.json").read_text())["method"]
    assert set(options) == set(store.methods)
    answered = re.findall(r'<tr><td class="who">evidence for its answer <a class="ref" href="#class-(\d+)">', films)
    assert answered and "unavailable" not in films


def test_the_answer_strip_explains_the_predicted_class(tiny_report):
    """The last frame of each answer strip: its peak is the peak of a direct GradCAM of the predicted class."""
    text = tiny_report.read_text(encoding="utf-8")
    films = text[text.index('<section id="films"'):]
    films = films[:films.index("</section>")]
    store = Store.open(tiny_report.parent)
    index = store.read("sample_index")
    rows_html = re.findall(r"<tr>(.*?)</tr>", films[films.index("<tbody>"):], re.S)
    peaks = {}
    for before, row in zip(rows_html, rows_html[1:]):
        if "evidence for its answer" in row:
            sample = int(re.search(r"data set index (\d+)", before).group(1))
            peaks[sample] = re.findall(r'<div class="cap" data-method="gradcam">peak ([0-9.e+-]+)</div>', row)[-1]
    assert peaks
    ctx = open_context(store, device="cpu")
    rows = np.array([int(np.flatnonzero(index == s)[0]) for s in peaks])
    x = torch.stack([ctx.dataset[int(i)][0] for i in rows])
    with Attributor(ctx.model, store.attrs["layer"], get_methods(["gradcam"])) as attributor:
        out = attributor.attribute(x, "predicted")
    assert (out.logits.argmax(dim=1).numpy() != store.read("labels")[rows]).all()
    direct = out.cams["gradcam"].detach().numpy().max(axis=(1, 2))
    assert [f"{v:.2g}" for v in direct] == list(peaks.values())


def test_without_the_checkpoints_the_answer_strips_say_why(tiny_run, tmp_path):
    """An analysis folder shared without its checkpoints: the answer maps computed by the film stage travel with it;
    a folder whose film was never prepared keeps the stored strips and explains why the answer strips are missing."""
    out = tmp_path / "an"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("report*"))
    store = Store.open(out, mode="a")
    store.root.attrs["config"] = {**store.config, "checkpoints": str(tmp_path / "gone")}
    text = api.report(out, progress=False, pngs=False).read_text(encoding="utf-8")
    assert "evidence for its answer" in text  # stored in film/ when the run's report was first built
    store.clear_group("film")
    del store.root.attrs["film"]
    text = api.report(out, progress=False, pngs=False).read_text(encoding="utf-8")
    films = text[text.index('<section id="films"'):]
    films = films[:films.index("</section>")]
    assert "Maps for the class the model answered are unavailable" in films and "gone" in films
    assert "evidence for its answer" not in films and films.count('<td class="who">') > 0
    assert str(tmp_path) not in text