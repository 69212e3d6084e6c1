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


def test_the_committed_rq3_is_recomputed_from_its_evaluations_export(ml100k_prepared):
    """docs/results/automr/rq3-1000.json (how far back AutoMR's retrieved elements lie) from
    the committed per-sample values of the evaluation it analysed, on the real data."""
    from automr.experiments.rq3 import analyze_rq3

    results = FLOORS.parents[1] / "automr"
    committed = json.loads((results / "rq3-1000.json").read_text())
    dataset = ml100k_prepared[0]
    result = analyze_rq3(results / "memory-1000.json", dataset,
                         reference=committed["reference"], method=committed["method"],
                         measure=committed["measure"], rows=len(committed["shown"]))
    recomputed = result.to_json(dataset)
    assert recomputed.keys() >= committed.keys() - {"commands"}
    for key in committed.keys() - {"commands", "results"}:
        assert recomputed[key] == committed[key], key
