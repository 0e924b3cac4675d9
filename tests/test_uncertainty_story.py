"""One account of the uncertain prototypes: the CLI, summary.json, the report and the compare page give the same
sentence, from one function, with counts that cannot contradict (a significant prototype is a flagged one, or the
sentence says it lies below the noise floor). ``i2x run`` ends with the verdict, and the page's command hints name
the analysis folder as the user gave it."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from i2x import api
from i2x.cli import main
from i2x.stages.analyze.uncertainty import summary_sentence
from fixtures_pipeline import tiny_run  # noqa: F401  (pytest fixture)

ANALYSIS = ["--k", "8", "--min-flips", "1", "--noise-quantile", "0.5"]


def _two_class_data(path: Path, n: int = 240) -> Path:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, n)
    x = np.clip(0.5 + 0.2 * rng.standard_normal((n, 16, 16)), 0, 1)
    x[y == 1, 4:10, 4:10] += 0.25 * rng.random((int((y == 1).sum()), 1, 1))
    np.savez(path, x_train=np.clip(x, 0, 1).astype(np.float32), y_train=y, x_test=np.clip(x[::3], 0, 1).astype(
        np.float32), y_test=y[::3], class_names=np.array(["normal", "pneumonia"]))
    return path


def _check_counts(summary: dict) -> str:
    """The counts in summary.json agree with each other and with the entries' chips; returns the sentence."""
    c = summary["uncertainty"]
    listed = summary["uncertain"]
    assert c["flagged"] == sum(not u["below_noise_floor"] for u in listed)
    assert c["significant"] == sum(u["significant"] for u in listed)
    assert c["significant_flagged"] + c["significant_below_floor"] == c["significant"]
    assert c["significant_flagged"] <= c["flagged"]
    assert len(c["null_significant"]) == c["null_runs"]
    assert c["sentence"] == summary_sentence(summary)
    return c["sentence"]


def _pages_agree(out: Path, sentence: str, tmp_path: Path) -> None:
    report = (out / "report.html").read_text(encoding="utf-8")
    assert html.escape(sentence) in report
    page = tmp_path / "compare.html"
    assert main(["compare", str(out), str(out), "--out", str(page)]) == 0
    assert html.escape(sentence) in page.read_text(encoding="utf-8")


def test_the_tiny_run_reads_the_same_everywhere(tiny_run, tmp_path, capsys):
    out = tmp_path / "an"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("report*"))
    assert main(["analyze", str(out), *ANALYSIS]) == 0
    printed = capsys.readouterr().out
    sentence = _check_counts(json.loads((out / "summary.json").read_text()))
    assert f"uncertain: {sentence}" in printed
    assert main(["report", str(out), "--no-png"]) == 0
    _pages_agree(out, sentence, tmp_path)


def test_a_two_class_run_reads_the_same_everywhere_and_ends_with_the_verdict(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = f"npz:{_two_class_data(tmp_path / 'd.npz')}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        api.train(data=data, out=tmp_path / "ck", epochs=3, batch_size=16, lr=1e-2, progress=False)
        assert main(["run", "ck", "--out", "runs/two class", "--data", data, "--methods", "gradcam", "--no-reliance",
                     *ANALYSIS]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    out = tmp_path / "runs" / "two class"
    summary = json.loads((out / "summary.json").read_text())
    sentence = _check_counts(summary)
    assert summary["uncertainty"]["view"] == "margin"
    tail = printed.rstrip().splitlines()[-4:]
    assert tail[0] == "verdict:"
    assert tail[1] == "  shortcut: not run: i2x reliance 'runs/two class'"
    assert tail[2] == f"  uncertain: {sentence}"
    assert tail[3].startswith("  accuracy: train split ") and "; test split " in tail[3]
    assert "(the trainer's record)" in tail[3]
    report = (out / "report.html").read_text(encoding="utf-8")
    assert html.escape("i2x reliance 'runs/two class'") in report  # pastes into the shell the run came from
    _pages_agree(out, sentence, tmp_path)
