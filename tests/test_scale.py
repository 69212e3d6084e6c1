"""Running at scale: the work-count script (docs/scale.md) and sharding a small memory build."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from automr.cli.main import app
from automr.testing.synthetic import save_tiny_model, synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "work_count.py"
CONFIGS = sorted((ROOT / "examples" / "configs").glob("paper-amazon-*.toml"))
STEPS = ["fine-tune BIGRec", "fine-tune ReLLa", "fine-tune TRSR", "TRSR summaries",
         "memory build", "annotate", "evaluate (Table 1)", "RQ2"]


def load_script():
    spec = importlib.util.spec_from_file_location("work_count", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_the_work_count_script_prints_every_step(config, tmp_path):
    out = tmp_path / "work.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--config", str(config), "--gpus", "8",
                          "--json", str(out)], capture_output=True, text=True, check=True)
    lines = run.stdout.splitlines()
    assert any(line.startswith("| users | ") for line in lines)  # the assumptions table
    rows = lines[lines.index(next(x for x in lines if x.startswith("| step | "))):]
    assert [row.split(" | ")[0][2:] for row in rows[2:-1]] == STEPS
    assert rows[-1].startswith("| **total**")
    result = json.loads(out.read_text())
    total = result["total"]
    assert total["h100_gpu_hours"] < total["a100_gpu_hours"]
    assert 0 < total["h100_wall_hours_8"] < total["h100_gpu_hours"]


def test_docs_scale_quotes_the_work_count_scripts_tables():
    """docs/scale.md says the script prints its tables: they must be its output, verbatim."""
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         check=True)
    assert run.stdout in (ROOT / "docs" / "scale.md").read_text()


def test_the_work_count_model_is_linear_in_the_counts(tmp_path):
    """Measured counts (a prepared dataset's stats.json) replace the assumed ones; twice the
    interactions encode twice the tokens, and Llama-2-7B has its 6.74 B parameters."""
    work = load_script()
    assert round(work.Shape().params / 1e9, 2) == 6.74
    stats = {"filtered": {"users": 100, "items": 500, "interactions": 5000},
             "samples": {"train": 3000, "valid": 500, "test": 500},
             "memory_length": {s: {"mean": 30.0} for s in ("train", "valid", "test")}}
    flops = []
    for scale in (1, 2):
        scaled = json.loads(json.dumps(stats))
        for key in ("users", "interactions"):
            scaled["filtered"][key] *= scale
        path = tmp_path / f"stats-{scale}.json"
        path.write_text(json.dumps(scaled))
        _, result = work.report(CONFIGS[0], path, 0.4, 0.6, (8,))
        assert result["population"]["assumed"] is False
        flops.append({s["name"]: s["flops"] for s in result["steps"]})
    assert flops[1]["memory build"] == pytest.approx(2 * flops[0]["memory build"])
    assert flops[1]["annotate"] == pytest.approx(flops[0]["annotate"])  # 20,000 samples


def test_memory_build_shard_elements_splits_a_small_build(tmp_path):
    synthetic_dataset(tmp_path)
    save_tiny_model(tmp_path / "model", num_layers=4)
    out = tmp_path / "mem"
    result = CliRunner().invoke(app, [
        "memory", "build", "--data", str(tmp_path / "prepared"), "--out", str(out),
        "--model", str(tmp_path / "model"), "--layer", "2", "--encoder", "item",
        "--no-store-token-states", "--shard-elements", "40", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert json.loads((out / "config.json").read_text())["shard_elements"] == 40
    assert len(index["shards"]) == len(list(out.glob("shard-*.safetensors"))) > 1


def test_each_step_is_priced_at_the_dtype_it_runs_in(tmp_path):
    """``automr annotate --dtype auto`` is float32 (eq. 5's labels), priced at the float32
    peak; a config ``dtype`` prices it in bfloat16. LoRA's frozen weights get no gradient: the
    trained layers' matrix products count twice, not three times."""
    work = load_script()
    _, auto = work.report(CONFIGS[0], None, 0.4, 0.6, (8,))
    steps = {s["name"]: s for s in auto["steps"]}
    assert steps["annotate"]["dtype"] == "float32"
    assert steps["fine-tune BIGRec"]["dtype"] == steps["memory build"]["dtype"] == "bfloat16"
    config = tmp_path / "bf16.toml"
    config.write_text(CONFIGS[0].read_text().replace("[annotate]\n",
                                                     '[annotate]\ndtype = "bfloat16"\n'))
    _, given = work.report(config, None, 0.4, 0.6, (8,))
    annotate = next(s for s in given["steps"] if s["name"] == "annotate")
    assert annotate["dtype"] == "bfloat16" and annotate["flops"] == steps["annotate"]["flops"]
    assert steps["annotate"]["h100_gpu_hours"] / annotate["h100_gpu_hours"] == pytest.approx(
        989 / 67)
    assert annotate["h100_gpu_hours"] == pytest.approx(
        steps["annotate"]["h100_gpu_hours_in_bfloat16"])
    shape = work.Shape()
    assert shape.train_layer_flops(100, 16, 0) == 2 * shape.layer_flops(100, 16, 0)


def test_each_command_is_counted_with_its_own_samples_and_batch(tmp_path):
    """A seeded subset never counts more samples than the split holds (20,000 annotated of
    3,000 training samples were counted as 20,000), and ``rq2`` is counted with its own
    ``samples``, ``batch-size`` and ``seeds`` (comma-separated too), not ``evaluate``'s."""
    work = load_script()
    stats = {"filtered": {"users": 100, "items": 500, "interactions": 5000},
             "samples": {"train": 3000, "valid": 500, "test": 500},
             "memory_length": {s: {"mean": 30.0} for s in ("train", "valid", "test")}}
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(stats))
    _, small = work.report(CONFIGS[0], path, 0.4, 0.6, (8,))
    annotate = next(s for s in small["steps"] if s["name"] == "annotate")
    assert annotate["what"].startswith("3,000 samples") and annotate["note"].endswith("x1")

    def hours(text: str) -> dict[str, float]:
        config = tmp_path / "config.toml"
        config.write_text(text)
        _, result = work.report(config, None, 0.4, 0.6, (8,))
        return {s["name"]: s["h100_gpu_hours"] for s in result["steps"]}

    base = CONFIGS[0].read_text()
    before = hours(base)
    evaluate64 = hours(base.replace("[evaluate]\n", "[evaluate]\nbatch-size = 64\n"))
    rq2_64 = hours(base.replace("[rq2]\n", "[rq2]\nbatch-size = 64\n"))
    assert evaluate64["evaluate (Table 1)"] < before["evaluate (Table 1)"]
    assert evaluate64["RQ2"] == before["RQ2"] > rq2_64["RQ2"]
    assert rq2_64["evaluate (Table 1)"] == before["evaluate (Table 1)"]
    assert work.seed_count("0,3-4") == 3 and work.seed_count("0-9") == 10
