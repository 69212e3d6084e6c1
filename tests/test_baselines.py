"""ReLLa and TRSR end to end on a tiny model: fine-tune with a context, evaluate, the CLI."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from automr.cli.context import app as context_app
from automr.cli.main import app
from automr.contexts import ContextSpec, SummaryWriter
from automr.data import PreparedDataset
from automr.recommenders.runs import FinetunedRun
from automr.testing.synthetic import save_tiny_model, synthetic_dataset


def context_spec(run):
    return FinetunedRun.open(run).context

runner = CliRunner()
TRSR_OPTIONS = ["--trsr-block-size", "4", "--trsr-max-blocks", "2", "--trsr-max-new-tokens", "3"]


@pytest.fixture(scope="module", autouse=True)
def readable_summaries():
    """The tiny random model's greedy replies decode to whitespace; prefix each with words so
    contexts are never empty (the real generation still runs)."""
    original = SummaryWriter.generate
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SummaryWriter, "generate",
                      lambda self, prompts: [f"likes {r}".strip() for r in original(self, prompts)])
        yield


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, readable_summaries):
    root = tmp_path_factory.mktemp("baselines")
    synthetic_dataset(root)
    save_tiny_model(root / "model")
    common = ["--model", str(root / "model"), "--device", "cpu", "--cache-dir",
              str(root / "cache")]
    runs = {}
    for name, extra in [("bigrec", []), ("rella", ["--context", "rella", "--context-k", "2"]),
                        ("trsr", ["--context", "trsr", *TRSR_OPTIONS])]:
        runs[name] = root / name
        result = runner.invoke(app, [
            "finetune", "--data", str(root / "prepared"), "--out", str(runs[name]),
            "--train-samples", "8", "--valid-samples", "4", "--batch-size", "4",
            "--eval-every", "2", "--quiet", *common, *extra])
        assert result.exit_code == 0, result.output
    return {"root": root, "data": str(root / "prepared"), "common": common, "runs": runs}


def test_finetune_records_the_context(workspace):
    runs = workspace["runs"]
    assert context_spec(runs["bigrec"]) is None
    assert "context" not in json.loads((runs["bigrec"] / "finetune.json").read_text())["config"]
    assert context_spec(runs["rella"]) == ContextSpec(kind="rella", k=2)
    assert context_spec(runs["trsr"]) == ContextSpec(kind="trsr", block_size=4, max_blocks=2,
                                                     max_new_tokens=3)
    summaries = list((workspace["root"] / "cache" / "trsr").glob("*.jsonl"))
    assert len(summaries) == 1 and summaries[0].read_text().count("\n") > 0


def evaluate(workspace, out, methods, *extra):
    return runner.invoke(app, [
        "evaluate", "--data", workspace["data"], "--out", str(out), "--methods", methods,
        "--samples", "3", "--layer", "2", "--num-beams", "2", "--quiet",
        *workspace["common"], *extra])


def test_evaluate_rella_and_trsr(workspace, tmp_path):
    runs, out = workspace["runs"], tmp_path / "results"
    result = evaluate(workspace, out, "rella:constrained,trsr:l2", "--rella", str(runs["rella"]),
                      "--trsr", str(runs["trsr"]))
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text())
    assert list(payload["methods"]) == ["rella:constrained", "trsr:l2"]
    assert payload["rella"] == str(runs["rella"]) and payload["trsr"] == str(runs["trsr"])
    settings = json.loads((out / "ranks" / "trsr-l2.settings.json").read_text())
    assert settings["context"] == context_spec(runs["trsr"]).to_json()
    assert settings["trsr"] == str(runs["trsr"].resolve()) and "finetuned" not in settings
    rella = json.loads((out / "contexts" / "rella-constrained.json").read_text())
    assert len(rella) == 3
    assert all(text.startswith("Earlier, the user has also interacted with: ")
               for text in rella.values())  # test samples all have long-term history
    trsr = json.loads((out / "contexts" / "trsr-l2.json").read_text())
    assert all(text.startswith("Summary of the user's long-term preferences: likes")
               for text in trsr.values())
    saved = out / "ranks" / "trsr-l2.json"
    stamp = saved.stat().st_mtime_ns
    again = evaluate(workspace, out, "trsr:l2", "--trsr", str(runs["trsr"]))
    assert again.exit_code == 0, again.output
    assert saved.stat().st_mtime_ns == stamp  # resumed from ranks/


@pytest.mark.parametrize("methods, extra, message", [
    ("rella:l2", [], "--rella RUN_DIR"),
    ("trsr:l2", ["--trsr", "bigrec"], "without a prompt context"),
    ("rella:l2", ["--rella", "trsr"], "with a trsr context"),
    ("bigrec:l2", ["--finetuned", "rella"], "evaluate it as rella:G"),
])
def test_mismatched_fine_tunes_are_clear_errors(workspace, tmp_path, methods, extra, message):
    extra = [workspace["runs"].get(x, x) if i % 2 else x for i, x in enumerate(extra)]
    result = evaluate(workspace, tmp_path, methods, *map(str, extra))
    assert result.exit_code == 2
    assert message in result.output


def test_context_show_and_trsr_commands(workspace):
    common = workspace["common"]
    shown = runner.invoke(context_app, ["show", "--data", workspace["data"], "--kind", "rella",
                                        "--samples", "2", "--context-k", "2", "--quiet",
                                        *common])
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("context: Earlier, the user has also interacted with:") == 2
    command = ["trsr", "--data", workspace["data"], "--split", "valid", "--samples", "3",
               "--seed", "1", "--quiet", *TRSR_OPTIONS, *common]
    written = runner.invoke(context_app, command)
    assert written.exit_code == 0, written.output
    assert "3 of 3 valid samples have a summary" in written.output
    assert "(0 prompts generated" not in written.output
    named = written.output.strip().rsplit(" cached) in ", 1)[1].split(", ")
    assert named and all(Path(path).is_file() for path in named), named  # not under a launcher
    again = runner.invoke(context_app, command)
    assert "(0 prompts generated" in again.output
    trsr = runner.invoke(context_app, ["show", "--data", workspace["data"], "--kind", "trsr",
                                       "--split", "valid", "--samples", "3", "--quiet",
                                       *TRSR_OPTIONS, *common])
    assert trsr.exit_code == 0, trsr.output
    assert trsr.output.count("context: Summary of the user's long-term preferences: likes") == 3
    bad = runner.invoke(context_app, ["show", "--data", workspace["data"], "--kind", "magic"])
    assert bad.exit_code == 2 and "kind" in bad.output


def test_context_show_tells_an_empty_summary_from_no_history(workspace, tmp_path, monkeypatch):
    """A sample with long-term history whose summary came out empty (a small LM may write only
    whitespace) is not said to have no long-term history."""
    monkeypatch.setattr(SummaryWriter, "generate", lambda self, prompts: [""] * len(prompts))
    common = [*workspace["common"][:-1], str(tmp_path / "cache")]  # a cache of its own
    shown = runner.invoke(context_app, ["show", "--data", workspace["data"], "--kind", "trsr",
                                        "--split", "valid", "--samples", "3", "--quiet",
                                        *TRSR_OPTIONS, *common])
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("context: (none: the summary came out empty)") == 3
    assert "no long-term history" not in shown.output


def test_finetune_rejects_bad_context_options(workspace, tmp_path):
    result = runner.invoke(app, ["finetune", "--data", workspace["data"], "--out",
                                 str(tmp_path / "x"), "--context", "trsr", "--trsr-mode", "odd",
                                 *workspace["common"]])
    assert result.exit_code == 2 and "invalid context options" in result.output
    assert PreparedDataset.load(workspace["data"]).samples("valid")
