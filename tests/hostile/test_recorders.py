"""The snapshot recorder never loses a snapshot: it refuses to replace a step another run left, takes only integer
steps of 0 or more, and says plainly when its directory is a file."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from i2x.errors import UserError
from i2x.io.models import SmallCNN
from i2x.io.snapshots import SnapshotRecorder


def _weights(seed: int) -> SmallCNN:
    model = SmallCNN(num_classes=3, in_channels=1, width=4)
    for p in model.parameters():
        p.data.fill_(float(seed))
    return model


def test_a_step_already_on_disk_is_refused_and_kept(tmp_path):
    SnapshotRecorder(tmp_path).save(_weights(1), 3)  # another run, or an earlier one
    before = (tmp_path / "step_000003.safetensors").read_bytes()
    with pytest.raises(UserError, match=r"step_000003\.safetensors: a snapshot of step 3 is already there"):
        SnapshotRecorder(tmp_path).save(_weights(2), 3)
    assert (tmp_path / "step_000003.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000003.safetensors"]


def test_the_same_recorder_saves_a_step_once(tmp_path):
    rec = SnapshotRecorder(tmp_path)
    assert rec.save(_weights(1), 4) is not None
    assert rec.save(_weights(2), 4) is None  # the final save of a run whose last step was on the schedule
    assert float(load_file(str(tmp_path / "step_000004.safetensors"))["head.2.bias"][0]) == 1.0


@pytest.mark.parametrize("step", [3.7, -5, "3", True, 3.0])
def test_only_integer_steps_of_zero_or_more_are_taken(tmp_path, step):
    rec = SnapshotRecorder(tmp_path)
    rec.save(_weights(1), 3)
    with pytest.raises(UserError, match="a snapshot step is an integer of 0 or more"):
        rec.save(_weights(2), step)
    with pytest.raises(UserError, match="integer of 0 or more"):
        rec.maybe_save(_weights(2), step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000003.safetensors"]
    assert float(load_file(str(tmp_path / "step_000003.safetensors"))["head.2.bias"][0]) == 1.0


def test_numpy_integer_steps_are_steps(tmp_path):
    assert SnapshotRecorder(tmp_path).save(_weights(1), np.int64(7)) == tmp_path / "step_000007.safetensors"


def test_a_file_as_the_directory_is_a_clear_error(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(UserError, match=r"notes\.txt'\): is a file, not a directory"):
        SnapshotRecorder(notes)
    assert notes.read_text() == "mine"
