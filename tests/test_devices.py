"""Devices and dtypes: every command that loads a language model takes --dtype beside
--device, and SASRec and the retriever train on the device they are given."""

from typing import Any

import attrs
import torch
from typer.testing import CliRunner

import automr.experiments.retriever
import automr.methods.sasrec
from automr.cli.main import app, command_tree
from automr.methods.registry import Workspace, build_method
from automr.testing.synthetic import synthetic_dataset

LOADS_NO_LANGUAGE_MODEL = {("retriever", "train")}
"""Commands with --device that train or run no LM (so --dtype would mean nothing)."""


def commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = []
    for name, sub in sorted(getattr(group, "commands", {}).items()):
        found += commands(sub, (*path, name)) if hasattr(sub, "commands") else [((*path, name),
                                                                                 sub)]
    return found


def test_every_command_with_a_device_takes_a_dtype():
    with_device = []
    for path, command in commands(command_tree()):
        names = {param.name for param in command.params}
        if "device" in names:
            with_device.append(path)
            if path not in LOADS_NO_LANGUAGE_MODEL:
                assert "dtype" in names, f"automr {' '.join(path)} has --device but no --dtype"
    assert {("evaluate",), ("memory", "build"), ("annotate",), ("model", "info"),
            ("retriever", "train")} <= set(with_device)


def test_retriever_train_passes_its_device(tmp_path, monkeypatch):
    seen = {}

    def train_retriever(*args, device, **kwargs):
        seen["device"] = device
        return {"train_samples": 1, "valid_samples": 0, "valid": None}

    monkeypatch.setattr(automr.experiments.retriever, "train_retriever", train_retriever)
    result = CliRunner().invoke(app, [
        "retriever", "train", "--annotations", str(tmp_path), "--data", str(tmp_path),
        "--memory", str(tmp_path), "--out", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert seen["device"] == "cpu"


def test_sasrec_trains_on_the_workspace_device(tmp_path, monkeypatch):
    seen = {}
    fit = automr.methods.sasrec.fit_sasrec

    def fit_sasrec(*args, device, **kwargs):
        seen["device"] = device
        return fit(*args, device=device, **kwargs)

    monkeypatch.setattr(automr.methods.sasrec, "fit_sasrec", fit_sasrec)
    dataset = synthetic_dataset(tmp_path)
    method = build_method("sasrec", Workspace(dataset, device="cpu", progress=False)).method
    method.config = attrs.evolve(method.config, max_epochs=1)
    method.rank(dataset.samples("test")[:2])
    assert seen["device"] == torch.device("cpu")
    assert method.model().item_emb.weight.device == torch.device("cpu")
