"""`segdet data stats ... | head`: the reader closing the pipe is not an error of segdet's."""

from __future__ import annotations

import pytest

from segdet.cli import data as data_cli
from segdet.cli.main import main


def test_a_closed_pipe_ends_quietly(capsys, monkeypatch, tmp_path):
    """It printed "segdet: error: segdet: Broken pipe" and exited 1; now nothing on stderr and 141, what
    a shell tool killed by SIGPIPE returns (128 + 13)."""

    def closed_pipe(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(data_cli, "run", closed_pipe)
    assert main(["data", "stats", str(tmp_path)]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied", "x.json")])
def test_other_os_errors_are_still_one_line(capsys, monkeypatch, tmp_path, error):
    def fail(args):
        raise error

    monkeypatch.setattr(data_cli, "run", fail)
    assert main(["data", "stats", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "segdet: error: x.json: Permission denied\n"
