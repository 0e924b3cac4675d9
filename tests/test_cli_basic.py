"""The command line: help everywhere, help text on every option, and user errors as one line with
exit status 2 (in-process and through the installed console script)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from i2x.cli import build_parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, by name (new subcommands are picked up automatically)."""
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "usage: i2x" in out and all(name in out for name in subcommands())
    assert main([]) == 0 and "usage: i2x" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("i2x ")


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    assert f"usage: i2x {name}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["(top level)", *sorted(subcommands())])
def test_every_option_has_help_text(name):
    parser = build_parser() if name == "(top level)" else subcommands()[name]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help is not argparse.SUPPRESS and action.help.strip(), (
            f"i2x {name}: {label} has no help text")


def assert_one_line_user_error(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("i2x: error: ") and "Traceback" not in stderr
    assert all(f in lines[0] for f in fragments), lines[0]


def test_extract_on_a_missing_directory_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "no_such_checkpoints"
    assert main(["extract", str(missing), "--out", str(tmp_path / "analysis")]) == 2
    assert_one_line_user_error(capsys.readouterr().err, str(missing), "does not exist")


def test_train_with_an_unknown_data_spec_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "--data", "imagenet", "--out", str(tmp_path)]) == 2
    assert_one_line_user_error(capsys.readouterr().err, "--data imagenet", "unknown data spec")


@pytest.mark.parametrize("option, fragment", [(["--max-group-samples", "-5"], "--max-group-samples -5"),
                                              (["--jobs", "0"], "--jobs 0")])
def test_bad_group_options_are_one_line_and_exit_2(tmp_path, capsys, option, fragment):
    assert main(["analyze", str(tmp_path), *option]) == 2
    assert_one_line_user_error(capsys.readouterr().err, fragment)


def test_train_on_images_too_small_for_the_model_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "--input-size", "2", "--out", str(tmp_path / "ck")]) == 2
    assert_one_line_user_error(capsys.readouterr().err, "--model small-cnn cannot run", "--input-size")
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_train_command_writes_snapshots(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), y_train=np.arange(40) % 4,
             x_test=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8), y_test=np.arange(8) % 4)
    out = tmp_path / "ckpts"

    code = main(["train", "--data", f"npz:{data}", "--input-size", "16", "--out", str(out), "--epochs", "2",
                 "--batch-size", "16", "--freeze-backbone-epochs", "1"])

    assert code == 0
    assert "trained 2 epochs" in capsys.readouterr().out
    payloads = [torch.load(out / f"epoch_{e}.pt", weights_only=True) for e in (1, 2)]
    assert [p["metrics"]["phase"] for p in payloads] == ["frozen-backbone", "full"]
    assert payloads[0]["state_dict"]["head.2.weight"].shape == (4, 64)  # 4 classes found in the data


def test_the_installed_console_script_reports_a_user_error_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("i2x")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "i2x.cli"]
    missing = tmp_path / "missing"
    done = subprocess.run([*command, "extract", str(missing), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert_one_line_user_error(done.stderr, str(missing))
