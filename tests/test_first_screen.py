"""The report's first screen, piece by piece: the suspect's place in words, its mask as drawn, error patterns in
words, the class-name hint and the fine-tuning section (with revision rows). Fast: no model, no store."""

from __future__ import annotations

import numpy as np

from i2x.planted.synthetic import marker_pixels
from i2x.reporting.sections.finetune import finetune_section
from i2x.reporting.sections.verdict import _class_names, error_pattern
from i2x.reporting.suspect import mask_overlay, where_in_words


def test_where_in_words_names_the_corner_and_the_size():
    assert where_in_words(marker_pixels("corner")).startswith("top-left corner, about 10x10 px (36 px in rows 2-11, "
                                                              "columns 2-11 of the 28x28 input)")
    assert where_in_words(marker_pixels("centre")).startswith("centre, about 12x2 px")
    m = np.zeros((30, 30), bool)
    m[24:28, 25:29] = True
    assert where_in_words(m).startswith("bottom-right corner, about 4x4 px")
    m[:] = False
    m[1:3, 13:17] = True
    assert where_in_words(m).startswith("top centre, about 4x2 px")
    assert where_in_words(np.zeros((4, 4), bool)) == "nowhere (empty mask)"


def test_mask_overlay_is_clear_outside_the_mask_and_drawn_on_it():
    mask = marker_pixels("corner")
    over = mask_overlay(mask, 6)
    assert over.shape == (168, 168, 4)
    drawn = over[..., 3] > 0
    np.testing.assert_array_equal(drawn, mask.repeat(6, 0).repeat(6, 1))   # exactly the mask's pixels, enlarged
    assert (over[..., 3][drawn] == 255).any() and (over[..., 3][drawn] < 255).any()   # an outline and a fill


def test_confusion_chart_labels_its_zero_cells():
    from i2x.reporting.charts import confusion_heatmap

    def text_test(m: int) -> str:
        spec = confusion_heatmap(np.eye(m, dtype=int) * 5, [str(i) for i in range(m)], "t").to_dict()
        return next(layer["encoding"]["text"]["condition"]["test"] for layer in spec["layer"]
                    if "text" in layer["encoding"])

    assert text_test(2) == "true"                  # "0" is drawn: no sample went that way is a finding
    assert text_test(20) == "datum.count > 0"      # many classes: only the non-zero cells, or the chart is all zeros


def test_error_pattern_calls_out_one_direction():
    names = ["NORMAL", "PNEUMONIA"]
    assert error_pattern(np.array([[100, 163], [0, 300]]), names) == \
        "163 of 563 samples wrong: all 163 errors are NORMAL called PNEUMONIA"
    assert error_pattern(np.array([[100, 18], [2, 300]]), names) == \
        "20 of 420 samples wrong: one-directional, 18 of the 20 errors (90%) are NORMAL called PNEUMONIA"
    assert error_pattern(np.array([[100, 10], [10, 300]]), names).endswith("the most common error: 10 NORMAL called "
                                                                           "PNEUMONIA")
    assert error_pattern(np.array([[5, 0], [0, 5]]), names) == "no error in 10 samples"


class _Names:
    def __init__(self, names):
        self.names = names


def test_numbered_classes_get_the_class_names_hint():
    assert "--class-names" in _class_names(_Names(["0", "1"]))
    named = _class_names(_Names(["plain", "<b>marked</b>"]))
    assert "--class-names" not in named and "1: &lt;b&gt;marked&lt;/b&gt;" in named


def _stats(mean, std=0.01):
    return {"mean": mean, "std": std, "values": [mean]}


def _diff(mean, lo, hi):
    return {"mean": mean, "ci": [lo, hi], "wilcoxon_p": 0.0625}


class _Study:
    def __init__(self, result):
        self.result, self.asked = result, []

    def optional_json(self, relative):
        self.asked.append(relative)
        return self.result


def test_finetune_section_shows_intervals_the_shortcut_gap_and_revision_rows():
    result = {
        "settings": {"seeds": [0, 1, 2], "test_size": 400}, "pairs": [{"classes": [0, 1], "label": "a<->b"}],
        "excluded": {"count": 12, "train_size": 1200},
        "start": {"accuracy": 0.9, "confusions": {"a<->b": {"total": 40}}, "shortcut_gap": 0.7},
        "strategies": {"full-full": {"accuracy": _stats(0.91), "confusions": {"a<->b": _stats(36)},
                                     "shortcut_gap": _stats(0.6)},
                       "curated-full": {"accuracy": _stats(0.93), "confusions": {"a<->b": _stats(28)},
                                        "shortcut_gap": _stats(0.1)}},
        "paired_differences": {"curated-full minus full-full": {"accuracy": _diff(0.02, 0.01, 0.03),
                                                                "confusions": {"a<->b": _diff(-8, -10, -6)}},
                               "unlearn minus full-full": {"accuracy": _diff(0.01, -0.01, 0.02),
                                                           "confusions": {"a<->b": _diff(-2, -4, 1)}}},
        "revision": {  # as i2x.stages.revision writes it (i2x finetune --fix)
            "before": {"gap": 0.945, "clean_accuracy": 0.877, "attacked_accuracy": 0.405},
            "methods": {"augment": {k: {**_stats(v / 100), "ci": [(v - 1) / 100, (v + 1) / 100], "values": [1, 2, 3]}
                                    for k, v in (("gap", 1.6), ("clean_accuracy", 92.5), ("attacked_accuracy", 91.7))},
                        "none": {k: {"mean": v, "std": 0.0, "ci": [v, v], "values": [v]}
                                 for k, v in (("gap", 0.945), ("clean_accuracy", 0.9), ("attacked_accuracy", 0.43))}},
            "paired": {"augment vs none": {"gap_reduction": _diff(0.929, 0.924, 0.933)}},
            "settings": {"seeds": [0, 1, 2], "epochs": 3}, "mask": {"source": "concept C16", "pixels": 67},
            "verdict": ["augment: gap 94.5 -> 1.6 pts, clean accuracy 87.7 -> 92.5%: removes the artefact"]},
        "verdict": ["verdict a<->b: curated -> full did not clearly beat full -> full"],
    }
    study = _Study(result)
    section = finetune_section(study)  # type: ignore[arg-type]
    assert study.asked == ["finetune/finetune.json"]      # recorded, so a later fine-tuning marks it out of date
    body = section.body
    assert "shortcut gap %" in body and "70.00" in body and "10.00 ± 1.00" in body   # before and after
    assert "+2.00 [+1.00, +3.00] p=0.062" in body and "-8.00 [-10.00, -6.00]" in body   # intervals
    assert "Revision of the shortcut" in body and "94.50" in body and "1.60 ± " in body and "[0.60, 2.60]" in body
    assert "augment vs none: gap reduction +92.90 [+92.40, +93.30]" in body and "removes the artefact" in body
    assert "90.00 (1 seed: no interval)" in body  # no ± 0.00
    assert "a&lt;-&gt;b confusions" in body
    del result["start"]["shortcut_gap"]
    for e in result["strategies"].values():
        del e["shortcut_gap"]
    assert "not measured" in finetune_section(_Study(result)).body  # type: ignore[arg-type]
    assert finetune_section(_Study(None)) is None  # type: ignore[arg-type]


def test_revised_models_paste_test_in_words():
    from i2x.reporting.sections.reliance import revised_words

    def stats(outcomes, mean, ci):
        return {"outcomes": outcomes, "flip_rate": {"mean": mean, "ci": ci}, "random_flip_rate": {"mean": 0.02}}

    assert revised_words("augment", stats(["fails"], 0.03, [None, None]), "passes", 0.25) == \
        "After augment, its paste flips 3% (1 seed: no interval) (random patches 2%): its paste test no longer passes."
    assert revised_words("none", stats(["passes"] * 3, 0.9, [0.85, 0.95]), "passes", 0.25) == \
        ("After none, its paste flips 90% [85%, 95%] over 3 seeds (random patches 2%): its paste test still passes in "
         "each of the 3 seeds.")
    mixed = revised_words("rrr", stats(["passes", "inconclusive", "fails"], 0.5, [0.2, 0.8]), "passes", 0.25)
    assert mixed.endswith("its paste test passes in 1, fails in 1, is inconclusive in 1 of 3 seeds (random patches "
                          "flip more than 25% of the recipients: the test cannot isolate it).")
    assert revised_words("exclude", stats(["fails"] * 2, 0.1, [0.05, 0.15]), "fails", 0.25).endswith(
        "its paste test fails in each of the 2 seeds.")                  # it did not pass before either


class _Run:
    def __init__(self, letter, reliance):
        self.letter, self.name = letter, letter
        self.r = type("R", (), {"summary": {"reliance": reliance} if reliance else {}, "shown_dir": f"dir{letter}"})()


class _Pair:
    def __init__(self, b_reliance):
        self.a, self.b = _Run("A", None), _Run("B", b_reliance)

    def partner(self, letter, k):
        return (k + 10, 0.9) if letter == "A" else None


def test_compare_answer_weighs_b_s_response_with_b_s_own_verdict():
    from i2x.reporting.sections.runs import _answer

    transfer = {"status": "tested", "concept": 3, "members": [1, 2], "class": 1, "class_name": "marked",
                "a": {"flip_rate": 0.7, "random_flip_rate": 0.01},
                "b": {"recipients": 128, "split": "test", "flip_rate": 0.85, "random_flip_rate": 0.08, "flip_z": 21.0},
                "responds": True, "rule": "r"}
    same = _answer(_Pair({"shortcut_found": True, "suspect": 0, "concepts": [{"id": 0, "members": [11, 12]}]}),
                   transfer)
    assert "Yes: B&#x27;s answers move" in same and "B responds to it" in same and "holds 2 of these partners" in same
    # a clean twin reacts to a bright marker pasted in, though it never learned one: not called a shortcut in B
    clean = _answer(_Pair({"shortcut_found": False, "suspect": None, "concepts": []}), transfer)
    assert "finds no shortcut holding them" in clean and "Yes:" not in clean
    unknown = _answer(_Pair(None), transfer)
    assert "needs B&#x27;s own reliance study (i2x reliance dirB)" in unknown
    assert "No: B&#x27;s answers do not move" in _answer(_Pair(None), {**transfer, "responds": False})
    assert "A has no shortcut to test" in _answer(_Pair(None), {"status": "A has no shortcut to test"})
