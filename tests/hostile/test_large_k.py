"""`i2x analyze --k 20000` on 200 samples warned, clamped k to the 12,800 locations and then ran for minutes at
5-6 GB with no progress. A k above the number of analysed samples (and above the default, 32, which small sets
keep) is now refused before anything is cleared."""

from __future__ import annotations

import shutil

from fixtures_pipeline import tiny_run  # noqa: F401  (pytest fixture)
from i2x.cli import main


def test_more_prototypes_than_samples_is_refused_at_once_and_keeps_the_analysis(tiny_run, tmp_path, capsys):
    out = tmp_path / "an"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("report*"))
    summary = (out / "summary.json").read_bytes()
    for k in ("20000", "201"):
        assert main(["analyze", str(out), "--k", k]) == 2
        err = capsys.readouterr().err
        assert f"i2x: error: --k {k}: more prototypes than the 200 analysed samples" in err
        assert "choose --k at most 200" in err and "Traceback" not in err
    assert (out / "summary.json").read_bytes() == summary
