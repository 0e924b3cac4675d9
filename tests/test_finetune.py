"""Curated fine-tuning: the exclusion rule against a plain loop, seeding, the 0-epoch identity, user errors.

One small analysis is built per module: 400 training / 200 test digits (npz, upsampled to 32x32),
4 epochs of the reference trainer, the first 300 training samples analysed with thresholds low
enough (k=8, min_flips=1) that three steps flag uncertain prototypes.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from i2x import api
from i2x.io.workdir import load_summary
from i2x.stages.analyze.config import AnalyzeConfig
from i2x.stages.context import build_context
from i2x.stages.config import RunConfig
from i2x.errors import UserError
from i2x.stages.finetune.curation import read_exclude_file
from i2x.stages.finetune import finetune, format_table
from i2x.io.store import Store
from i2x.stages.training import evaluate


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def analysis(one_thread, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    digits = load_digits()
    x, y = (digits.images / 16).astype(np.float32), digits.target
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:400], order[400:600]
    np.savez(root / "d.npz", x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test])
    data = f"npz:{root / 'd.npz'}"
    api.train(data=data, out=root / "ck", epochs=4, progress=False, input_size=32)
    api.run(checkpoints=str(root / "ck"), data=data, input_size=32, methods=("gradcam",), out=root / "an", limit=300,
            progress=False, analyze_config=AnalyzeConfig(k=8, min_flips=1, noise_quantile=0.5))
    flagged = load_summary(root / "an")["uncertain"]
    assert any(u["significant"] for u in flagged), "the fixture must flag significant uncertain prototypes"
    assert not all(u["significant"] for u in flagged), "and some that are not, to tell the two apart"
    return root


def rule_by_loop(out, min_share, pairs=None, all_uncertain=False):
    """The curation rule written out sample by sample, from the store arrays and summary.json."""
    store = Store.open(out)
    share, labels, index = store.read("analysis/share"), store.read("labels"), store.read("sample_index")
    flagged = [(u["prototype"], tuple(sorted(u["classes"]))) for u in load_summary(out)["uncertain"]
               if all_uncertain or u["significant"]]
    if pairs is not None:
        flagged = [(k, pair) for k, pair in flagged if pair in pairs]
    excluded = set()
    for row in range(len(labels)):
        for k, (a, b) in flagged:
            if labels[row] in (a, b) and share[row, k] >= min_share:
                excluded.add(int(index[row]))
    return sorted(excluded)


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_curated_set_matches_the_rule(analysis, tmp_path):
    an = analysis / "an"
    uncertain = [u for u in load_summary(an)["uncertain"] if u["significant"]]
    top = {tuple(sorted(u["classes"])) for u in uncertain if u["in_top_confused"]} or {tuple(sorted(uncertain[0]["classes"]))}
    finetune(an, strategies=("curated-curated",), seeds=1, epochs=(0, 0), dest=tmp_path / "top", progress=False)
    assert json.loads((tmp_path / "top" / "excluded.json").read_text())["ids"] == rule_by_loop(an, 0.1, pairs=top)

    finetune(an, strategies=("curated-curated",), seeds=1, epochs=(0, 0), dest=tmp_path / "a", pairs="all",
             progress=False)
    excluded = json.loads((tmp_path / "a" / "excluded.json").read_text())
    expected = rule_by_loop(an, 0.1)
    assert excluded["ids"] == expected and excluded["count"] == len(expected) > 0
    labels = np.load(analysis / "d.npz")["y_train"]
    assert excluded["per_class"] == {str(c): n for c, n in zip(*np.unique(labels[expected], return_counts=True))}
    analysed = Store.open(an).read("sample_index")  # --limit 300: a stratified sample of the 400
    assert analysed.size == 300 and set(expected) <= set(analysed.tolist())  # only analysed samples can be excluded

    # every flagged prototype, significant or not, on request
    finetune(an, strategies=("curated-curated",), seeds=1, epochs=(0, 0), dest=tmp_path / "all", pairs="all",
             all_uncertain=True, progress=False)
    everything = json.loads((tmp_path / "all" / "excluded.json").read_text())["ids"]
    assert everything == rule_by_loop(an, 0.1, all_uncertain=True) and set(expected) < set(everything)

    # one pair, and a threshold that some sample's share equals exactly (the rule says >=)
    last = uncertain[-1]
    pair = tuple(last["classes"])
    store = Store.open(an)
    shares = store.read("analysis/share")[np.isin(store.read("labels"), pair), last["prototype"]]
    shares = np.sort(shares[shares > 0])
    min_share = float(shares[len(shares) // 2])
    finetune(an, strategies=("curated-curated",), seeds=1, epochs=(0, 0), min_share=min_share, pairs=[pair],
             dest=tmp_path / "b", progress=False)
    excluded = json.loads((tmp_path / "b" / "excluded.json").read_text())
    assert excluded["ids"] == rule_by_loop(an, min_share, pairs=[pair])
    assert 0 < len(excluded["ids"]) < len(expected)


def test_same_seed_is_bit_identical_and_paired_differences(analysis, tmp_path):
    kw = dict(strategies=("full-full", "curated-full"), seeds=[0, 3], epochs=(1, 1), progress=False)
    first = finetune(analysis / "an", dest=tmp_path / "a", **kw)
    second = finetune(analysis / "an", dest=tmp_path / "b", **{**kw, "strategies": ("curated-full",), "seeds": [3]})
    r1, r2 = first.runs[-1], second.runs[0]
    assert (r1["strategy"], r1["seed"]) == (r2["strategy"], r2["seed"]) == ("curated-full", 3)
    assert r1["accuracy"] == r2["accuracy"] and r1["confusions"] == r2["confusions"]
    assert r1["confusion_matrix"] == r2["confusion_matrix"]
    w1, w2 = (weights(tmp_path / d / "runs" / "curated-full" / "seed3.pt") for d in "ab")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    # another seed trains differently
    w0, w3 = (weights(tmp_path / "a" / "runs" / "full-full" / f"seed{s}.pt") for s in (0, 3))
    assert not all(torch.equal(w0[k], w3[k]) for k in w0)

    saved = json.loads((tmp_path / "a" / "finetune.json").read_text())
    by = {(r["strategy"], r["seed"]): r for r in saved["runs"]}
    diff = [by["curated-full", s]["accuracy"] - by["full-full", s]["accuracy"] for s in (0, 3)]
    paired = saved["paired_differences"]["curated-full minus full-full"]["accuracy"]
    assert paired["values"] == pytest.approx(diff)
    assert paired["mean"] == pytest.approx(np.mean(diff)) and paired["std"] == pytest.approx(np.std(diff, ddof=1))
    accs = [by["full-full", s]["accuracy"] for s in (0, 3)]
    assert saved["strategies"]["full-full"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert "curated -> full" in format_table(first)

    # rerunning into the same dest reuses the finished runs (the weight files are not rewritten)
    pt = tmp_path / "a" / "runs" / "full-full" / "seed0.pt"
    stamp = pt.stat().st_mtime_ns
    again = finetune(analysis / "an", dest=tmp_path / "a", **kw)
    assert pt.stat().st_mtime_ns == stamp and again.runs == first.runs


def test_zero_epochs_reproduce_the_final_checkpoint(analysis, tmp_path):
    result = finetune(analysis / "an", strategies=("full-full",), seeds=2, epochs=(0, 0), dest=tmp_path,
                      progress=False)
    ctx = build_context(RunConfig.from_dict(Store.open(analysis / "an").config))
    ctx.load(ctx.checkpoint("final"))
    acc, _, preds = evaluate(ctx.model, ctx.data.split("test"), ctx.device)
    assert [r["accuracy"] for r in result.runs] == [acc, acc]
    assert result.start["accuracy"] == acc
    y = np.load(analysis / "d.npz")["y_test"]
    for label, conf in result.runs[0]["confusions"].items():
        a, b = (int(c) for c in label.split("<->"))
        assert conf["total"] == int(((y == a) & (preds.numpy() == b)).sum() + ((y == b) & (preds.numpy() == a)).sum())


def test_no_uncertain_prototype_is_a_user_error_with_advice(analysis, tmp_path):
    copy = tmp_path / "an"
    shutil.copytree(analysis / "an", copy)
    api.analyze(copy, progress=False, k=8, min_flips=99)
    assert load_summary(copy)["uncertain"] == []
    with pytest.raises(UserError, match="no uncertain prototype") as err:
        finetune(copy, seeds=1, progress=False)
    assert "--noise-quantile" in str(err.value) and "--min-flips 1" in str(err.value)
    flagged = {tuple(u["classes"]) for u in load_summary(analysis / "an")["uncertain"]}
    unflagged = next((str(a), str(b)) for a in range(10) for b in range(a + 1, 10) if (a, b) not in flagged)
    with pytest.raises(UserError, match="no uncertain prototype for the given pairs"):
        finetune(analysis / "an", pairs=[unflagged], seeds=1, progress=False, dest=tmp_path / "p")
    uncertain = load_summary(analysis / "an")["uncertain"]
    significant = {tuple(u["classes"]) for u in uncertain if u["significant"]}
    noise_only = next(tuple(map(str, u["classes"])) for u in uncertain if tuple(u["classes"]) not in significant)
    with pytest.raises(UserError, match="no significant uncertain prototype for the given pairs.*--all-uncertain"):
        finetune(analysis / "an", pairs=[noise_only], seeds=1, progress=False, dest=tmp_path / "n")


def test_exclude_file(analysis, tmp_path):
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("3\n10  # a note\n\n3\n")
    assert read_exclude_file(ids_file, 400).tolist() == [3, 10]
    result = finetune(analysis / "an", strategies=("curated-full",), seeds=1, epochs=(0, 0), exclude_file=ids_file,
                      dest=tmp_path / "d", progress=False)
    assert result.excluded["count"] == 2 and result.settings["exclusion_source"] == str(ids_file.resolve())
    (tmp_path / "bad.json").write_text(json.dumps([1, 400, -2]))
    with pytest.raises(UserError, match=r"400.*outside the training split.*0\.\.399"):
        finetune(analysis / "an", exclude_file=tmp_path / "bad.json", seeds=1, progress=False, dest=tmp_path / "e")
    (tmp_path / "frac.json").write_text(json.dumps([1.5]))
    with pytest.raises(UserError, match="not an integer"):
        read_exclude_file(tmp_path / "frac.json", 400)


def test_refuses_an_analysis_of_another_split(analysis, monkeypatch):
    config = {**Store.open(analysis / "an").config, "split": "test"}
    monkeypatch.setattr(Store, "config", property(lambda self: config))
    with pytest.raises(UserError, match="built from the training split"):
        finetune(analysis / "an", seeds=1, progress=False)


def test_option_errors(analysis):
    with pytest.raises(UserError, match="--strategies"):
        finetune(analysis / "an", strategies=("full-best",), progress=False)
    with pytest.raises(UserError, match="--min-share"):
        finetune(analysis / "an", min_share=0, progress=False)
    with pytest.raises(UserError, match="--pairs"):
        finetune(analysis / "an", pairs=[("2", "cat")], progress=False)


def test_study_rows_controls_and_paired_statistics(analysis, tmp_path):
    kw = dict(study=True, seeds=[0, 1], epochs=(1, 1), progress=False)
    result = finetune(analysis / "an", dest=tmp_path / "a", **kw)
    assert list(result.strategies) == ["full-full", "curated-curated", "curated-full", "full", "curated",
                                       "random-full", "cartography-full"]
    excluded = json.loads((tmp_path / "a" / "excluded.json").read_text())
    labels = np.load(analysis / "d.npz")["y_train"]
    per_class = np.bincount(labels[excluded["ids"]], minlength=10)
    analysed = Store.open(analysis / "an").read("sample_index")
    for name in ("random", "cartography"):
        for ids in excluded["controls"][name]["ids"].values():
            assert np.array_equal(np.bincount(labels[ids], minlength=10), per_class) and len(set(ids)) == len(ids)
            assert set(ids) <= set(analysed.tolist())
    draws = excluded["controls"]["random"]["ids"]
    pool = np.bincount(labels[analysed], minlength=10)
    assert list(draws) == ["0", "1"]
    if ((pool > per_class) & (per_class > 0)).any():  # a class with more samples than are left out: new draws per seed
        assert draws["0"] != draws["1"]
    else:  # the curated set leaves out every analysed sample of its classes: the only draw there is
        assert sorted(draws["0"]) == sorted(draws["1"]) == sorted(excluded["ids"])
    carto = excluded["controls"]["cartography"]["ids"]["0"]
    store = Store.open(analysis / "an")
    variability = dict(zip(store.read("sample_index").tolist(), store.read("analysis/variability").tolist()))
    for c in np.flatnonzero(per_class):  # no analysed sample of the class left in is more ambiguous than one taken
        taken = [variability[i] for i in carto if labels[i] == c]
        left = [v for i, v in variability.items() if labels[i] == c and i not in carto]
        assert not left or min(taken) >= max(left)  # every analysed sample of the class left out: none is left

    # a one-stage row is stage 1 alone: the same as X-X with no stage-2 epoch
    alone = finetune(analysis / "an", dest=tmp_path / "b", strategies=("full-full",), seeds=[0, 1], epochs=(1, 0),
                     progress=False)
    by = {(r["strategy"], r["seed"]): r for r in result.runs}
    for r in alone.runs:
        assert by["full", r["seed"]]["confusion_matrix"] == r["confusion_matrix"]

    # random -> full trains on exactly the recorded draw: the same run as curated -> full excluding those ids
    (tmp_path / "ids.json").write_text(json.dumps(draws["1"]))
    mine = finetune(analysis / "an", dest=tmp_path / "d", strategies=("curated-full",), seeds=[1], epochs=(1, 1),
                    exclude_file=tmp_path / "ids.json", progress=False)
    assert mine.runs[0]["confusion_matrix"] == by["random-full", 1]["confusion_matrix"]
    w_random, w_mine = weights(tmp_path / "a" / "runs" / "random-full" / "seed1.pt"), weights(
        tmp_path / "d" / "runs" / "curated-full" / "seed1.pt")
    assert all(torch.equal(w_random[k], w_mine[k]) for k in w_random)
    w_curated = weights(tmp_path / "a" / "runs" / "curated-full" / "seed1.pt")
    assert not all(torch.equal(w_random[k], w_curated[k]) for k in w_random)

    # paired statistics against a direct computation from the saved runs
    saved = json.loads((tmp_path / "a" / "finetune.json").read_text())
    runs = {(r["strategy"], r["seed"]): r for r in saved["runs"]}
    label = saved["pairs"][0]["label"]
    for base in ("full-full", "random-full", "cartography-full"):
        d = saved["paired_differences"][f"curated-full minus {base}"]["confusions"][label]
        diff = [runs["curated-full", s]["confusions"][label]["total"] - runs[base, s]["confusions"][label]["total"]
                for s in (0, 1)]
        assert d["values"] == diff and d["mean"] == pytest.approx(np.mean(diff))
        assert d["ci"][0] <= d["mean"] <= d["ci"][1]
    table = format_table(result)
    assert "verdict" in table and "curated (stage 1 only)" in table and "random -> full" in table

    # the same seeds give the same table
    again = finetune(analysis / "an", dest=tmp_path / "c", **kw)
    assert format_table(again) == table



def test_verdict_needs_the_interval_and_the_test():
    from i2x.metrics.paired import paired_difference
    from i2x.stages.finetune.results import FinetuneResult, verdict

    def result(diffs):
        d = {"accuracy": paired_difference([0.0] * len(diffs)), "confusions": {"2<->7": paired_difference(diffs)}}
        return FinetuneResult(dest=None, settings={}, class_names=[str(i) for i in range(10)], pairs=[(2, 7)],
                              excluded={}, start={}, runs=[], strategies={},
                              paired={"curated-full minus full-full": d, "curated-full minus random-full": d})

    assert verdict(result([-1, -2, -1, -3, -1, -2, -1, -1, -2, -1]))[0].startswith(
        "verdict 2<->7: curated -> full beat full -> full (-1.50 confusions")
    assert "beat random -> full" in verdict(result([-1] * 10))[0]
    five = verdict(result([-1] * 5))[0]  # the interval is below 0 but p = 1/16: not enough seeds to say "beat"
    assert "did not clearly beat full -> full" in five and "p=0.062" in five
    assert "did worse than full -> full" in verdict(result([2] * 10))[0]
