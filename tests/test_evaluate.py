"""``automr finetune`` and ``automr evaluate`` end to end on a tiny model and synthetic data."""

import json

import pytest
from typer.testing import CliRunner

from automr.cli.main import app
from automr.evaluation.report import MetricReport
from automr.testing.synthetic import save_tiny_model, synthetic_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    synthetic_dataset(root)
    save_tiny_model(root / "model")
    return root


def test_finetune_then_evaluate_every_method(workspace, tmp_path):
    data, model = str(workspace / "prepared"), str(workspace / "model")
    run = tmp_path / "run"
    tuned = runner.invoke(app, ["finetune", "--data", data, "--out", str(run), "--model", model,
                                "--train-samples", "16", "--valid-samples", "4",
                                "--batch-size", "4", "--eval-every", "2", "--quiet",
                                "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])
    assert tuned.exit_code == 0, tuned.output
    methods = "sasrec,base:likelihood,bigrec:l2,bigrec:constrained"
    out = tmp_path / "results"
    result = runner.invoke(app, [
        "evaluate", "--data", data, "--out", str(out), "--methods", methods,
        "--finetuned", str(run), "--model", model, "--samples", "4", "--layer", "2",
        "--num-beams", "3", "--quiet", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
    ])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text())
    assert list(payload["methods"]) == methods.split(",")
    assert payload["reference"] == "bigrec:l2"
    assert payload["samples"] == 4
    assert "| sasrec |" in (out / "results.md").read_text()
    report = MetricReport.load(out / "ranks" / "bigrec-constrained.json")
    assert len(report.ranks) == 4 and all(0 <= r < 30 for r in report.ranks)
    saved = out / "ranks" / "bigrec-constrained.json"
    stamp = saved.stat().st_mtime_ns
    again = runner.invoke(app, [  # the same settings: reused, not recomputed
        "evaluate", "--data", data, "--out", str(out), "--methods", "bigrec:constrained",
        "--finetuned", str(run), "--model", model, "--samples", "4", "--layer", "2",
        "--num-beams", "3", "--quiet", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
    ])
    assert again.exit_code == 0, again.output
    assert saved.stat().st_mtime_ns == stamp
    changed = runner.invoke(app, [  # other beams: ranked again
        "evaluate", "--data", data, "--out", str(out), "--methods", "bigrec:constrained",
        "--finetuned", str(run), "--model", model, "--samples", "4", "--layer", "2",
        "--num-beams", "2", "--quiet", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
    ])
    assert changed.exit_code == 0, changed.output
    assert saved.stat().st_mtime_ns != stamp
    paired = runner.invoke(app, [  # --reference: the finished runs are paired with sasrec
        "evaluate", "--data", data, "--out", str(out), "--methods", "sasrec,bigrec:constrained",
        "--reference", "sasrec", "--finetuned", str(run), "--model", model, "--samples", "4",
        "--layer", "2", "--num-beams", "2", "--quiet", "--device", "cpu",
        "--cache-dir", str(tmp_path / "cache")])
    assert paired.exit_code == 0, paired.output
    payload = json.loads((out / "results.json").read_text())
    assert payload["reference"] == "sasrec"
    assert list(payload["paired_vs_reference"]) == ["bigrec:constrained"]
    assert "vs `sasrec`" in paired.output
    bad = runner.invoke(app, ["evaluate", "--data", data, "--out", str(out), "--methods",
                              "sasrec", "--reference", "pop", "--quiet", "--device", "cpu"])
    assert bad.exit_code == 2 and "reference 'pop' is not among" in bad.output


def test_bad_method_is_a_one_line_error(workspace, tmp_path):
    result = runner.invoke(app, ["evaluate", "--data", str(workspace / "prepared"),
                                 "--out", str(tmp_path), "--methods", "bigrec:magic"])
    assert result.exit_code == 2
    assert "unknown method" in result.output


def test_missing_finetune_is_a_clear_error(workspace, tmp_path):
    result = runner.invoke(app, ["evaluate", "--data", str(workspace / "prepared"),
                                 "--out", str(tmp_path), "--methods", "bigrec:l2"])
    assert result.exit_code == 2
    assert "--finetuned" in result.output


@pytest.mark.parametrize(("methods", "measures", "message"), [
    ("pop,cooc,pop", "ranks", "--methods names pop more than once"),
    ("pop,cooc", "likelihood", "none of pop, cooc does")])
def test_a_table_that_would_drop_a_method_is_refused(workspace, tmp_path, methods, measures,
                                                     message):
    """A repeated name was kept once, and a likelihood-only table of methods that score no
    title was written empty (exit 0)."""
    result = runner.invoke(app, ["evaluate", "--data", str(workspace / "prepared"), "--out",
                                 str(tmp_path / "out"), "--methods", methods, "--measures",
                                 measures, "--samples", "4"])
    assert result.exit_code == 2, result.output
    assert message in result.output and not (tmp_path / "out" / "results.md").exists()
