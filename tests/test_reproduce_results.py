"""A committed result recomputed from the real data by the command it records: the ML-100K
floors of docs/results/floors/test-1000.json rank every one of its 1,000 test samples as
committed, on whatever machine runs the suite (pop and cooc need no model: about 15 s)."""

import itertools
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


def _committed_rq3(ml100k_prepared):
    """The analysis docs/results/automr/rq3-1000.json records, made again from the committed
    export of its evaluation, and that record."""
    from automr.experiments.rq3 import analyze_rq3

    results = FLOORS.parents[1] / "automr"
    committed = json.loads((results / "rq3-1000.json").read_text())
    result = analyze_rq3(results / "memory-1000.json", ml100k_prepared[0],
                         reference=committed["reference"], method=committed["method"],
                         measure=committed["measure"], rows=len(committed["shown"]))
    return result, committed


def test_the_committed_rq3_is_recomputed_from_its_evaluations_export(ml100k_prepared):
    """docs/results/automr/rq3-1000.json (how far back AutoMR's retrieved elements lie) from
    the committed per-sample values of the evaluation it analysed, on the real data."""
    result, committed = _committed_rq3(ml100k_prepared)
    recomputed = result.to_json(ml100k_prepared[0])
    assert recomputed.keys() >= committed.keys() - {"commands"}
    for key in committed.keys() - {"commands", "results"}:
        assert recomputed[key] == committed[key], key


def test_the_committed_rq3s_age_bins_hold_whole_interactions(ml100k_prepared, tmp_path,
                                                             monkeypatch):
    """Memories reach 100 interactions back: bins 3.37 wide held 3 or 4 whole numbers, so the
    drawn histogram rose and fell in a sawtooth (48.2, 56.3, 37.4, 45.2 uniform) that no data
    made. Each bin now holds the same whole numbers (the last may be cut by the oldest)."""
    from matplotlib.axes import Axes

    from automr.experiments.rq3_report import plot_ages

    result, _ = _committed_rq3(ml100k_prepared)
    drawn, real = [], Axes.hist

    def kept(self, values, *args, bins=None, **kwargs):
        drawn.append(list(bins))
        return real(self, values, *args, bins=bins, **kwargs)

    monkeypatch.setattr(Axes, "hist", kept)
    plot_ages(result, tmp_path / "ages")
    back = drawn[0]
    widths = {b - a for a, b in itertools.pairwise(back)}
    assert all(float(edge).is_integer() for edge in back) and len(widths) == 1, back
    assert back[0] == min(len(r.sample.recent) + 1 for r in result.evaluated if r.retrieved)
