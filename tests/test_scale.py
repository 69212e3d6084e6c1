"""Running at scale: sharding a small memory build."""

import json

from typer.testing import CliRunner

from automr.cli.main import app
from automr.testing.synthetic import save_tiny_model, synthetic_dataset


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
