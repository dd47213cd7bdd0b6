"""``segdet rcnn --fraction``: a quick try on part of a set; out of range is one line, nothing written."""

from __future__ import annotations

import argparse

import pytest

from segdet.cli.main import main


@pytest.mark.parametrize("fraction", ["0", "1.5", "-0.1"])
def test_a_fraction_out_of_range_is_one_line(tmp_path, capsys, fraction):
    out = tmp_path / "rcnn"
    assert main(["rcnn", "--synthetic", "4", "--out", str(out), "--fraction", fraction]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--fraction must be in (0, 1]" in err[0]
    assert not out.exists()


def test_the_fraction_reaches_the_runs_data_config(tmp_path):
    from segdet.cli.rcnn import run_config

    args = argparse.Namespace(
        path=None,
        synthetic=8,
        synthetic_size=32,
        out=tmp_path / "r",
        fraction=0.5,
        format=None,
        val=None,
        seed=0,
    )
    assert run_config(args, {}).data.fraction == 0.5
