"""A committed result recomputed from the real data by the command it records: the ML-100K
floors of docs/results/floors/test-1000.json rank every one of its 1,000 test samples as
committed, on whatever machine runs the suite (pop and cooc need no model: about 15 s)."""

import json
from pathlib import Path

from typer.testing import CliRunner

from automr.cli.main import app
from automr.evaluation import EvaluationFolder

FLOORS = Path(__file__).resolve().parents[1] / "docs" / "results" / "floors" / "test-1000.json"


def _with(command: list[str], **values: str) -> list[str]:
    """``command`` with the value after each ``--name`` replaced (``data=`` -> ``--data``)."""
    args = list(command)
    for name, value in values.items():
        args[args.index(f"--{name}") + 1] = value
    return args


def test_the_committed_floors_are_recomputed_exactly_by_their_command(ml100k_prepared,
                                                                       tmp_path):
    exported = json.loads(FLOORS.read_text())
    [command] = exported["commands"]
    assert command[:2] == ["automr", "evaluate"]
    args = _with(command, data=str(ml100k_prepared[1]), out=str(tmp_path / "floors"))
    result = CliRunner().invoke(app, args[1:])
    assert result.exit_code == 0, result.output
    folder = EvaluationFolder(tmp_path / "floors")
    assert set(exported["ranks"]) == {"pop", "cooc"}
    for method, committed in exported["ranks"].items():
        report = folder.report(method)
        assert len(committed) == 1000
        assert dict(zip(report.sample_ids, report.ranks, strict=True)) == committed, method
