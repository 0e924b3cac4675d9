"""The HTML report: structure, embedded charts and pictures, escaping, and the picture helpers on analytic cases.

The pipeline fixture (tests/fixtures_pipeline.py) names classes with hostile HTML, so every page
test is also an escaping test.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from pathlib import Path
from html.parser import HTMLParser

import altair as alt
import numpy as np
import pytest
import torch
from PIL import Image

from i2x.reporting import build as report_build
from i2x.reporting import charts
from fixtures_pipeline import HOSTILE_NAMES, tiny_report, tiny_run  # noqa: F401  (pytest fixtures)
from i2x.attribution import display_maps
from i2x.reporting import Section, build_report
from i2x.reporting.images import HIGHLIGHT, jet, overlays, prototype_patches, to_rgb
from i2x.reporting.inputs import ReportInputs
from i2x.reporting.page import script_json, scrub_paths, shown_path
from i2x.reporting.sections.common import _groups_fact
from i2x.reporting.sections.uncertain import uncertain
from i2x.reporting.sections.verdict import verdict_section
from i2x.io.store import Store


class Page(HTMLParser):
    """Collects what the tests look at: ids, every tag's attributes, script bodies, visible text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: dict[str, str] = {}
        self._script: str | None = None
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs).get("id") or f"anon-{len(self.scripts)}"
            self.scripts[self._script] = ""

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self.scripts[self._script] += data
        else:
            self.text.append(data)

    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.tags if a.get("id")}


def decode_data_uri(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    image.load()
    return image


def specs_of(page: Page) -> dict:
    return json.loads(page.scripts["i2x-specs"])


# ---- the page --------------------------------------------------------------------------------
def test_page_has_every_section_chart_and_picture(tiny_report):
    text = tiny_report.read_text(encoding="utf-8")
    page = Page(text)
    ids = page.ids()
    for section in ("overview", "prototypes", "classes", "dynamics", "uncertain", "films"):
        assert section in ids
        assert f'href="#{section}"' in text  # in the table of contents
    specs = specs_of(page)
    chart_divs = {a["id"] for t, a in page.tags if t == "div" and "chart" in (a.get("class") or "").split()}
    assert chart_divs == set(specs) and {"chart-accuracy", "chart-confusion", "chart-beta", "chart-groups",
                                         "chart-cartography", "chart-class-beta"} <= chart_divs
    summary = json.loads((tiny_report.parent / "summary.json").read_text())
    assert {f"chart-uncertain-{u['prototype']}" for u in summary["uncertain"][:8]} <= chart_divs
    for spec in specs.values():  # the report skips altair's schema check for speed: this is where it runs
        assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
        alt.Chart.from_dict(spec, validate=True)
    # the β slider: one range-bound param over the steps, opening on the step with the largest |β|
    beta = specs["chart-beta"]
    (param,) = [p for p in beta["params"] if p["name"] == "step"]
    assert param["bind"]["input"] == "range" and param["bind"]["max"] == len(summary["steps"]) - 1
    stored_beta = Store.open(tiny_report.parent).read("analysis/beta")
    assert param["value"] == int(np.abs(stored_beta).max(axis=(1, 2)).argmax())
    # the β values in the heatmap's data are the store's β
    rows = next(v for v in beta["datasets"].values() if v and "beta" in v[0])
    stored = Store.open(tiny_report.parent).read("analysis/beta")
    got = np.zeros_like(stored)
    for row in rows:
        got[row["s"], row["prototype"], HOSTILE_NAMES.index(row["class"])] = row["beta"]
    np.testing.assert_allclose(got, stored, atol=1e-5)  # rounded to 5 decimals in the page
    # pictures: every image decodes; one card per prototype with its patches
    images = [a["src"] for t, a in page.tags if t == "img"]
    assert len(images) > summary["k"]
    for uri in images:
        assert decode_data_uri(uri).size[0] > 0
    cards = [a["id"] for t, a in page.tags if t == "div" and (a.get("id") or "").startswith("prototype-")]
    assert cards == [f"prototype-{k}" for k in range(summary["k"])]
    # PNG exports and the link to the summary
    for name in ("accuracy_loss", "confusion", "beta_heatmap", "groups", "cartography", "class_structure"):
        png = tiny_report.parent / "report" / f"{name}.png"
        assert Image.open(png).size[0] > 100
        assert f'href="report/{name}.png"' in text
    assert 'href="summary.json"' in text


def test_page_is_offline_and_bounded(tiny_report):
    text = tiny_report.read_text(encoding="utf-8")
    page = Page(text)
    for tag, attrs in page.tags:
        if tag in ("script", "link", "iframe", "object", "embed", "source"):
            assert not attrs.get("src") and not (tag == "link" and attrs.get("href")), (tag, attrs)
        for key in ("src", "href", "action", "data"):
            value = attrs.get(key) or ""
            assert not value.startswith(("http:", "https:", "//")), (tag, attrs)
    assert "default-src 'none'" in text  # the CSP forbids any fetch as a second line of defence
    size = tiny_report.stat().st_size
    assert 800_000 < size < 10_000_000  # the inline Vega bundle is ~0.9 MB


def test_hostile_class_names_stay_text(tiny_report):
    text = tiny_report.read_text(encoding="utf-8")
    for name in HOSTILE_NAMES[:3]:
        assert name not in text
        assert html.escape(name, quote=True) in text  # shown, as text
    page = Page(text)
    assert not [a for t, a in page.tags if t == "img" and a.get("src") == "x"]
    # the only scripts are ours: the three JSON blocks (specs, embed options, inputs read), the Vega bundle and
    # the page's code
    assert len(page.scripts) == 5
    # inside the chart specs the names survive exactly (escaped as \u003c..., decoded by JSON.parse)
    raw = page.scripts["i2x-specs"]
    assert "<" not in raw and ">" not in raw and "&" not in raw
    dropdown = [p for p in specs_of(page)["chart-class-beta"]["params"] if p["name"] == "cls"][0]
    assert dropdown["bind"]["options"] == HOSTILE_NAMES


def test_script_json_cannot_close_the_script():
    value = {"a": "</script><script>alert(1)</script>", "b": "x & y > z", "c": "\u2028"}
    text = script_json(value)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == value


# ---- what the sections compute -----------------------------------------------------------------
def test_prototype_patches_are_the_strongest_cells(tiny_run):
    """Cross-check the vectorised ranking against a plain loop over samples and prototypes."""
    r = ReportInputs.open(tiny_run)
    patches = r.prototype_patches
    store = Store.open(tiny_run)
    assign = store.read("analysis/assign")
    final = int(np.flatnonzero(store.read("finite"))[-1])
    cam = store.read(f"cam/{r.method}")[final]
    k = int(r.summary["k"])
    for proto in range(k):
        best = []
        for n in range(assign.shape[0]):
            cells = assign[n] == proto
            if cells.any():
                best.append((-float(cam[n][cells].max()), n))
        best.sort()
        expected = best[: r.patches_per(k)]
        got = patches[proto]
        assert [p.row for p in got] == [n for _, n in expected]
        np.testing.assert_allclose([p.cam for p in got], [-v for v, _ in expected], rtol=1e-6)
        for p in got:
            assert p.label == store.read("labels")[p.row] and p.sample == store.read("sample_index")[p.row]
            assert decode_data_uri(p.uri).size == (64, 64)


def test_no_uncertain_prototype_is_said_plainly(tiny_run):
    r = ReportInputs.open(tiny_run)
    r.summary["uncertain"] = []
    section = uncertain(r)
    assert "No uncertain prototype was found" in section.body and "--noise-quantile" in section.body
    assert not r.charts.specs


def test_uncertain_section_shows_flagged_versus_expected_and_marks_noise(tiny_run):
    r = ReportInputs.open(tiny_run)
    c = r.summary["uncertainty"]
    body = uncertain(r).body
    e = c["expected_flagged"]
    assert f"{c['flagged']} of {len(r.summary['prototypes'])} prototypes flagged" in body
    assert f"chance alone flags {e['mean']:.3g} ± {e['sd']:.2g}" in body
    shown = r.summary["uncertain"][:8]
    assert body.count(">not significant<") == sum(not u["significant"] for u in shown) > 0
    assert body.count(">significant<") == sum(u["significant"] for u in shown)
    for u in shown:
        assert f"{u['p']:.3g} / {u['q']:.3g}" in body
    band = [row for rows in r.charts.specs[f"chart-uncertain-{shown[0]['prototype']}"]["datasets"].values() for row in rows
            if "low" in row]
    assert band and all(row["low"] <= row["beta"] <= row["high"] for row in band)


def test_a_rebuild_redraws_only_the_charts_that_changed(tiny_run, tmp_path, monkeypatch):
    import vl_convert

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    build_report(out, progress=False)
    first = {p.name: p.read_bytes() for p in (out / "report").glob("*.png")}
    drawn = []
    real = vl_convert.vegalite_to_png
    monkeypatch.setattr(vl_convert, "vegalite_to_png", lambda spec, **kw: drawn.append(spec) or real(spec, **kw))
    build_report(out, progress=False)
    assert drawn == [] and {p.name: p.read_bytes() for p in (out / "report").glob("*.png")} == first
    summary = json.loads((out / "summary.json").read_text())
    summary["accuracy"][-1] = 0.5 * summary["accuracy"][-1]              # the accuracy chart's data change
    (out / "summary.json").write_text(json.dumps(summary))
    build_report(out, progress=False)
    assert len(drawn) == 1
    assert (out / "report" / "accuracy_loss.png").read_bytes() != first["accuracy_loss.png"]


def test_optional_section_appears_only_with_its_file(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "an"
    shutil.copytree(tiny_run, out)

    def extra(r: ReportInputs) -> Section | None:
        found = r.optional_json("extra.json")
        return None if found is None else Section("extra", "Extra", "An added section.", f"<p>{found['n']}</p>")

    monkeypatch.setattr(report_build, "SECTIONS", [*report_build.SECTIONS[:2], extra])
    page = Page(build_report(out, progress=False, pngs=False).read_text(encoding="utf-8"))
    assert "overview" in page.ids() and "extra" not in page.ids()
    (out / "extra.json").write_text(json.dumps({"n": 7}))
    page = Page(build_report(out, progress=False, pngs=False).read_text(encoding="utf-8"))
    assert "extra" in page.ids() and "7" in page.text


def test_report_without_the_input_images_still_builds(tiny_run, tmp_path):
    out = tmp_path / "an"
    shutil.copytree(tiny_run, out)
    store = Store.open(out, mode="a")
    store.root.attrs["config"] = {**store.config, "data": f"npz:{tmp_path / 'moved.npz'}"}
    text = build_report(out, progress=False, pngs=False).read_text(encoding="utf-8")
    page = Page(text)
    assert "Input images unavailable" in text and "moved.npz" in text
    assert {"overview", "prototypes", "dynamics", "films"} <= page.ids()
    assert not [a for t, a in page.tags if t == "img"]  # no patches, no film strips, but every chart


def test_diverged_checkpoint_is_shown_as_such(tiny_run, tmp_path):
    """A checkpoint whose weights held NaN: extraction stores NaN maps and probabilities and marks it not finite."""
    out = tmp_path / "an"
    shutil.copytree(tiny_run, out)
    store = Store.open(out, mode="a")
    cam = store.cam("gradcam")
    cam[1] = np.nan
    store.array("probs")[1] = np.nan
    store.array("finite")[1] = 0
    summary = json.loads((out / "summary.json").read_text())
    name = store.checkpoints[1]["name"]
    summary.update(diverged=[name], accuracy=[a if i != 1 else None for i, a in enumerate(summary["accuracy"])])
    (out / "summary.json").write_text(json.dumps(summary))
    text = build_report(out, progress=False, pngs=False).read_text(encoding="utf-8")
    assert f"{name}: its weights hold NaN/Inf" in text
    films = text[text.index('<section id="films"'):]
    rows = films.count('<td class="who">')
    assert rows > 0 and films.count('<div class="cap wrong">diverged</div>') == rows
    accuracy = specs_of(Page(text))["chart-accuracy"]
    points = next(v for v in accuracy["datasets"].values() if v and "accuracy" in v[0])
    assert name not in {p["checkpoint"] for p in points}


def test_verdict_comes_first_and_links_to_its_evidence(tiny_report):
    text = tiny_report.read_text(encoding="utf-8")
    page = Page(text)
    sections = [a["id"] for t, a in page.tags if t == "section"]
    assert sections[:2] == ["verdict", "overview"]
    summary = json.loads((tiny_report.parent / "summary.json").read_text())
    verdict = text[text.index('<section id="verdict"'):text.index('<section id="overview"')]
    accuracy = [a for a in summary["accuracy"] if a is not None]
    assert f"{accuracy[0]:.1%}" in verdict and f"{accuracy[-1]:.1%}" in verdict
    assert html.escape(summary["reliance"]["verdict"]) in verdict
    u = summary["uncertain"][0]
    assert f'href="#prototype-{u["prototype"]}"' in verdict
    assert f'href="#class-{u["classes"][0]}"' in verdict
    c = summary["uncertainty"]
    assert html.escape(c["sentence"]) in verdict and f"{c['flagged']} of {summary['k']} prototypes flagged (" in verdict
    # the settings table moved below the accuracy and confusion charts
    overview = text[text.index('<section id="overview"'):]
    assert overview.index("chart-confusion") < overview.index("<h3>Settings</h3>")


def test_verdict_without_reliance_or_significance_says_what_is_missing(tiny_run):
    r = ReportInputs.open(tiny_run)
    r.summary = {k: v for k, v in r.summary.items() if k not in ("reliance", "uncertainty")}
    body = verdict_section(r).body
    assert f"<code>i2x reliance {tiny_run.name}</code>" in body and "not run" in body
    n = sum(not u.get("below_noise_floor") for u in r.summary["uncertain"])
    assert f"{n} of {r.summary['k']} prototypes flagged (significance not tested)" in body
    assert "chance alone" not in body
    r.summary["uncertain"] = []
    assert "no prototype flipped" in verdict_section(r).body


def test_every_internal_link_lands_on_an_anchor(tiny_report):
    page = Page(tiny_report.read_text(encoding="utf-8"))
    ids = page.ids()
    targets = [a["href"][1:] for t, a in page.tags if t == "a" and (a.get("href") or "").startswith("#")]
    assert {f"class-{c}" for c in range(len(HOSTILE_NAMES))} <= ids
    assert not [t for t in targets if t not in ids]
    prototype_links = {t for t in targets if t.startswith("prototype-")}
    assert len(prototype_links) >= 3  # verdict, class structure and uncertain cards link their prototypes
    text = tiny_report.read_text(encoding="utf-8")
    for section in ("overview", "classes", "uncertain", "films"):  # confused pairs, class table, cards, strips
        body = text[text.index(f'<section id="{section}"'):]
        assert 'href="#class-' in body[:body.index("</section>")]


def test_no_absolute_path_of_the_machine_in_the_page(tiny_report):
    text = tiny_report.read_text(encoding="utf-8")
    run_root = tiny_report.parent.parent  # holds the data file, the checkpoints and the analysis dir
    for path in (run_root, run_root.resolve(), Path.home()):
        assert str(path) not in text
    assert "npz:d.npz" in text  # the data named by its file name


def test_slider_opens_on_the_strongest_step_and_the_scale_says_when_capped():
    beta = np.zeros((4, 3, 2))
    beta[2, 1, 0] = -2.5  # one extreme cell, at step 2; step 0 is all zero
    beta[1] = 0.1
    beta[3] = 0.2
    assert charts.strongest_step(beta) == 2
    limit, capped = charts.beta_limit(beta)
    assert capped and limit < 2.5
    spec = charts.to_spec(charts.beta_slider(beta, ["a", "b"], ["s0", "s1", "s2", "s3"], charts.strongest_step(beta)))
    heat = spec["vconcat"][1]["encoding"]["color"]
    assert heat["title"] == f"β (capped at ±{limit:.3g})" and heat["scale"]["domain"] == [-limit, limit]
    even = np.linspace(-1, 1, 24).reshape(2, 3, 4)
    assert charts.beta_limit(np.sign(even))[1] is False  # nothing beyond the domain: not said to be capped


def test_confusion_has_a_legend_and_palettes_are_colour_blind_safe(tiny_report):
    specs = specs_of(Page(tiny_report.read_text(encoding="utf-8")))
    confusion = json.dumps(specs["chart-confusion"])
    assert '"title": "samples (log scale)"' in confusion and "labelExpr" in confusion
    schemes = set()
    for spec in specs.values():
        text = json.dumps(spec)
        schemes |= set(re.findall(r'"scheme": "(\w+)"', text))
    assert schemes and not schemes & {"rainbow", "sinebow", "turbo", "jet", "redyellowgreen", "redgreen",
                                      "spectral", "redblue"}
    assert '"scheme": "viridis"' in json.dumps(specs["chart-cartography"])
    (pick,) = [p for p in specs["chart-cartography"]["params"] if p["name"] == "carto_class"]
    assert pick["bind"]["options"] == ["", *HOSTILE_NAMES] and pick["bind"]["labels"][0] == "all classes"
    role = specs["chart-class-beta"]["encoding"]["strokeDash"]["legend"]
    assert role["symbolType"] == "stroke"  # the legend draws the solid and the dashed line, not two dots


def test_every_study_appears_and_one_not_run_says_how_to_fill_it(tiny_report):
    text = tiny_report.read_text(encoding="utf-8")
    page = Page(text)
    out = tiny_report.parent
    for study, file in (("reliance", "reliance.json"), ("faithfulness", "faithfulness.json"), ("drift", "drift.json"),
                        ("evidence", "evidence.json"), ("benchmark", "benchmark.json")):
        assert study in page.ids() and f'href="#{study}"' in text  # in the table of contents either way
        section = text[text.index(f'<section id="{study}"'):]
        section = section[:section.index("</section>")]
        if (out / file).exists():
            assert "Not run" not in section
        else:
            assert ": not run</h2>" in section and f"<code>i2x {study} {out.name}</code>" in section
    assert not (out / "faithfulness.json").exists()  # so the fixture shows at least one section not run


def test_paths_are_shown_relative_or_by_name(tmp_path):
    base = tmp_path / "an"
    assert shown_path(base / "store.zarr", base) == "store.zarr"
    assert shown_path(f"npz:{tmp_path / 'd.npz'}", base) == "npz:d.npz"
    assert shown_path(f"{tmp_path / 'model.py'}:Net", base) == "model.py:Net"
    assert shown_path("digits", base) == "digits"
    text = scrub_paths(f"could not open {tmp_path / 'x' / 'y.npz'}, see {base / 'a' / 'b.json'}; 1/2", base)
    assert text == "could not open y.npz, see a/b.json; 1/2"


# ---- the picture helpers on analytic cases --------------------------------------------------------
def test_jet_colour_map():
    lut = jet(np.array([0.0, 0.25, 0.5, 0.75, 1.0]))
    np.testing.assert_array_equal(lut, [[0, 0, 128], [0, 128, 255], [128, 255, 128], [255, 128, 0], [128, 0, 0]])
    matplotlib = pytest.importorskip("matplotlib")
    x = np.linspace(0, 1, 101)
    reference = (matplotlib.colormaps["jet"](x)[:, :3] * 255).astype(int)
    assert np.abs(jet(x).astype(int) - reference).max() <= 40  # the same map, piecewise-linear approximation


def test_overlay_puts_the_hot_colour_on_the_hot_cell():
    images = np.zeros((1, 1, 32, 32), dtype=np.float32)
    raw = np.zeros((2, 1, 8, 8), dtype=np.float32)
    raw[0, 0, 6, 1] = 3.0  # hot cell at row 6, column 1 -> pixels 24..27 x 4..7 at 32 px
    raw[1] = np.nan  # a diverged checkpoint
    out = overlays(images, raw, size=32)
    assert out.shape == (2, 1, 32, 32, 3)
    red = out[0, 0, :, :, 0].astype(int) - out[0, 0, :, :, 2].astype(int)
    y, x = np.unravel_index(np.argmax(red), red.shape)
    assert 24 <= y <= 27 and 4 <= x <= 7
    expected = (0.5 * jet(display_maps(torch.from_numpy(raw[0]), (32, 32)).numpy()[0]) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[0, 0], expected)  # black image: half the colour map
    assert (out[1] == 200).all()


def test_patch_crop_geometry_and_outline():
    rng = np.random.default_rng(0)
    images = rng.random((3, 1, 32, 32)).astype(np.float32)
    cells = np.array([[0, 0], [4, 5], [7, 7]])
    # 3 cells of 4 px = 12 px crops, shifted to stay inside the image, enlarged 6x to 72 px
    crops = prototype_patches(images, cells, (8, 8), context=3, min_context_px=0, min_size=64)
    assert crops.shape == (3, 72, 72, 3)
    rgb = to_rgb(images)
    for i, (top, left) in enumerate([(0, 0), (12, 16), (20, 20)]):
        window = rgb[i, top:top + 12, left:left + 12].repeat(6, axis=0).repeat(6, axis=1)
        outline = (crops[i] == HIGHLIGHT).all(axis=-1) & ~(window == HIGHLIGHT).all(axis=-1)
        ys, xs = np.nonzero(outline)
        cy, cx = cells[i] * 4 - [top, left]  # the cell's corner inside the crop, in input pixels
        assert (ys.min(), ys.max(), xs.min(), xs.max()) == (cy * 6, cy * 6 + 23, cx * 6, cx * 6 + 23)
        np.testing.assert_array_equal(crops[i][~outline], window[~outline])
    # small inputs show the whole image (the default asks for >= 48 px of context)
    whole = prototype_patches(images, cells, (8, 8))
    assert whole.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(whole[0, 40:, 40:], rgb[0, 20:, 20:].repeat(2, axis=0).repeat(2, axis=1))
    # large inputs are cropped to 3 cells and shrunk to 96 px; the outline is the cell, scaled
    for side in (224, 448):  # 96 px crops kept as they are; 192 px crops shrunk by half
        big = np.full((1, 3, side, side), 0.5, dtype=np.float32)
        out = prototype_patches(big, np.array([[3, 3]]), (7, 7))
        assert out.shape == (1, 96, 96, 3)
        ys, xs = np.nonzero((out[0] == HIGHLIGHT).all(axis=-1))
        assert (ys.min(), ys.max(), xs.min(), xs.max()) == (32, 63, 32, 63)  # middle third of the 3-cell crop
        assert (out[0, 0, 0] == 128).all()


def test_overview_says_when_hdbscan_was_fitted_on_a_sample():
    full = {"n_samples": 500, "groups": {"min_cluster_size": 10, "min_samples": 10, "fit_samples": 500,
                                         "fit_min_cluster_size": 10}}
    assert "approximate_predict" not in _groups_fact(full)
    sampled = {"n_samples": 60000, "groups": {"min_cluster_size": 600, "min_samples": 50, "fit_samples": 20000,
                                              "fit_min_cluster_size": 200}}
    text = _groups_fact(sampled)
    assert "20,000 of the 60,000" in text and "min_cluster_size 200 there" in text and "approximate_predict" in text
