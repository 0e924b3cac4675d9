"""Snapshot recorders (plain PyTorch, Lightning, Hugging Face) inside real short training runs, and the
``hf:PATH`` model spec; ``i2x run`` reads what each wrote as is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from i2x import api
from i2x.errors import UserError
from i2x.io.checkpoints import list_checkpoints
from i2x.io.data import load_data
from i2x.io.models import build_model
from i2x.io.snapshots import SnapshotRecorder, hf_callback, lightning_callback, should_save, snapshot_steps
from i2x.io.store import Store

SMALL_RUN = dict(limit=64, progress=False, with_reliance=False)


def _digits() -> torch.utils.data.Dataset:
    return load_data("digits").split("train")


def _loader(batch_size: int = 64) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_digits(), batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))


def _run(checkpoints: Path, model: str, out: Path) -> Store:
    api.run(checkpoints=str(checkpoints), model=model, out=out, analyze_config=api.AnalyzeConfig(k=4, min_flips=1),
            **SMALL_RUN)
    return Store.open(out)


# ---- the schedule --------------------------------------------------------------------------------------
def test_the_schedule_is_dense_early_geometric_later_and_keeps_the_last_step():
    assert snapshot_steps(10_000) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 22, 33, 50, 75, 112, 168, 252, 378,
                                      567, 850, 1275, 1912, 2868, 4302, 6453, 9680, 10_000]
    assert snapshot_steps(7) == list(range(8))
    assert snapshot_steps(100, dense=2, ratio=2) == [0, 1, 2, 4, 8, 16, 32, 64, 100]
    # the predicate the recorders use agrees with the listed schedule (all but the final step)
    assert [s for s in range(1000) if should_save(s)] == snapshot_steps(999)[:-1]
    with pytest.raises(UserError, match="ratio=1"):
        should_save(3, ratio=1)


def test_a_snapshot_is_safetensors_with_the_step_inside(tmp_path):
    model = build_model("small-cnn", 10, 1)
    rec = SnapshotRecorder(tmp_path, schedule=lambda step: step % 5 == 0)
    assert rec.maybe_save(model, 3) is None
    path = rec.maybe_save(model, 5)
    assert path == tmp_path / "step_000005.safetensors" and not list(tmp_path.glob("*.tmp"))
    saved = load_file(str(path))
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    listing = list_checkpoints(tmp_path)
    assert [(c.step, c.step_source) for c in listing.checkpoints] == [(5, "step")]


# ---- plain PyTorch -------------------------------------------------------------------------------------
def test_the_plain_pytorch_recorder_in_a_training_loop_feeds_i2x_run(tmp_path):
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rec = SnapshotRecorder(tmp_path / "snaps")
    rec.maybe_save(model, 0)
    steps = 16
    for step, (x, y) in zip(range(1, steps + 1), _loader()):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        rec.maybe_save(model, step)
    rec.save(model, steps)
    assert rec.saved == snapshot_steps(steps) == [*range(11), 15, 16]
    final = load_file(str(tmp_path / "snaps" / "step_000016.safetensors"))
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())
    first = load_file(str(tmp_path / "snaps" / "step_000000.safetensors"))
    assert not torch.equal(first["head.2.weight"], final["head.2.weight"])  # step 0 is the untrained model
    listing = list_checkpoints(tmp_path / "snaps")
    assert [c.step for c in listing.checkpoints] == snapshot_steps(steps) and listing.order == "step"
    store = _run(tmp_path / "snaps", "small-cnn", tmp_path / "an")
    assert [c["step"] for c in store.checkpoints] == snapshot_steps(steps)
    assert np.isfinite(store.cam("gradcam")[-1]).all()


# ---- Lightning -----------------------------------------------------------------------------------------
def test_the_lightning_callback_in_a_lightning_run_feeds_i2x_run(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = build_model("small-cnn", 10, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    torch.manual_seed(0)
    module = Module()
    trainer = pl.Trainer(max_steps=12, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[lightning_callback(tmp_path / "snaps")], default_root_dir=tmp_path)
    trainer.fit(module, _loader())
    names = sorted(p.name for p in (tmp_path / "snaps").iterdir())
    assert names == [f"step_{s:06d}.safetensors" for s in snapshot_steps(12)]
    final = load_file(str(tmp_path / "snaps" / "step_000012.safetensors"))
    assert all(torch.equal(final[k], v) for k, v in module.state_dict().items())  # keys carry ``model.``
    store = _run(tmp_path / "snaps", "small-cnn", tmp_path / "an")  # the walker strips the prefix
    assert [c["step"] for c in store.checkpoints] == snapshot_steps(12)


# ---- Hugging Face --------------------------------------------------------------------------------------
class _PixelDataset(torch.utils.data.Dataset):
    """Digits as the Hugging Face Trainer wants them: dicts of ``pixel_values`` and ``labels``."""

    def __init__(self) -> None:
        self.data = _digits()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, object]:
        x, y = self.data[i]
        return {"pixel_values": x, "labels": int(y)}


def _hf_train(tmp_path: Path, steps: int = 12) -> Path:
    """A tiny ViT (32x32 input, 4x4 patches, 2 layers, hidden 32) trained by the HF Trainer, snapshots recorded
    into ``snaps/`` and Trainer checkpoints every 6 steps into ``out/``; returns ``out/``."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=4, num_channels=1, num_labels=10, num_hidden_layers=2,
                                    hidden_size=32, num_attention_heads=2, intermediate_size=64)
    model = transformers.ViTForImageClassification(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=64, learning_rate=3e-3,
        save_strategy="steps", save_steps=6, report_to=[], logging_strategy="no", use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True)
    transformers.Trainer(model=model, args=args, train_dataset=_PixelDataset(),
                         callbacks=[hf_callback(tmp_path / "snaps")]).train()
    return tmp_path / "out"


def test_the_hf_callback_in_a_trainer_run_feeds_i2x_run_with_the_hf_model_spec(tmp_path):
    out = _hf_train(tmp_path)
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == \
        [f"step_{s:06d}.safetensors" for s in snapshot_steps(12)]
    spec = f"hf:{out / 'checkpoint-12'}"
    model = build_model(spec, 10, 1)
    logits = model(torch.zeros(2, 1, 32, 32))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)  # the output object's .logits
    store = _run(tmp_path / "snaps", spec, tmp_path / "an")
    assert [c["step"] for c in store.checkpoints] == snapshot_steps(12)
    assert store.attrs["layer"] == "vit.layers.0"  # the input of the last block (the class token reads the rest)
    assert store.attrs["layer_layout"]["prefix"] == 1 and store.grid == (8, 8)
    cams = store.cam("gradcam")[-1]
    assert np.isfinite(cams).all() and (cams.reshape(len(cams), -1).max(1) > 0).mean() > 0.5


@pytest.mark.slow
def test_hf_trainer_checkpoint_folders_run_with_their_own_config(tmp_path):
    out = _hf_train(tmp_path)
    assert {"config.json", "model.safetensors"} <= {p.name for p in (out / "checkpoint-6").iterdir()}
    store = _run(out, f"hf:{out / 'checkpoint-6'}", tmp_path / "an")
    assert [(c["name"], c["step"]) for c in store.checkpoints] == [("checkpoint-6", 6), ("checkpoint-12", 12)]
    assert min(store.grid) >= 4 and store.attrs["layer"] == "vit.layers.0"
    with pytest.raises(UserError, match=r"--model hf:\S+/checkpoint-(6|12) builds the model"):  # the wrong spec says which
        api.extract(config=api.RunConfig(checkpoints=str(out), model="small-cnn", limit=16), out=tmp_path / "wrong", progress=False)
    assert np.isfinite(store.cam("gradcam")[-1]).all()


def test_hf_specs_that_cannot_work_say_what_to_do(tmp_path):
    transformers = pytest.importorskip("transformers")
    with pytest.raises(UserError, match="no config.json"):
        build_model(f"hf:{tmp_path}", 10, 1)
    transformers.ViTConfig(image_size=32, patch_size=4, num_channels=1, num_labels=3, num_hidden_layers=1,
                           hidden_size=16, num_attention_heads=2, intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="3 classes and 1 input channels but the data has 10 and 1"):
        build_model(f"hf:{tmp_path}", 10, 1)
