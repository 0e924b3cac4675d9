"""Open the report and the comparison page in headless Chromium with networking off, as a reader would, and check
they work.

Skipped when Debian's chromium / chromium-driver are not installed. Saves full-page screenshots to
test-artifacts/report.png and compare.png and prints each page's size and the time from navigation to all charts
rendered (measured, not asserted).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import browser
from fixtures_compare import _renumbered, pair  # noqa: F401  (pytest fixture)
from fixtures_pipeline import HOSTILE_NAMES, tiny_report, tiny_run  # noqa: F401  (pytest fixtures)
from i2x import api
from i2x.planted import synthetic

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

CHARTS_WITHOUT_DRAWING = """
return Array.from(document.querySelectorAll("div.chart"))
  .filter(d => !d.querySelector("svg, canvas")).map(d => d.id);
"""
BROKEN_IMAGES = """
return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
"""
HEATMAP = "document.querySelector('#chart-beta svg').outerHTML"
#: the drawn mask of the verdict's first picture, as the page shows it: [width, height, flat alpha > 0]
DRAWN_MASK = """
const m = document.querySelector('#verdict .suspect-shot img.mask');
const c = document.createElement('canvas');
c.width = m.naturalWidth; c.height = m.naturalHeight;
const g = c.getContext('2d'); g.drawImage(m, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data;
const on = [];
for (let i = 3; i < d.length; i += 4) { on.push(d[i] > 0 ? 1 : 0); }
return [c.width, c.height, on];
"""


@pytest.fixture
def driver(tmp_path):
    why = browser.missing()
    if why:
        pytest.skip(why)
    chrome = browser.open_offline(tmp_path / "profile")
    yield chrome
    chrome.quit()


def set_control(driver, selector: str, value) -> None:
    """Set a form control the way a user does and let Vega hear it."""
    driver.execute_script(
        "const el = document.querySelector(arguments[0]); el.value = arguments[1];"
        "el.dispatchEvent(new Event(el.tagName === 'SELECT' ? 'change' : 'input', {bubbles: true}));",
        selector, value)


def test_report_renders_offline_and_interactive(driver, tiny_report):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.get(tiny_report.as_uri())
    assert browser.wait_for(driver, "document.body && document.body.getAttribute('data-charts')") == "rendered"
    render_ms = driver.execute_script("return window.i2xRenderedMs")
    n_charts = len(json.loads(driver.execute_script("return document.getElementById('i2x-specs').textContent")))
    assert driver.execute_script("return document.querySelectorAll('div.chart').length") == n_charts
    assert driver.execute_script(CHARTS_WITHOUT_DRAWING) == []
    assert driver.execute_script("return document.images.length") > 0
    assert driver.execute_script(BROKEN_IMAGES) == []

    # the step slider redraws the β heatmap, and the label names the chosen checkpoint pair
    before = driver.execute_script("return " + HEATMAP)
    initial = int(driver.execute_script("return document.querySelector('#chart-beta input[type=range]').value"))
    target = 1 if initial == 0 else 0
    set_control(driver, "#chart-beta input[type=range]", target)
    browser.wait_for(driver, f"{HEATMAP} !== {json.dumps(before)}", timeout=10)
    label = driver.execute_script("return document.querySelector('#chart-beta svg').textContent")
    assert f"epoch_{target + 1}.pt → epoch_{target + 2}.pt" in label

    # the cartography's class filter keeps only that class's points
    points = "document.querySelectorAll('#chart-cartography g.mark-symbol path').length"
    everyone = driver.execute_script("return " + points)
    set_control(driver, "#chart-cartography select", HOSTILE_NAMES[0])
    one = browser.wait_for(driver, f"{points} < {everyone} && {points}", timeout=10)
    assert 0 < one < everyone

    # the class table sorts by a column when its header is clicked (numbers as numbers), and back
    recall = "Array.from(document.querySelectorAll('#classes table.sortable tbody tr')).map(r => r.cells[2].textContent)"
    header = driver.find_element(By.XPATH, "//section[@id='classes']//table[contains(@class,'sortable')]//th[3]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", header)
    header.click()
    up = [float(v) for v in driver.execute_script("return " + recall)]
    assert up == sorted(up) and len(up) == len(HOSTILE_NAMES)
    header.click()
    assert [float(v) for v in driver.execute_script("return " + recall)] == sorted(up, reverse=True)

    # a prototype mention in the verdict card links to its card: clicking scrolls the card into view
    link = driver.find_element(By.CSS_SELECTOR, "#verdict a.ref[href^='#prototype-']")
    card = link.get_attribute("href").split("#", 1)[1]
    driver.execute_script("window.scrollTo(0, 0)")
    link.click()
    browser.wait_for(driver, f"location.hash === '#{card}'", timeout=5)
    top = driver.execute_script(f"return document.getElementById('{card}').getBoundingClientRect().top")
    assert abs(top) < 5 and driver.execute_script("return window.scrollY") > 0

    # the class dropdown lists the hostile names as text, and switching class redraws the lines
    options = driver.execute_script(
        "return Array.from(document.querySelectorAll('#chart-class-beta select option')).map(o => o.textContent)")
    assert options == HOSTILE_NAMES
    lines = "document.querySelector('#chart-class-beta svg').outerHTML"
    before = driver.execute_script("return " + lines)
    set_control(driver, "#chart-class-beta select", HOSTILE_NAMES[3])
    browser.wait_for(driver, f"{lines} !== {json.dumps(before)}", timeout=10)

    # hovering a heatmap cell shows a tooltip; hostile names in it stay text
    cell = driver.find_elements(By.CSS_SELECTOR, "#chart-beta g.mark-rect path")[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    ActionChains(driver).move_to_element(cell).perform()
    tip = browser.wait_for(driver, "(document.getElementById('vg-tooltip-element') || {}).textContent", timeout=10)
    assert HOSTILE_NAMES[0] in tip  # the first cell is class 0: its name, shown as text

    # the film strips' method switch shows that method's frames only, and the scale switch its scale's
    visible = ("return Array.from(document.querySelectorAll('#films img[data-method]'))"
               ".filter(i => i.offsetParent !== null).map(i => i.dataset.method + '/' + i.dataset.scale)")
    shown = set(driver.execute_script(visible))
    assert len(shown) == 1 and shown.pop().endswith("/frame")
    set_control(driver, "#films select[data-attr=method]", "layercam")
    set_control(driver, "#films select[data-attr=scale]", "strip")
    shown = driver.execute_script(visible)
    assert shown and set(shown) == {"layercam/strip"}

    # the card filter: one class shows the cards of the prototypes that are shared, specialized or uncertain for it
    summary = json.loads((tiny_report.parent / "summary.json").read_text())

    def involved_in(c: int) -> set[int]:
        return {u["prototype"] for u in summary["uncertain"] if c in u["classes"]} | {
            p["id"] for p in summary["prototypes"] if c in p["shared_for"] + p["specialized_for"]}

    c = min((c for c in range(len(HOSTILE_NAMES)) if involved_in(c)), key=lambda c: len(involved_in(c)))
    involved = involved_in(c)
    assert len(involved) < summary["k"]  # so the filter hides some cards
    set_control(driver, "#prototypes .card-filter select.cls", str(c))
    cards = ("return Array.from(document.querySelectorAll('#prototypes .card')).filter(c => !c.hidden)"
             ".map(c => c.id)")
    assert set(driver.execute_script(cards)) == {f"prototype-{k}" for k in involved}
    count = driver.execute_script("return document.querySelector('#prototypes .card-filter .count').textContent")
    assert count == f"{len(involved)} of {summary['k']} shown"
    set_control(driver, "#prototypes .card-filter select.cls", "")

    # role and class together mean that role for that class: "shared + class c" shows only the cards shared for c,
    # not a card shared for another class that is uncertain for c
    for c in range(len(HOSTILE_NAMES)):
        shared = {p["id"] for p in summary["prototypes"] if c in p["shared_for"]}
        set_control(driver, "#prototypes .card-filter select.role", "shared")
        set_control(driver, "#prototypes .card-filter select.cls", str(c))
        assert set(driver.execute_script(cards)) == {f"prototype-{k}" for k in shared}
    set_control(driver, "#prototypes .card-filter select.role", "")
    set_control(driver, "#prototypes .card-filter select.cls", "")

    # no shortcut is said calmly: its chip is not in the warning colour, and the verdict is not an amber note
    verdict_chips = driver.execute_script(
        "return Array.from(document.querySelectorAll('#verdict .chip, #reliance-verdict .chip'))"
        ".map(c => [c.textContent, c.className])")
    shortcut_chips = [c for c in verdict_chips if "shortcut" in c[0]]
    assert shortcut_chips and all(c == ["no shortcut", "chip ok"] for c in shortcut_chips), verdict_chips
    assert driver.execute_script("return document.querySelectorAll('#reliance-verdict .note').length") == 0
    # both splits: the analysed one and the held-out one, each with its error pattern
    accuracy = driver.execute_script("return Array.from(document.querySelectorAll('#verdict .split-acc'))"
                                     ".map(e => e.textContent)")
    assert len(accuracy) == 2 and "split (analysed)" in accuracy[0] and "test split (held out)" in accuracy[1]

    # nothing injected ran or was created, and the console is clean
    assert driver.execute_script("return window.__dialogs") == []
    assert driver.execute_script("return document.querySelectorAll('img:not([src^=\"data:\"])').length") == 0
    assert browser.severe_logs(driver) == []

    shot = browser.full_screenshot(driver, ARTIFACTS / "report.png")
    assert shot.stat().st_size > 10_000
    print(f"\nreport {tiny_report.stat().st_size / 1e6:.2f} MB, {n_charts} charts rendered in {render_ms:.0f} ms")


def test_compare_page_renders_offline_and_interactive(driver, pair):
    from selenium.webdriver.common.by import By

    page = pair[3]
    driver.get(page.as_uri())
    assert browser.wait_for(driver, "document.body && document.body.getAttribute('data-charts')") == "rendered"
    render_ms = driver.execute_script("return window.i2xRenderedMs")
    assert driver.execute_script(BROKEN_IMAGES) == []
    assert driver.execute_script(CHARTS_WITHOUT_DRAWING) == [] and driver.execute_script(
        "return document.querySelectorAll('div.chart svg').length") == 1

    # a prototype mention in the suspect concepts links to its card in the paired galleries
    link = driver.find_element(By.CSS_SELECTOR, "#suspects a.ref[href^='#B-prototype-']")
    card = link.get_attribute("href").split("#", 1)[1]
    driver.execute_script("window.scrollTo(0, 0)")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
    link.click()
    browser.wait_for(driver, f"location.hash === '#{card}'", timeout=5)
    top = driver.execute_script(f"return document.getElementById('{card}').getBoundingClientRect().top")
    assert abs(top) < 5

    # the per-class table of the shared samples sorts by the number of samples, both ways
    counts = "Array.from(document.querySelectorAll('#shared table.sortable tbody tr')).map(r => r.cells[1].textContent)"
    header = driver.find_element(By.XPATH, "//section[@id='shared']//table[contains(@class,'sortable')]//th[2]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", header)
    header.click()
    up = [int(v) for v in driver.execute_script("return " + counts)]
    assert up == sorted(up) and len(up) == len(HOSTILE_NAMES)
    header.click()
    assert [int(v) for v in driver.execute_script("return " + counts)] == sorted(up, reverse=True)

    assert driver.execute_script("return window.__dialogs") == []
    assert browser.severe_logs(driver) == []
    shot = browser.full_screenshot(driver, ARTIFACTS / "compare.png")
    assert shot.stat().st_size > 10_000
    print(f"\ncompare page {page.stat().st_size / 1e6:.2f} MB, rendered in {render_ms:.0f} ms")


# ---- a planted marker run: the first screen a reviewer acts on ---------------------------------------------------
@pytest.fixture(scope="module")
def marker_pages(tmp_path_factory) -> tuple[Path, Path, dict]:
    """The planted marker run (two-class grey set, a bright L in the top-left corner of 90% of class "marked"; the
    model uses it), its report, and its comparison page against itself with the prototypes renumbered (B = the same
    model, so B uses A's shortcut): (report, comparison page, reliance.json)."""
    root = tmp_path_factory.mktemp("marker")
    spec = "planted:marker-corner-grey"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with synthetic.planted_seed(0):
            api.train(data=spec, out=root / "ck", epochs=4, seed=0, progress=False)
            api.run(checkpoints=str(root / "ck"), data=spec, out=root / "an", progress=False)  # reliance included
            k = json.loads((root / "an" / "summary.json").read_text())["k"]
            b = _renumbered(root / "an", root / "renumbered", np.random.default_rng(3).permutation(k))
            page = api.compare(root / "an", b, out=str(root / "compare.html"), names=("marker", "renumbered"))
    finally:
        torch.set_num_threads(threads)
    return root / "an" / "report.html", page, json.loads((root / "an" / "reliance.json").read_text())


@pytest.mark.slow
def test_marker_run_first_screen_shows_the_shortcut_where_for_which_class_and_what_next(driver, marker_pages):
    from selenium.webdriver.common.by import By

    report, _, result = marker_pages
    assert result["shortcut_found"], result["verdict"]   # precondition: the study finds the planted marker
    driver.get(report.as_uri())
    assert browser.wait_for(driver, "document.body && document.body.getAttribute('data-charts')") == "rendered"
    verdict = driver.find_element(By.ID, "verdict").text

    # the picture: enlarged images of the suspect with its mask drawn over them, on the first screen
    assert driver.execute_script("return document.querySelectorAll('#verdict .suspect-shot').length") >= 2
    top = driver.execute_script("return document.querySelector('#verdict .suspect-shot img.mask')"
                                ".getBoundingClientRect().bottom")
    assert top < driver.execute_script("return window.innerHeight")
    width, height, on = driver.execute_script(DRAWN_MASK)
    drawn = np.asarray(on, dtype=bool).reshape(height, width)
    scale = width // synthetic.SIZE
    assert width >= 4 * synthetic.SIZE and drawn.any()   # enlarged
    pixels = drawn.reshape(synthetic.SIZE, scale, synthetic.SIZE, scale).any(axis=(1, 3))   # back to input pixels
    marker = synthetic.marker_pixels("corner")
    near = np.zeros_like(marker)   # the marker and the pixel around it (a footprint's edge may blur by one)
    ys, xs = np.nonzero(marker)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near[np.clip(ys + dy, 0, synthetic.SIZE - 1), np.clip(xs + dx, 0, synthetic.SIZE - 1)] = True
    on_marker = (pixels & near).sum() / pixels.sum()
    assert on_marker > 0.5, f"only {on_marker:.0%} of the drawn mask lies on the marker"

    # where in words, the class by name, the causal numbers, the next command
    assert "top-left corner" in verdict
    assert "class marked" in verdict and "1: marked" in verdict and "--class-names" not in verdict
    assert "random patches of the same shape" in verdict and "shortcut gap" in verdict
    commands = driver.execute_script("return Array.from(document.querySelectorAll('#verdict code.next'))"
                                     ".map(c => c.textContent)")
    assert commands == [f"i2x finetune an --concept {result['suspect']} --fix augment",   # no revision yet: revise
                        f"i2x finetune an --concept {result['suspect']}"]                 # or curate
    # chip and text agree: "shortcut found" in both, in the warning colour
    chips = driver.execute_script("return Array.from(document.querySelectorAll('#verdict .chip.warn, "
                                  "#reliance-verdict .chip.warn')).map(c => c.textContent)")
    assert "shortcut found" in chips and not any("suspected" in c or c == "no shortcut" for c in chips)
    assert result["verdict"].startswith("Shortcut found")
    assert f"C{result['suspect']}" in verdict                         # concepts are C-ids, prototypes P-ids
    # both splits, with the held-out split's numbers from reliance.json
    held = result["held_out"]
    assert held["split"] == "test" and held["samples"] == synthetic.SAMPLES["test"]
    assert f"test split (held out): {held['accuracy']:.1%}" in verdict
    assert "errors are images of other classes that hold" in verdict
    assert driver.execute_script("return window.__dialogs") == []
    assert browser.severe_logs(driver) == []
    shot = browser.full_screenshot(driver, ARTIFACTS / "marker-report.png")
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_compare_page_answers_whether_b_uses_a_s_shortcut(driver, marker_pages):
    from selenium.webdriver.common.by import By

    _, page, result = marker_pages
    driver.get(page.as_uri())
    assert browser.wait_for(driver, "document.body && document.body.getAttribute('data-charts')") == "rendered"
    answer = driver.find_element(By.ID, "suspect-answer").text
    assert f"C{result['suspect']}" in answer and "marked" in answer
    assert "B responds to it" in answer and "Yes: B's answers move with A's suspect pixels" in answer  # the same model
    assert "are paired with B's" in answer
    # each suspect prototype is listed once
    rows = driver.execute_script("return Array.from(document.querySelectorAll('#suspects h3 + table tbody tr'))"
                                 ".map(r => r.cells[0].textContent)")
    listed = [r for r in rows if "suspect" in r]
    assert listed and len(listed) == len(set(listed))
    # "paired with" sorts by the prototype's number, not its text
    header = driver.find_element(By.XPATH, "(//section[@id='suspects']//table[contains(@class,'sortable')])[1]//th[3]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", header)
    header.click()
    partners = driver.execute_script(
        "return Array.from(document.querySelectorAll('#suspects table.sortable')[0].tBodies[0].rows)"
        ".map(r => r.cells[2].textContent)")
    ids = [int(t.split("P", 1)[1].split()[0]) for t in partners if "·P" in t]
    assert len(ids) > 1 and ids == sorted(ids)
    assert driver.execute_script("return window.__dialogs") == []
    assert browser.severe_logs(driver) == []
    shot = browser.full_screenshot(driver, ARTIFACTS / "marker-compare.png")
    assert shot.stat().st_size > 10_000
