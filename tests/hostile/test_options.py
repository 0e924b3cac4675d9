"""Every option is checked before anything is touched: out-of-range counts, sizes and fractions, NaN,
empty lists, unknown devices and a checkpoint compared with itself stop with one line that names the
option as typed, exit status 2, and leave the files as they were. Options come from the stages' config
dataclasses, so the CLI's defaults are the API's.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import pytest

from i2x import api
from i2x.attribution import CamMethod, register, unregister
from i2x.cli import build_parser, main
from i2x.cli.common import run_config
from i2x.cli.options import config_from
from i2x.errors import UserError
from i2x.stages.analyze.config import AnalyzeConfig
from i2x.stages.config import RunConfig
from i2x.stages.drift import DriftConfig
from i2x.stages.faithfulness import FaithfulnessConfig
from i2x.stages.finetune.config import FinetuneConfig
from i2x.stages.reliance.config import RelianceConfig
from i2x.stages.training import TrainConfig

from .digits_snapshots import train_on_digits


def one_line(stderr: str) -> str:
    """The whole of stderr must be one ``i2x: error:`` line at the start of its own line (no progress bar
    before it on that line, no traceback)."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if "i2x: error: " in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("i2x: error: "), f"the error shares a line: {lines[0]!r}"
    return lines[0]


# ---- refused before anything is read or written (no store needed) ---------------------------------------
BAD = [
    (["train", "--save-every", "0"], "--save-every 0: must be at least 1"),
    (["train", "--lr", "nan"], "--lr nan: give a finite number"),
    (["train", "--lr", "0"], "--lr 0: must be above 0"),
    (["train", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["train", "--batch-size", "-1"], "--batch-size -1: must be at least 1"),
    (["train", "--batch-size", "x"], "--batch-size x: give a whole number"),
    (["train", "--device", "tpu"], "--device tpu: choose auto, cpu, cuda or cuda:N"),
    (["train", "--device", "mps"], "--device mps: choose auto, cpu, cuda or cuda:N"),
    (["train", "--epochs", "0"], "--epochs 0: must be at least 1"),
    (["train", "--optimizer", "rmsprop"], "--optimizer rmsprop: choose one of adam, sgd"),
    (["train", "--input-size", "0"], "--input-size 0: must be at least 1"),
    (["extract", "CKPT", "--batch-size", "-1"], "--batch-size -1: must be at least 1"),
    (["extract", "CKPT", "--limit", "1"], "--limit 1: must be at least 10"),
    (["extract", "CKPT", "--methods", ","], "--methods: give at least one value"),
    (["extract", "CKPT", "--device", "mps"], "--device mps"),
    (["extract", "CKPT", "--std", "0"], "--std 0: must be above 0"),
    (["extract", "CKPT", "--every", "0"], "--every 0: must be at least 1"),
    (["extract", "CKPT", "--target", "both"], "--target both: choose one of true, predicted"),
    (["run", "CKPT", "--shared-presence", "90"], "--shared-presence 90: must be at most 1"),
    (["run", "CKPT", "--k", "0"], "--k 0: give a positive integer or 'auto'"),
    (["analyze", "DIR", "--shared-presence", "90"], "--shared-presence 90: must be at most 1"),
    (["analyze", "DIR", "--k", "many"], "--k many: give a positive integer or 'auto'"),
    (["analyze", "DIR", "--noise-quantile", "-0.1"], "--noise-quantile -0.1: must be at least 0"),
    (["analyze", "DIR", "--k-candidates", "1,8"], "--k-candidates 1: must be at least 2"),
    (["faithfulness", "DIR", "--fractions", "0.5,2"], "--fractions 2: must be at most 1"),
    (["faithfulness", "DIR", "--per-bucket", "0"], "--per-bucket 0: must be at least 1"),
    (["faithfulness", "DIR", "--method", ","], "--method: give at least one value"),
    (["faithfulness", "DIR", "--buckets", "tp,fn"], "--buckets fn: choose one of tp, fp, random"),
    (["drift", "DIR", "--top", "0"], "--top 0: must be above 0"),
    (["drift", "DIR", "--stability", "luck"], "--stability luck: choose one of iou, spearman, shift_frac"),
    (["reliance", "DIR", "--recipients", "0"], "--recipients 0: must be at least 1"),
    (["finetune", "DIR", "--min-share", "0"], "--min-share 0: must be above 0"),
    (["finetune", "DIR", "--pairs", "3;5"], "--pairs 3;5: give 'top', 'all' or class pairs"),
    (["demo", "--epochs", "0"], "--epochs 0: must be at least 1"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_option_is_one_line_naming_it_and_nothing_is_written(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / "in") if a in ("CKPT", "DIR") else a for a in argv]
    out = tmp_path / "out"
    if argv[0] in ("train", "extract", "run", "demo"):
        argv += ["--out", str(out)]
    assert main(argv) == 2
    assert one_line(capsys.readouterr().err).startswith(f"i2x: error: {message}")
    assert not out.exists() and not (tmp_path / "in").exists()


@pytest.mark.parametrize("call, message", [
    (lambda d: api.train(out=d / "ck", save_every=0, progress=False), "--save-every 0"),
    (lambda d: api.train(out=d / "ck", lr=float("inf"), progress=False), "--lr inf: give a finite number"),
    (lambda d: api.extract(config=RunConfig(checkpoints=str(d), batch_size=0), out=d / "out"), "--batch-size 0"),
    (lambda d: api.analyze(d, shared_presence=90), "--shared-presence 90: must be at most 1"),
    (lambda d: api.faithfulness(d, steps=0), "--steps 0"),
    (lambda d: api.drift(d, methods=()), "--method: give at least one value"),
    (lambda d: api.reliance(d, batch_size=-1), "--batch-size -1"),
    (lambda d: api.finetune(d, device="tpu"), "--device tpu"),
])
def test_the_api_checks_the_same_ranges_with_the_option_names(tmp_path, call, message):
    with pytest.raises(UserError, match=message.replace("+", r"\+")):
        call(tmp_path)
    assert sorted(tmp_path.iterdir()) == []


# ---- one source per setting ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, config, build", [
    (["analyze", "D"], AnalyzeConfig, lambda a: config_from(a, AnalyzeConfig)),
    (["faithfulness", "D"], FaithfulnessConfig, lambda a: config_from(a, FaithfulnessConfig)),
    (["drift", "D"], DriftConfig, lambda a: config_from(a, DriftConfig)),
    (["reliance", "D"], RelianceConfig, lambda a: config_from(a, RelianceConfig)),
    (["finetune", "D"], FinetuneConfig, lambda a: config_from(a, FinetuneConfig)),
    (["train", "--out", "D"], TrainConfig, lambda a: config_from(a, TrainConfig)),
    (["extract", "D", "--out", "O"], lambda: RunConfig(checkpoints="D"), run_config),
    (["run", "D", "--out", "O"], AnalyzeConfig, lambda a: config_from(a, AnalyzeConfig)),
])
def test_the_cli_defaults_are_the_config_defaults(argv, config, build):
    assert build(build_parser().parse_args(argv)) == config()


def test_flags_typed_as_the_help_shows_them_reach_the_config():
    args = build_parser().parse_args(["drift", "D", "--from", "epoch_2.pt", "--method", "gradcam,layercam"])
    assert config_from(args, DriftConfig) == DriftConfig(from_="epoch_2.pt", methods=("gradcam", "layercam"))
    args = build_parser().parse_args(["finetune", "D", "--exclude", "ids.txt", "--epochs", "2,0", "--pairs", "3,5"])
    assert config_from(args, FinetuneConfig) == FinetuneConfig(exclude_file="ids.txt", epochs=(2, 0),
                                                               pairs=[("3", "5")])
    args = build_parser().parse_args(["analyze", "D", "--max-group-samples", "0", "--k", "auto"])
    assert config_from(args, AnalyzeConfig) == AnalyzeConfig(max_group_samples=None, k="auto")


def test_help_shows_each_default_once_taken_from_the_dataclass():
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {a.dest: a.help for a in sub.choices["extract"]._actions}
    assert helps["batch_size"].endswith("(default 256)") and helps["batch_size"].count("default") == 1
    assert helps["methods"].endswith("(default gradcam,gradcampp,layercam)")


def test_the_default_methods_come_from_the_registry():
    @register
    class Ones(CamMethod):
        name = "ones-test"
        summary = "every channel weighs 1"

    try:
        args = build_parser().parse_args(["extract", "D", "--out", "O"])
        assert run_config(args).methods == ("gradcam", "gradcampp", "layercam", "ones-test")
        assert RunConfig(checkpoints="D").methods[-1] == "ones-test"
    finally:
        unregister("ones-test")
    assert RunConfig(checkpoints="D").methods == ("gradcam", "gradcampp", "layercam")


# ---- on a real analysis --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> tuple[Path, Path, RunConfig]:
    """(checkpoints, an analysis of 40 digits, the RunConfig given to extract)."""
    root = tmp_path_factory.mktemp("options")
    ckpts, npz = train_on_digits(root, n_test=40)
    config = RunConfig(checkpoints=str(ckpts), data=f"npz:{npz}", input_size=32, limit=40, batch_size=20,
                       methods=("gradcam", "layercam"))
    given = dataclasses.replace(config)
    api.extract(config=config, out=root / "an", progress=False)
    assert config == given and config.layer is None  # extract() left the caller's config as it was
    api.analyze(root / "an", k=4, progress=False)
    return ckpts, root / "an", config


def test_extract_does_not_change_the_callers_config(analysed, tmp_path):
    _, an, config = analysed
    before = dataclasses.asdict(config)
    result = api.extract(config=config, out=tmp_path / "again", progress=False)
    assert result.layer and dataclasses.asdict(config) == before and config.layer is None


def test_a_bad_analysis_option_keeps_the_previous_summary(analysed, capsys):
    _, an, _ = analysed
    summary = (an / "summary.json").read_bytes()
    assert main(["analyze", str(an), "--shared-presence", "90"]) == 2
    assert one_line(capsys.readouterr().err) == "i2x: error: --shared-presence 90: must be at most 1"
    assert (an / "summary.json").read_bytes() == summary


def test_drift_from_a_checkpoint_to_itself_is_refused(analysed, capsys):
    _, an, _ = analysed
    assert main(["drift", str(an), "--from", "final", "--to", "final"]) == 2
    assert one_line(capsys.readouterr().err) == ("i2x: error: --from final --to final: both name the checkpoint "
                                                 "epoch_3.pt; choose two different checkpoints")
    assert not (an / "drift.json").exists()


def test_an_error_raised_under_a_progress_bar_starts_its_own_line(analysed, tmp_path, capsys):
    # One usable checkpoint: the analysis stops after its progress bar has started (deltas need two).
    ckpts, _, config = analysed
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(ckpts / "epoch_3.pt", one)
    api.extract(config=dataclasses.replace(config, checkpoints=str(one)), out=tmp_path / "an", progress=False)
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "an"), "--k", "4"]) == 2
    err = capsys.readouterr().err
    assert "analysis:" in err  # the bar was drawn
    assert "only 1 usable checkpoint(s)" in one_line(err)
