"""Naming the classes: ``--class-names`` / ``--class-names-file`` reach the store (and so every page), checked
against the data's class count; without them the data's own names stay."""

from __future__ import annotations

import argparse

import pytest

from i2x import api
from i2x.cli.options import add_options, config_from
from i2x.errors import UserError
from i2x.io.store import Store
from i2x.stages.config import RunConfig
from fixtures_pipeline import HOSTILE_NAMES, tiny_run  # noqa: F401  (pytest fixture)

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine, the last")


def _extract(tiny_run, out, **kw):
    root = tiny_run.parent
    config = RunConfig(checkpoints=str(root / "ck"), data=f"npz:{root / 'd.npz'}", input_size=32, limit=20,
                       first=1, methods=("gradcam",), batch_size=20, **kw)
    api.extract(config=config, out=out, progress=False)
    return Store.open(out)


def test_the_data_names_stay_without_the_option(tiny_run):
    assert Store.open(tiny_run).class_names == HOSTILE_NAMES


def test_names_from_the_option_and_from_a_file_reach_the_store(tiny_run, tmp_path):
    store = _extract(tiny_run, tmp_path / "a", class_names=tuple(n.replace(",", "") for n in NAMES))
    assert store.class_names == [n.replace(",", "") for n in NAMES]
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(NAMES) + "\n\n", encoding="utf-8")  # a comma inside a name; blank lines dropped
    store = _extract(tiny_run, tmp_path / "b", class_names_file=str(names_file))
    assert store.class_names == list(NAMES)
    assert store.config["class_names"] == list(NAMES) and "class_names_file" not in store.config


def test_wrong_count_or_both_options_are_refused(tiny_run, tmp_path):
    with pytest.raises(UserError, match=r"--class-names.*3 names given but .* has 10 classes"):
        _extract(tiny_run, tmp_path / "a", class_names=("a", "b", "c"))
    with pytest.raises(UserError, match="named twice"):
        _extract(tiny_run, tmp_path / "b", class_names=("a",) * 10)
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(NAMES), encoding="utf-8")
    with pytest.raises(UserError, match="--class-names and --class-names-file"):
        _extract(tiny_run, tmp_path / "c", class_names=NAMES, class_names_file=str(names_file))
    with pytest.raises(UserError, match="--class-names-file .*cannot read"):
        _extract(tiny_run, tmp_path / "d", class_names_file=str(tmp_path / "missing.txt"))


def test_the_cli_options_parse():
    parser = argparse.ArgumentParser()
    add_options(parser, RunConfig)
    args = parser.parse_args(["--class-names", "cat, dog", "--class-names-file", "n.txt"])
    config = config_from(args, RunConfig, checkpoints="ck")
    assert config.class_names == ("cat", "dog") and config.class_names_file == "n.txt"
