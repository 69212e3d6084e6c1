"""``automr model fetch|info`` through Typer's CliRunner."""

import shutil
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
from typer.testing import CliRunner

import automr.llm.loading as loading
from automr.cli.main import app
from automr.testing.tiny import tiny_llama_config, tiny_model, tiny_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model(tiny_llama_config(num_layers=4)).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_info_on_a_local_folder(tiny_folder):
    result = runner.invoke(app, ["model", "info", str(tiny_folder)])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.output.splitlines() if line.strip())
    assert lines["layers"] == "4"
    assert lines["hidden_size"] == "32"
    assert len(lines["fingerprint"]) == 64


def test_missing_model_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["model", "info", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "could not load model" in result.output
    assert "Traceback" not in result.output


def test_fetch_refuses_other_models():
    result = runner.invoke(app, ["model", "fetch", "gpt2"])
    assert result.exit_code == 2


@pytest.mark.real_model
def test_fetch_and_info_on_the_embedded_default():
    fetched = runner.invoke(app, ["model", "fetch"])
    assert fetched.exit_code == 0, fetched.output
    result = runner.invoke(app, ["model", "info"])
    assert result.exit_code == 0, result.output
    assert "layers" in result.output and " 30" in result.output
    assert "576" in result.output


def test_a_hub_model_has_one_fingerprint_from_its_first_download_on(tiny_folder, tmp_path,
                                                                     monkeypatch):
    """The first load of a hub id (downloaded then) is named as every later, cached load."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))

    def download(name: str):  # what a real download leaves in the hub cache
        repo = hub / f"models--{name.replace('/', '--')}"
        snapshot = repo / "snapshots" / ("0" * 40)
        if not snapshot.is_dir():
            shutil.copytree(tiny_folder, snapshot)
            (repo / "refs").mkdir()
            (repo / "refs" / "main").write_text("0" * 40)
        return snapshot

    def from_hub(auto):
        return SimpleNamespace(from_pretrained=lambda name, **kw: auto.from_pretrained(
            download(name), **kw))

    monkeypatch.setattr(loading, "AutoTokenizer", from_hub(loading.AutoTokenizer))
    monkeypatch.setattr(loading, "AutoModelForCausalLM", from_hub(loading.AutoModelForCausalLM))
    first = loading.load_model("org/tiny", device="cpu", cache_dir=tmp_path / "cache")
    again = loading.load_model("org/tiny", device="cpu", cache_dir=tmp_path / "cache")
    assert first.fingerprint() == again.fingerprint()
