"""Inputs that gave a result that read as true but was not (reliability round 3): ROI files that are NaN, soft,
garbage or pickled, ignored on segmentation runs; evidence weights that switch the method off; a fine-tuning
study without an epoch; factories that exit, raise, recurse or do not parse; a classifier with the wrong number
of outputs. Each is now a one-line error naming the option, or the right result."""

from __future__ import annotations


import numpy as np
import pytest

from fixtures_pipeline import tiny_run  # noqa: F401  (pytest fixture)
from i2x.cli import main
from i2x.errors import UserError
from i2x.io.store import Store

INDEX = np.arange(6)


def read_roi(spec: str, index: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The one ROI reader (imported here so the command tests below run, and fail, on code without it)."""
    from i2x.io.samples.roi import read_roi as reader

    return reader(spec, index, size)


def one_line(err: str) -> str:
    """The one error line of a command's stderr (progress bars aside), which holds no traceback."""
    lines = [line for line in err.splitlines() if "i2x: error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- one ROI reader for benchmark and evidence ---------------------------------------------------------------
def test_the_roi_formats_of_both_commands_read_alike(tmp_path):
    masks = np.zeros((6, 8, 8), dtype=bool)
    masks[:, 2:6, 2:6] = True
    np.save(tmp_path / "m.npy", masks)
    np.savez(tmp_path / "one.npz", regions=masks)
    np.savez(tmp_path / "two.npz", regions=masks, other=masks)
    (tmp_path / "boxes.csv").write_text("index,x0,y0,x1,y1\n" + "".join(f"{i},8,8,24,24\n" for i in range(6)))
    expected = np.zeros((6, 32, 32), dtype=bool)
    expected[:, 8:24, 8:24] = True
    for spec in ("m.npy", "one.npz", "two.npz:regions", "boxes.csv"):
        assert np.array_equal(read_roi(str(tmp_path / spec), INDEX, (32, 32)), expected), spec
    with pytest.raises(UserError, match="name the array .*keys: regions, other"):
        read_roi(str(tmp_path / "two.npz"), INDEX, (32, 32))


def test_a_soft_roi_is_cut_at_one_half_not_at_any_non_zero(tmp_path):
    soft = np.full((6, 4, 4), 0.1, dtype=np.float32)  # evidence used to read every 0.1 as inside the region
    soft[:, :2] = 0.9
    np.save(tmp_path / "soft.npy", soft)
    roi = read_roi(str(tmp_path / "soft.npy"), INDEX, (4, 4))
    assert roi[:, :2].all() and not roi[:, 2:].any()


@pytest.mark.parametrize("content, message", [
    (lambda p: np.save(p, np.full((6, 4, 4), np.nan, dtype=np.float32)), "holds NaN or infinite values"),
    (lambda p: np.save(p, -np.ones((6, 4, 4))), "holds negative values"),
    (lambda p: np.save(p, np.zeros((6, 4, 4))), "no region .* for any of the 6 samples"),
    (lambda p: np.save(p, np.ones((6, 4))), r"shape \(6, 4\); need masks \[N, H, W\]"),
    (lambda p: np.save(p, np.ones((3, 4, 4))), "3 masks, but the samples reach data set index 5"),
    (lambda p: np.save(p, np.array([{"a": 1}] * 6, dtype=object), allow_pickle=True), "does not unpickle"),
    (lambda p: np.save(p, np.array(["x"] * 6).reshape(6, 1, 1)), "must be boolean or numeric"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(300)), "not a NumPy .npy or .npz file"),
    (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 40), "unreadable, truncated or corrupt"),
])
def test_a_bad_roi_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "roi.npy"
    content(path)
    with pytest.raises(UserError, match=f"--roi {path}: .*{message}"):
        read_roi(str(path), INDEX, (4, 4))


def test_an_object_npz_and_a_bad_csv_are_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", masks=np.array([None] * 6, dtype=object))
    with pytest.raises(UserError, match="does not unpickle"):
        read_roi(f"{tmp_path / 'obj.npz'}:masks", INDEX, (4, 4))
    (tmp_path / "b.csv").write_text("index,x0,y0,x1,y1\n0,nan,0,inf,4\n")
    with pytest.raises(UserError, match="finite numbers index,x0,y0,x1,y1"):
        read_roi(str(tmp_path / "b.csv"), INDEX, (4, 4))


QUICK = ["--samples", "4", "--detail-samples", "2", "--random-draws", "1", "--sensitivity-samples", "2",
         "--checkpoints", "final", "--methods", "gradcam", "--device", "cpu"]


def test_benchmark_with_a_nan_roi_refuses_instead_of_leakage_over_no_sample(tiny_run, tmp_path, capsys):
    np.savez(tmp_path / "roi.npz", masks=np.full((200, 8, 8), np.nan, dtype=np.float32))
    before = (tiny_run / "benchmark.json").read_bytes() if (tiny_run / "benchmark.json").exists() else None
    assert main(["benchmark", str(tiny_run), "--roi", f"{tmp_path / 'roi.npz'}:masks", *QUICK]) == 2
    assert "holds NaN or infinite values" in one_line(capsys.readouterr().err)
    after = (tiny_run / "benchmark.json").read_bytes() if (tiny_run / "benchmark.json").exists() else None
    assert after == before


def test_evidence_reads_an_npz_roi_by_the_same_rules(tiny_run, tmp_path, capsys):
    reach = int(Store.open(tiny_run).read("sample_index").max()) + 1  # --limit's stratified sample spans the split
    np.savez(tmp_path / "roi.npz", masks=np.full((reach, 32, 32), 0.2, dtype=np.float32))  # below 0.5: no region
    assert main(["evidence", str(tiny_run), "--roi", str(tmp_path / "roi.npz"), "--samples", "3",
                 "--checkpoints", "final", "--iterations", "2", "--device", "cpu"]) == 2
    assert "no region (no value above 0.5) for any of the 200 samples" in one_line(capsys.readouterr().err)


def test_a_segmentation_benchmark_refuses_roi_it_would_ignore(tiny_run, tmp_path, capsys):
    import shutil

    seg = tmp_path / "seg"
    shutil.copytree(tiny_run, seg, ignore=shutil.ignore_patterns("report*"))
    Store.open(seg, mode="a").note({"task": "segmentation"})
    np.save(tmp_path / "roi.npy", np.ones((200, 8, 8), dtype=bool))
    assert main(["benchmark", str(seg), "--roi", str(tmp_path / "roi.npy"), *QUICK]) == 2
    assert "a segmentation run is benchmarked on its masks' regions" in one_line(capsys.readouterr().err)


# ---- options that switched the method off -------------------------------------------------------------------
@pytest.mark.parametrize("weights, message", [
    ("0,0,0", "the matching and minimality weights must be above 0"),
    ("10,0,10", "the matching and minimality weights must be above 0"),
    ("-1,100,10", "--weights"),  # used to be argparse's "expected one argument"
])
def test_evidence_weights_that_switch_a_loss_off_are_refused(tiny_run, capsys, weights, message):
    assert main(["evidence", str(tiny_run), "--weights", weights, "--samples", "3", "--checkpoints", "final",
                 "--iterations", "2", "--device", "cpu"]) == 2
    line = one_line(capsys.readouterr().err)
    assert message in line and "expected one argument" not in line


def test_a_finetune_study_without_an_epoch_is_refused(tiny_run, capsys):
    assert main(["finetune", str(tiny_run), "--study", "--epochs", "0,0"]) == 2
    assert "--epochs 0,0: no epoch at all" in one_line(capsys.readouterr().err)


# ---- user code: factories ----------------------------------------------------------------------------------
FACTORIES = {
    "exits": ("import sys\ndef make(num_classes):\n    sys.exit(0)\n", "the factory failed: it called sys.exit(0)"),
    "raises": ("def make(num_classes):\n    raise RuntimeError('no GPU here')\n",
               "the factory failed: RuntimeError: no GPU here"),
    "recurses": ("def make(num_classes):\n    return make(num_classes)\n", "the factory failed: RecursionError"),
    "broken": ("def make(num_classes)\n    return None\n", "failed: SyntaxError at line 1"),
    "exits_on_import": ("import sys\nsys.exit(3)\ndef make(num_classes):\n    pass\n", "it called sys.exit(3)"),
    "wide": ("import torch.nn as nn\ndef make(num_classes, in_channels):\n    return nn.Sequential(nn.Flatten(), "
             "nn.LazyLinear(3600))\n", "returns outputs of shape 3600 per image, but --data digits is a "
                                       "classification set of 10 classes"),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_a_factory_that_misbehaves_is_one_line_and_nothing_is_written(tmp_path, capsys, name):
    code, message = FACTORIES[name]
    (tmp_path / f"{name}.py").write_text(code)
    out = tmp_path / "ck"
    rc = main(["train", "--model", f"{tmp_path / name}.py:make", "--data", "digits", "--epochs", "1",
               "--out", str(out)])
    assert rc == 2, "a factory that exits 0 used to end i2x train with 0 and nothing written"
    assert message in one_line(capsys.readouterr().err)
    assert not list(out.glob("*.pt"))


def test_a_segmentation_net_on_a_classification_set_is_one_line(tmp_path, capsys):
    assert main(["train", "--model", "small-segnet", "--data", "digits", "--epochs", "1",
                 "--out", str(tmp_path / "ck")]) == 2
    assert "returns a map per class, as a segmentation model does" in one_line(capsys.readouterr().err)


def test_an_hf_config_too_large_for_the_machine_is_refused_before_allocating(tmp_path, capsys):
    pytest.importorskip("transformers")
    from transformers import ViTConfig

    ViTConfig(hidden_size=200_000, num_attention_heads=8, intermediate_size=64, num_hidden_layers=2, image_size=32,
              patch_size=8, num_channels=1, num_labels=10).save_pretrained(tmp_path / "vit")
    assert main(["train", "--model", f"hf:{tmp_path / 'vit'}", "--data", "digits", "--epochs", "1",
                 "--out", str(tmp_path / "ck")]) == 2
    assert "GiB of weights, more than half this machine's" in one_line(capsys.readouterr().err)
