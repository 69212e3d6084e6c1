"""CLI plumbing: lazy sub-commands, ``--config`` TOML defaults and the run record."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import attrs
import pytest
from typer.testing import CliRunner

from automr.cli.config import check_config
from automr.cli.main import COMMANDS, app, command_tree
from automr.cli.record import RUNS_FILE, fingerprints
from automr.data import PreparedDataset
from automr.data.fingerprint import dataset_fingerprint
from automr.storage import partial_path
from automr.testing.synthetic import save_tiny_model, synthetic_dataset, write_synthetic_csv

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "examples" / "configs" / "ml100k-cpu.toml"
runner = CliRunner()


def output_in_a_fresh_process(args: list[str]) -> str:
    """``automr ARGS``'s output in a new interpreter, checked to have imported none of torch,
    transformers and peft."""
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from automr.cli.main import app\n"
        f"result = CliRunner().invoke(app, {args!r}, terminal_width=200)\n"
        "assert result.exit_code == 0, result.output\n"
        "print(result.output)\n"
        "print('heavy:', sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.rstrip().endswith("heavy: []")
    return done.stdout


def test_help_lists_every_command_without_importing_torch():
    output = output_in_a_fresh_process(["--help"])
    for name, entry in COMMANDS.items():
        assert f"{name} " in output and entry.help.split()[0] in output


def test_version_names_automr_and_its_numeric_libraries_without_importing_them():
    from importlib.metadata import version

    import automr

    first = output_in_a_fresh_process(["--version"]).splitlines()[0]
    assert first.startswith(f"automr {automr.__version__} (")
    assert automr.__version__ == version("automr")  # one version: pyproject reads automr's
    for name in ("torch", "transformers", "peft"):
        assert f"{name} {version(name)}" in first


def test_every_registered_command_resolves_with_its_own_help():
    tree = command_tree()
    assert list(tree.commands) == list(COMMANDS)
    for name, entry in COMMANDS.items():
        command = tree.commands[name]
        first = " ".join((command.help or "").split("\n\n")[0].split())
        assert command.name == name
        assert entry.help == first, f"{name}: registry help differs from the command's"


def _leaf_commands(command, path=()):
    subs = getattr(command, "commands", None)  # duck-typed: typer may vendor click
    if not subs:
        return [(" ".join(path), command)]
    return [leaf for name, sub in subs.items() for leaf in _leaf_commands(sub, (*path, name))]


def test_every_option_of_every_command_says_what_it_is_for():
    leaves = _leaf_commands(command_tree())
    assert len(leaves) >= len(COMMANDS)
    missing = [f"automr {path} {param.opts[0]}" for path, command in leaves
               for param in command.params
               if param.param_type_name == "option" and not param.help]
    assert not missing, missing


def test_every_help_text_is_shown_whole():
    """Typer reads help as rich markup: '[default: the first]' or '[min, max]' was a style
    tag and vanished from --help. Every command's and option's help renders as written."""
    from rich.markup import escape
    from rich.text import Text

    leaves = _leaf_commands(command_tree())
    helps = [part.help for _, command in leaves for part in (command, *command.params)
             if getattr(part, "help", None)]
    assert helps and all(escape(Text.from_markup(h).plain) == h for h in helps)
    for args, shown in ((["evaluate"], "with [default: the first bigrec method, else the"),
                        (["bench", "annotate"], "the median over rounds [min, max]")):
        result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "250"})
        assert shown in " ".join(result.output.split()), result.output


def test_the_shared_combiner_option_names_every_combiner():
    from automr.cli.common import CombinerOption
    from automr.combiners import COMBINERS

    help_text = CombinerOption.__metadata__[0].help
    assert all(name in help_text for name in COMBINERS), help_text


def test_a_sub_command_help_loads_only_on_request():
    result = runner.invoke(app, ["memory", "build", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "--pooling" in result.output and "--encoder" in result.output
    assert "--install-completion" not in runner.invoke(app, ["finetune", "--help"]).output


def test_the_example_config_matches_the_real_commands():
    defaults = check_config(EXAMPLE_CONFIG)
    assert defaults["finetune"]["train_samples"] == 2048
    assert defaults["memory"]["build"]["encoder"] == "item"
    assert defaults["data"]["prepare"]["ml-100k"]["out"] == "runs/ml-100k"


_FOLDERS = {"data", "out", "finetuned", "memory", "retriever", "annotations", "quiet"}


def _setting(options: dict[str, object]) -> dict[str, object]:
    """Option values with numbers as floats (``1e-3`` is 0.001), the folders and --quiet left
    out: they name a machine's runs, not the setting."""
    def value(v: object) -> object:
        if isinstance(v, bool):
            return v
        try:
            return float(str(v))
        except ValueError:
            return str(v)

    return {k: value(v) for k, v in options.items() if k not in _FOLDERS}


def _argv_options(argv: list[str]) -> dict[str, object]:
    options: dict[str, object] = {}
    for i, word in enumerate(argv):
        if word.startswith("--"):
            flag = i + 1 == len(argv) or argv[i + 1].startswith("--")
            options[word[2:].replace("-", "_")] = True if flag else argv[i + 1]
    return options


def test_the_example_config_holds_the_settings_of_the_results_run():
    """cli.md: ml100k-cpu.toml "holds the sizes of the Results run". Each table's settings are
    those of the command that a committed result of docs/results.md records."""
    defaults = check_config(EXAMPLE_CONFIG)
    results = ROOT / "docs" / "results"
    finetune = json.loads((results / "bigrec" / "finetune-l15-2k.json").read_text())["command"]
    retrievers = json.loads((results / "automr" / "retrievers-1000.json").read_text())
    evaluations = json.loads((results / "bigrec" / "test-1000.json").read_text())
    recorded = {"finetune": (defaults["finetune"], finetune.split()),
                "retriever train": (defaults["retriever"]["train"], retrievers["commands"][1]),
                "evaluate": (defaults["evaluate"], evaluations["commands"][1])}
    for name, (table, argv) in recorded.items():
        assert _setting(table) == _setting(_argv_options(argv)), name


@pytest.mark.parametrize("name", ["paper-amazon-movie.toml", "paper-amazon-book.toml"])
def test_the_paper_setting_configs_match_the_real_commands(name):
    defaults = check_config(EXAMPLE_CONFIG.parent / name)
    assert defaults["finetune"]["model"] == "meta-llama/Llama-2-7b-hf"
    assert defaults["data"]["prepare"]["amazon"]["recent_k"] == 10
    assert defaults["memory"]["build"]["layer"] == defaults["finetune"]["lora_from_layer"]
    # rq3 reads the Table 1 evaluation: its two methods must be among those evaluated there
    evaluated = defaults["evaluate"]["methods"].split(",")
    assert defaults["rq3"]["results"] == defaults["evaluate"]["out"]
    assert {defaults["rq3"]["method"], defaults["rq3"]["reference"]} <= set(evaluated)


@pytest.mark.parametrize("text, expected", [
    ("[finetun]\nepochs = 1\n", "[finetun] is not a command"),
    ("[finetune]\ntrian_samples = 3\n", "[finetune] trian_samples: no such option"),
    ("[finetune]\ntrain-samples = '3'\n", "[finetune] train-samples: expected an integer"),
    ("[memory.build]\nstore-token-states = 1\n", "store-token-states: expected true or false"),
    ("[finetune]\nlr = true\n", "[finetune] lr: expected a number"),
    ("[finetune]\nlora_r = 4\nlora-r = 8\n", "lora-r: the option is set twice"),
    ("finetune = 3\n", "finetune must be a table"),
    ("[compare]\nmethod = 'a=f/bigrec:l2'\n", "[compare] method: expected a list of strings"),
    ("[retriever]\nepochs = 3\n", "epochs stands directly under [retriever], a group of "
                                   "commands; put it in the table of one of them "
                                   "([retriever.train], [retriever.score])"),
    ("[retriever.score]\nretriever = [5]\n", "retriever: expected a list of strings"),
    ("[finetune\n", "is not valid TOML"),
])
def test_config_errors_are_one_line_with_exit_code_2(tmp_path, text, expected):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = runner.invoke(app, ["--config", str(config), "data", "stats", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert expected in result.output and str(config) in result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output


def test_processes_compare_every_config_file_given(tmp_path):
    """With --config given twice click reads the last, and processes compared the first: a
    launcher's processes whose last files differed went on, each with its own settings (the
    config review)."""
    from automr.cli.main import invocation

    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text("[evaluate]\nsamples = 5\n")
    second.write_text("[evaluate]\nsamples = 6\n")
    argv = ["automr", "--config", str(first), f"--config={second}", "evaluate"]
    before = invocation(argv)
    second.write_text("[evaluate]\nsamples = 7\n")
    assert invocation(argv) != before
    assert invocation(argv)[1][0] == before[1][0]


def test_a_config_file_that_is_not_utf8_is_a_one_line_error(tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes("[finetune]\n# caf\u00e9\n".encode("latin-1"))
    result = runner.invoke(app, ["--config", str(config), "data", "stats", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "is not valid TOML" in result.output and "Traceback" not in result.output


def test_a_whole_number_is_a_valid_value_of_a_float_option(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("[finetune]\nlr = 1\nlora-dropout = 0\n")
    defaults = check_config(config)["finetune"]
    assert (defaults["lr"], defaults["lora_dropout"]) == (1, 0)


def test_a_missing_config_file_is_an_error(tmp_path):
    result = runner.invoke(app, ["--config", str(tmp_path / "nope.toml"), "data", "stats", "."])
    assert result.exit_code == 2 and "nope.toml does not exist" in result.output


def test_config_values_replace_defaults_and_the_command_line_wins(tmp_path, monkeypatch):
    import automr.cli.data as data_cli

    interactions, items = write_synthetic_csv(tmp_path / "raw")
    config = tmp_path / "run.toml"
    config.write_text(
        "[data.prepare.csv]\n"
        f"interactions = '{interactions}'\nitems = '{items}'\n"
        f"out = '{tmp_path / 'from-file'}'\n"
        "train_months = 2\nrecent-k = 2\nmin-item-interactions = 1\n"
        "merge-same-title = true\n")  # a flag set in the file is turned off on the line
    out = tmp_path / "from-cli"
    read = hashlib.sha256(config.read_bytes()).hexdigest()
    prepare = data_cli.prepare_csv

    def edited_meanwhile(*args, **kwargs):  # the record keeps the content the run read
        config.write_text(config.read_text() + "# edited\n")
        return prepare(*args, **kwargs)

    monkeypatch.setattr(data_cli, "prepare_csv", edited_meanwhile)
    result = runner.invoke(app, ["--config", str(config), "data", "prepare", "csv",
                                 "--out", str(out), "--recent-k", "3", "--no-merge-same-title"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "from-file").exists()
    protocol = json.loads((out / "config.json").read_text())["protocol"]
    assert (protocol["train_months"], protocol["recent_k"]) == (2, 3)
    (record,) = [json.loads(line) for line in (out / RUNS_FILE).read_text().splitlines()]
    assert record["command"] == "automr data prepare csv"
    assert record["config_file"] == str(config)
    assert record["config_sha256"] == read != hashlib.sha256(config.read_bytes()).hexdigest()
    assert record["argv"][:3] == ["automr", "--config", str(config)]
    assert record["params"]["recent_k"] == 3 and record["params"]["train_months"] == 2
    assert record["params"]["interactions"] == str(interactions)
    assert record["sources"]["recent_k"] == "command line"
    assert record["params"]["merge_same_title"] is False
    assert record["sources"]["merge_same_title"] == "command line"
    assert record["sources"]["train_months"] == "config file"
    assert record["sources"]["max_history"] == "default"


def test_a_leading_tilde_in_a_path_option_is_the_home_folder(tmp_path, monkeypatch):
    """``--out=~/x`` and a config file's ``"~/x"`` reach automr unexpanded (a shell expands a
    ``~`` only at the start of a word): they name the home folder, never a folder ``~``."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    write_synthetic_csv(home / "raw")
    config = tmp_path / "run.toml"
    config.write_text("[data.prepare.csv]\nitems = '~/raw/items.csv'\nout = '~/prepared'\n"
                      "train_months = 2\nmin-item-interactions = 1\n")
    result = runner.invoke(app, ["--config=" + str(config), "data", "prepare", "csv",
                                 "--interactions=~/raw/interactions.csv"])
    assert result.exit_code == 0, result.output
    assert (home / "prepared" / "config.json").is_file()
    assert (home / "prepared" / RUNS_FILE).is_file()
    result = runner.invoke(app, ["evaluate", "--data=~/prepared", "--out=~/evaluation",
                                 "--methods", "pop", "--samples", "4", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (home / "evaluation" / "results.json").is_file()
    (record,) = [json.loads(line)
                 for line in (home / "evaluation" / RUNS_FILE).read_text().splitlines()]
    assert record["params"]["out"] == str(home / "evaluation")
    result = runner.invoke(app, ["compare", "--out=~/compared", "--method=a=~/evaluation/pop"])
    assert result.exit_code == 0, result.output
    assert (home / "compared" / "results.json").is_file()
    assert not (cwd / "~").exists()


def test_a_tilde_in_a_path_option_held_as_a_str_is_the_home_folder(tmp_path, monkeypatch):
    """typer before 0.29 (the pin allows 0.20.1) holds a Path option as the str typed until
    the command runs (click's Path type does): only Path values were expanded, and `evaluate
    --out=~/x` wrote a folder named ``~`` in the current one."""
    import click

    from automr.cli.common import expand_home

    monkeypatch.setenv("HOME", str(tmp_path))
    seen = []
    command = click.Command("c", callback=lambda out, outs, n: seen.append((out, outs, n)),
                            params=[click.Option(["--out"], type=click.Path()),
                                    click.Option(["--outs"], type=click.Path(), multiple=True),
                                    click.Option(["--n"], type=str)])
    expand_home(command)
    command.main(["--out=~/x", "--outs=~/a", "--outs=b", "--n=~5"], standalone_mode=False)
    assert seen == [(str(tmp_path / "x"), (str(tmp_path / "a"), "b"), "~5")]


@pytest.mark.parametrize("args", [
    ["data", "prepare", "ml-100k", "--out=~automr-no-such-user/data"],
    ["--config=~automr-no-such-user/run.toml", "data", "stats", "x"],
    ["compare", "--out=o", "--method=a=~automr-no-such-user/evaluation/pop"],
])
def test_a_tilde_naming_no_user_is_one_line(tmp_path, monkeypatch, args):
    """``~NAME`` is NAME's home folder; where there is no user NAME, pathlib raises a bare
    RuntimeError ("Could not determine home directory"), which came out as a traceback."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ~automr-no-such-user/")
    assert line.endswith("there is no user 'automr-no-such-user' whose home folder "
                         "~automr-no-such-user is")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("infra")
    synthetic_dataset(root)
    save_tiny_model(root / "model", num_layers=4)
    return root


def test_a_run_record_names_the_cuda_device_the_command_ran_on(workspace, tmp_path,
                                                               monkeypatch):
    """cuda_device was the machine's current CUDA device whatever --device said: a CPU run on a
    GPU machine was recorded with the GPU's name, a cuda:1 run with device 0's."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU {device}")
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--data", str(workspace / "prepared"), "--out",
                                 str(out), "--methods", "pop", "--samples", "3", "--device",
                                 "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / RUNS_FILE).read_text())["cuda_device"] is None
    from automr.cli.record import _cuda_device

    assert _cuda_device(torch, "cuda:1") == "GPU cuda:1"
    assert _cuda_device(torch, None) is None and _cuda_device(None, "cuda") is None


def test_a_run_record_is_appended_after_each_successful_run(workspace, tmp_path):
    data, out = workspace / "prepared", tmp_path / "memory"
    config = tmp_path / "memory.toml"
    config.write_text("[memory.build]\nlayer = 2\nencoder = 'item'\nbatch_size = 4\n"
                      "device = 'cpu'\n")
    args = ["--config", str(config), "memory", "build", "--data", str(data), "--out", str(out),
            "--model", str(workspace / "model"), "--batch-size", "8", "--quiet"]
    for _ in range(2):  # the second run resumes (nothing left) and is recorded too
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / RUNS_FILE).read_text().splitlines()]
    assert len(records) == 2
    record = records[0]
    assert record["command"] == "automr memory build"
    assert record["params"]["layer"] == 2 and record["sources"]["layer"] == "config file"
    assert record["params"]["batch_size"] == 8
    assert record["sources"]["batch_size"] == "command line"
    assert record["sources"]["pooling"] == "default" and record["params"]["out"] == str(out)
    assert set(record["versions"]) == {"automr", "torch", "transformers", "peft", "python"}
    assert record["torch_threads"] >= 1 and "cuda_device" in record
    assert record["seconds"] >= 0 and record["started"] <= record["finished"]
    assert record["fingerprints"]["data"] == dataset_fingerprint(PreparedDataset.load(data))
    found = fingerprints({"memory": out, "data": None})
    assert set(found["memory"]) == {p.name for p in out.glob("*.json")} and found["memory"]


def test_a_record_after_one_a_stop_cut_short_is_read_back(tmp_path):
    """A record cut mid-line (a full disk, a kill) must not take the next run's with it."""
    from automr.cli.record import append_record
    from automr.storage import read_run_records

    (tmp_path / RUNS_FILE).write_text('{"command": "automr finetune", "par')
    append_record(tmp_path, {"command": "automr memory build"})
    append_record(tmp_path, {"command": "automr annotate"})
    assert [r["command"] for r in read_run_records(tmp_path)] == [
        "automr memory build", "automr annotate"]


def test_a_failed_run_writes_no_record(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["memory", "build", "--data", str(tmp_path / "missing"),
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert not (out / RUNS_FILE).exists()


def test_input_folder_fingerprints_hash_top_level_json_only(tmp_path):
    folder = tmp_path / "ft"
    (folder / "best").mkdir(parents=True)
    (folder / "finetune.json").write_text("{}")
    (folder / "best" / "adapter_config.json").write_text("{}")
    (folder / "weights.bin").write_bytes(b"x")
    found = fingerprints({"finetuned": folder, "memory": None})
    assert found == {"finetuned": {"finetune.json": hashlib.sha256(b"{}").hexdigest()}}


def test_a_repeated_folder_option_is_fingerprinted_per_folder(tmp_path):
    first, second = tmp_path / "r0", tmp_path / "r1"
    for folder, text in ((first, "{}"), (second, "[]")):
        folder.mkdir()
        (folder / "config.json").write_text(text)
    found = fingerprints({"retriever": [first, second]})
    assert found == {"retriever": {
        str(first): {"config.json": hashlib.sha256(b"{}").hexdigest()},
        str(second): {"config.json": hashlib.sha256(b"[]").hexdigest()}}}


def test_a_folder_given_from_home_is_fingerprinted(tmp_path, monkeypatch):
    """``--retriever mlp=~/r1`` and ``--finetuned ~/ft``: the command reads them from the home
    folder, and the record hashes them there (it recorded no file)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("r1", "ft"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    found = fingerprints({"retriever": ["mlp=~/r1"], "finetuned": Path("~/ft")})
    digest = {"config.json": hashlib.sha256(b"{}").hexdigest()}
    assert found == {"retriever": {"mlp=~/r1": digest}, "finetuned": digest}


def only_record(app, out: Path) -> dict:
    """The one run record of the typer ``app``'s command run with ``--out OUT``."""
    import typer
    from click.testing import CliRunner as ClickRunner

    from automr.cli.record import attach_run_record

    command = typer.main.get_command(app)
    attach_run_record(command)
    result = ClickRunner().invoke(command, ["--out", str(out)])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / RUNS_FILE).read_text().splitlines()]
    return record


def test_a_run_record_holds_the_git_commit_and_the_returned_metrics(tmp_path):
    import typer

    single = typer.Typer()

    @single.command()
    def measure(out: Annotated[Path, typer.Option()]) -> dict:
        return {"recall@10": 0.25, "per_method": {"bigrec": {"ndcg@10": 0.125}}}

    record = only_record(single, tmp_path / "run")
    assert record["metrics"] == {"recall@10": 0.25, "per_method": {"bigrec": {"ndcg@10": 0.125}}}
    assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)


def test_a_run_record_names_the_commit_the_run_started_from(tmp_path, monkeypatch):
    """A commit made while a long run works is not the code that ran."""
    import typer
    from click.testing import CliRunner as ClickRunner

    import automr.cli.record as record_module

    commits = iter([{"commit": "a" * 40, "dirty": False}, {"commit": "b" * 40, "dirty": False}])
    monkeypatch.setattr(record_module, "git_state", lambda: next(commits))
    single = typer.Typer()

    @single.command()
    def work(out: Annotated[Path, typer.Option()]) -> None:
        record_module.git_state()  # someone commits meanwhile

    command = typer.main.get_command(single)
    record_module.attach_run_record(command)
    result = ClickRunner().invoke(command, ["--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line)
                 for line in (tmp_path / "run" / RUNS_FILE).read_text().splitlines()]
    assert record["git"]["commit"] == "a" * 40


def test_a_run_record_names_the_automr_version_that_ran(tmp_path, monkeypatch):
    """The running code's version, not the installed package's metadata: a checkout on
    PYTHONPATH beside another (or no) installed automr recorded that one's (or null)."""
    import importlib.metadata

    import typer

    import automr

    installed = importlib.metadata.version

    def not_installed(name: str) -> str:
        if name == "automr":
            raise importlib.metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    monkeypatch.setattr(automr, "__version__", "9.8.7")
    single = typer.Typer()

    @single.command()
    def work(out: Annotated[Path, typer.Option()]) -> None:
        pass

    record = only_record(single, tmp_path / "run")
    assert record["versions"]["automr"] == "9.8.7"
    assert record["versions"]["torch"] == installed("torch")


@pytest.mark.parametrize("main", [True, False])
def test_a_launched_command_leaves_after_the_main_process_wrote_its_record(tmp_path,
                                                                           monkeypatch, main):
    """Every process of a finished command meets at a barrier after the run record: one that
    exits first (and aborts in torch's teardown) cannot have the main one killed mid-write."""
    import typer
    from click.testing import CliRunner as ClickRunner

    import automr.cli.record as record_module

    met = []
    monkeypatch.setattr(record_module.distributed, "launched", lambda: True)
    monkeypatch.setattr(record_module.distributed, "is_main", lambda: main)
    monkeypatch.setattr(record_module.distributed, "world_size", lambda: 2)
    monkeypatch.setattr(record_module.distributed, "barrier",
                        lambda: met.append((tmp_path / "run" / RUNS_FILE).is_file()))
    single = typer.Typer()

    @single.command()
    def work(out: Annotated[Path, typer.Option()]) -> None:
        pass

    command = typer.main.get_command(single)
    record_module.attach_run_record(command)
    result = ClickRunner().invoke(command, ["--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert met == [main]  # the main process had written its record by then


def test_git_state_is_none_outside_a_checkout(tmp_path):
    from automr.cli.record import git_state

    assert git_state(tmp_path) is None
    assert git_state(ROOT / "src" / "automr")["commit"] == subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
        check=True).stdout.strip()


@pytest.mark.parametrize("args, says", [
    (["evaluate", "--data", "d", "--out", "o", "--methods", "pop", "--k", "0"], "--k must be > 0"),
    (["evaluate", "--data", "d", "--out", "o", "--methods", "pop", "--combiner", "foo"],
     "--combiner 'foo'"),
    (["rq2", "--data", "d", "--out", "o", "--finetuned", "f", "--memory", "m", "--retriever",
      "r", "--batch-size", "0"], "--batch-size must be > 0"),
    (["ablate", "--data", "d", "--finetuned", "f", "--out", "o", "--test-samples", "0"],
     "--test-samples must be > 0"),
    (["memory", "build", "--data", "d", "--out", "o", "--encoder", "foo"], "encoder 'foo'"),
    (["annotate", "--data", "d", "--memory", "m", "--finetuned", "f", "--out", "o",
      "--combiner", "foo"], "--combiner 'foo'"),
    (["retriever", "train", "--annotations", "a", "--data", "d", "--memory", "m", "--out", "o",
      "--monitor", "foo"], "--monitor 'foo': choose one of kl, top1, regret"),
    (["retriever", "train", "--annotations", "a", "--data", "d", "--memory", "m", "--out", "o",
      "--epochs", "0"], "--epochs must be >= 1"),
    (["annotate", "--data", "d", "--memory", "m", "--finetuned", "f", "--out", "o",
      "--element-subset", "-1"], "--element-subset must be >= 0 (0 = every element)"),
    # where 0 means all, none or the default, a negative value was told "must be > 0"
    (["annotate", "--data", "d", "--memory", "m", "--finetuned", "f", "--out", "o",
      "--samples", "-1"], "--samples must be >= 0 (0 = every sample of the split), got -1"),
    (["finetune", "--data", "d", "--out", "o", "--train-samples", "-1"],
     "--train-samples must be >= 0 (0 = every training sample), got -1"),
    (["finetune", "--data", "d", "--out", "o", "--max-grad-norm", "-1"],
     "--max-grad-norm must be >= 0 (0 = no clipping), got -1.0"),
    (["finetune", "--data", "d", "--out", "o", "--checkpoint-every", "-2"],
     "--checkpoint-every must be >= 0 (0 = at each validation), got -2"),
    (["memory", "build", "--data", "d", "--out", "o", "--shard-elements", "-1"],
     "--shard-elements must be >= 0 (0 = the encoder's default), got -1"),
    (["annotate", "--data", "d", "--memory", "m", "--finetuned", "f", "--out", "o",
      "--element-batch", "0"], "--element-batch must be > 0"),
    (["evaluate", "--data", "d", "--out", "o", "--methods", "pop", "--batch-size", "0"],
     "--batch-size must be > 0"),
    (["evaluate", "--data", "d", "--out", "o", "--methods", "pop", "--dtype", "fp16"],
     "unknown dtype 'fp16'"),  # ignored where no method loads a model
    (["evaluate", "--data", "d", "--out", "o", "--methods", "pop", "--device", "gpu"],
     "unknown device 'gpu'"),  # so was a device, and recorded as the run's
    (["memory", "build", "--data", "d", "--out", "o", "--dtype", "bf16"], "unknown dtype 'bf16'"),
    (["finetune", "--data", "d", "--out", "o", "--valid-samples", "0"],
     "--valid-samples must be > 0"),
    (["finetune", "--data", "d", "--out", "o", "--lora-dropout", "1.5"],
     "--lora-dropout must be < 1"),
    (["finetune", "--data", "d", "--out", "o", "--lora-alpha", "0"],
     "--lora-alpha must be > 0"),  # scales the update by alpha / r: 0 trained nothing
    (["finetune", "--data", "d", "--out", "o", "--autocast", "foo"],
     "--autocast 'foo': choose one of none, bf16, fp16"),
    (["finetune", "--data", "d", "--out", "o", "--memory-retrieval", "foo"],
     "--memory-retrieval 'foo': choose one of"),  # checked without --memory too
    (["finetune", "--data", "d", "--out", "o", "--trsr-mode", "foo"],
     "--trsr-mode 'foo': choose"),  # checked without --context too
    (["recommend", "u", "--data", "d", "--finetuned", "f", "--memory", "m", "--retriever", "r",
      "--combiner", "foo"], "combiner 'foo'"),
    (["bench", "ground", "--data", "d", "--grounders", ","], "no grounder"),
    (["bench", "ground", "--data", "d", "--grounders", "l2,cosine"],
     "--grounders: unknown cosine; choose from l2"),  # it loaded the model first
    (["finetune", "--data", "d", "--out", "o", "--context", "foo"],
     "--context 'foo': choose one of rella, trsr"),
    (["finetune", "--data", "d", "--out", "o", "--context", "rella", "--context-k", "0"],
     "--context-k must be > 0"),
    (["finetune", "--data", "d", "--out", "o", "--memory", "m", "--memory-combiner",
      "append-token"], "--memory-combiner 'append-token': choose one of"),
    (["context", "show", "--data", "d", "--kind", "foo"], "--kind 'foo': choose one of"),
    (["context", "trsr", "--data", "d", "--trsr-mode", "foo"], "--trsr-mode 'foo': choose"),
    (["compare", "--out", "o", "--method", "a=e/pop", "--method", "a=f/pop"],
     "--method names 'a' twice"),
], ids=lambda value: " ".join(value[:2]) if isinstance(value, list) else None)
def test_a_refused_option_value_is_one_line_before_any_work(args, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no input exists: the option is refused before it is read
    result = runner.invoke(app, args)
    text = result.output.strip()
    assert result.exit_code == 2, result.output
    assert text.startswith("error: ") and "\n" not in text and "Traceback" not in text, text
    assert says in text, text


@pytest.mark.parametrize("name", ["oracle", "random", "random seed 3"])
def test_a_scored_retriever_cannot_take_a_reference_rows_name(name):
    from automr.errors import AutomrError
    from automr.experiments.retriever import score_retrievers

    with pytest.raises(AutomrError, match="reference rows"):
        score_retrievers("a", "d", "m", {name: object()})


@pytest.mark.parametrize(("error", "line"), [
    (PermissionError(13, "Permission denied", "out"), "cannot use out: permission denied"),
    (IsADirectoryError(21, "Is a directory", ".o.partial-1", None, "o"),  # os.replace: target
     "cannot use o: it is a folder, not a file"),
    (FileNotFoundError(2, "No such file or directory", "x"), None),  # not a user's path error
    (FileNotFoundError(2, "No such file or directory", "o/ranks/x.json"), None),  # inside --out
    (FileNotFoundError(2, "No such file or directory", "p"),  # a folder above --out
     "cannot use p: it does not exist and cannot be created there"),
    (PermissionError(13, "Permission denied", str(partial_path(Path("p/o")))),  # beside --out
     "cannot use p/o: permission denied"),
    (PermissionError(13, "Permission denied"), None),  # no path to name
    (KeyError("bug"), None),
])
def test_only_os_errors_about_a_path_become_one_line(error, line):
    from automr.cli.common import path_error

    assert path_error(error, [Path("p/o"), Path("o")]) == line


class StandInRun:
    """A fine-tuned run whose checks pass, its memory itself, its load the keywords given."""

    def check_plain(self):
        pass

    def check_dataset(self, dataset):
        pass

    def open_memory(self, folder):
        return self  # a memory whose dataset check passes, too

    def load(self, **keywords):
        return keywords


@pytest.fixture
def any_device(monkeypatch):
    """Let a command take a device this machine lacks (``cuda``) or a made-up one (``cpu:1``,
    to see it passed on): its work is replaced, the options are what is tested."""
    import torch

    monkeypatch.setattr("automr.devices.resolve_device", lambda device="auto": torch.device("cpu"))


@pytest.mark.usefixtures("any_device")
def test_annotate_ablate_and_demo_take_float32_for_dtype_auto_on_every_device(monkeypatch,
                                                                            tmp_path):
    """Eq. 5's gains are small differences of log-likelihoods that bfloat16 moves (measured
    in docs/results.md), so `annotate --dtype auto` loads float32 even where CUDA would give
    bfloat16; a dtype given by name is kept, and the other commands' auto is unchanged."""
    from automr.cli.common import Runtime
    from automr.errors import AutomrError
    from automr.recommenders.runs import FinetunedRun

    assert Runtime(dtype="auto", exact=True).keywords()["dtype"] == "float32"
    assert Runtime(dtype="bfloat16", exact=True).keywords()["dtype"] == "bfloat16"
    assert Runtime(dtype="auto").keywords()["dtype"] == "auto"
    loads = []

    class Run(StandInRun):
        def load(self, **keywords):
            loads.append(keywords)
            raise AutomrError("stop here")

    monkeypatch.setattr(FinetunedRun, "open", classmethod(lambda cls, path: Run()))
    from automr.data import PreparedDataset

    monkeypatch.setattr(PreparedDataset, "load", classmethod(lambda cls, folder: None))
    ablations = []
    monkeypatch.setattr("automr.experiments.ablation.run_ablation",
                        lambda *args, **keywords: ablations.append(keywords["dtype"]) or 1 / 0)
    result = runner.invoke(app, ["ablate", "--data", str(tmp_path), "--finetuned",
                                 str(tmp_path), "--out", str(tmp_path / "b"), "--device", "cuda"])
    assert ablations == ["float32"], result.output  # every ablation cell is eq. 5 gains
    demos = []  # the demo annotates and ends with likelihood differences (it ran bf16 on CUDA)
    monkeypatch.setattr("automr.experiments.demo.run_demo",
                        lambda out, config, **keywords: demos.append(
                            (keywords["dtype"], config.likelihood_samples,
                             config.lora_targets)) or 1 / 0)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--device", "cuda",
                                 "--likelihood-samples", "7", "--lora-targets", "qkv_proj, "])
    assert demos == [("float32", 7, ("qkv_proj",))], result.output
    for given, expected in ((["--dtype", "auto"], "float32"), ([], "float32"),
                            (["--dtype", "bfloat16"], "bfloat16")):
        result = runner.invoke(app, ["annotate", "--data", str(tmp_path), "--memory",
                                     str(tmp_path), "--finetuned", str(tmp_path), "--out",
                                     str(tmp_path / "a"), "--device", "cuda", *given])
        assert "stop here" in result.output and loads[-1]["dtype"] == expected, result.output


@pytest.mark.usefixtures("any_device")
@pytest.mark.parametrize("measures,given,expected", [
    ("ranks,likelihood", [], "float32"), ("likelihood", ["--dtype", "auto"], "float32"),
    ("likelihood", ["--dtype", "bfloat16"], "bfloat16"), ("ranks", [], "auto"),
])
def test_evaluate_takes_float32_for_dtype_auto_with_the_likelihood_measure(
        monkeypatch, tmp_path, measures, given, expected):
    """Paired likelihood differences are small differences of log-likelihoods (bfloat16 moved
    eq. 5's by 0.1 nats), so `--measures likelihood` makes `auto` float32 as annotate's;
    ranking alone keeps `auto` (bfloat16 on CUDA)."""
    calls = []
    monkeypatch.setattr("automr.experiments.evaluate.evaluate_methods",
                        lambda *args, **keywords: calls.append(keywords["dtype"]) or 1 / 0)
    result = runner.invoke(app, ["evaluate", "--data", str(tmp_path), "--out",
                                 str(tmp_path / "e"), "--methods", "bigrec:l2", "--measures",
                                 measures, "--device", "cuda", *given])
    assert calls == [expected], result.output


@pytest.mark.usefixtures("any_device")
@pytest.mark.parametrize("measure,given,expected", [
    ("likelihood", [], "float32"), ("likelihood", ["--dtype", "bfloat16"], "bfloat16"),
    ("ranks", [], "auto"),
])
def test_rq2_takes_float32_for_dtype_auto_with_the_likelihood_measure(
        monkeypatch, tmp_path, measure, given, expected):
    """rq2's likelihood measure pairs AutoMR with random retrieval by the same small
    log-likelihood differences as `evaluate --measures likelihood`: `auto` is float32 there
    too, not bfloat16 on CUDA."""
    calls = []
    monkeypatch.setattr("automr.experiments.rq2.run_rq2",
                        lambda *args, **keywords: calls.append(keywords["dtype"]) or 1 / 0)
    result = runner.invoke(app, ["rq2", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                                 "--finetuned", str(tmp_path), "--memory", str(tmp_path),
                                 "--retriever", str(tmp_path), "--measure", measure,
                                 "--grounder", "likelihood", "--device", "cuda", *given])
    assert calls == [expected], result.output


def test_rq2_names_its_measure_option_in_a_refusal(tmp_path):
    """It named the config's field: 'measures must be a non-empty subset of ...'."""
    result = runner.invoke(app, ["rq2", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                                 "--finetuned", str(tmp_path), "--memory", str(tmp_path),
                                 "--retriever", str(tmp_path), "--measure", "foo"])
    assert result.exit_code == 2
    assert "--measure must be one of ranks, likelihood, got 'foo'" in result.output


def test_evaluate_help_names_every_method_kind_and_grounder():
    """The --methods help is written by hand (building it from the registry would load it for
    --help); it must still name every kind of METHODS and every grounder."""
    import inspect
    import re

    from automr.cli.evaluate import evaluate_command
    from automr.methods.registry import GROUNDERS, METHODS

    annotation = inspect.signature(evaluate_command).parameters["methods"].annotation
    text = next(m.help for m in annotation.__metadata__ if getattr(m, "help", None))
    named = set(re.findall(r"[a-z][a-z0-9-]*", text))
    assert set(METHODS) <= named and set(GROUNDERS) <= named, text


class Stop(Exception):
    """Raised by a stand-in for a command's library call once it has recorded its arguments."""


def recorded(calls):
    """A stand-in for a library function: records its arguments, then stops the command."""
    def call(*args, **keywords):
        calls.append((args, keywords))
        raise Stop

    return call


def invoked(monkeypatch, target: str, args: list[str]) -> list:
    """The calls ``target`` (:func:`recorded`) receives when the CLI runs ``args``."""
    calls: list = []
    monkeypatch.setattr(target, recorded(calls))
    result = runner.invoke(app, args)
    assert isinstance(result.exception, Stop), result.output
    return calls


def recorded_with_loads(monkeypatch, target: str) -> tuple[list, list]:
    """``target`` recorded (:func:`recorded`), the model load recorded with the runtime's
    keywords and the dataset load a stand-in: ``(calls, loads)``."""
    from automr.cli.common import Runtime

    calls, loads = [], []
    monkeypatch.setattr(target, recorded(calls))
    monkeypatch.setattr(Runtime, "load_model",
                        lambda self, name: loads.append((name, self.keywords())) or "loaded")
    monkeypatch.setattr(PreparedDataset, "load", classmethod(lambda cls, folder: "dataset"))
    return calls, loads


RUNTIME_GIVEN = ["--device", "cpu:1", "--dtype", "float16", "--cache-dir", "c"]
RUNTIME_KEYWORDS = {"device": "cpu:1", "dtype": "float16", "cache_dir": Path("c")}


@pytest.mark.usefixtures("any_device")
def test_evaluate_passes_every_option_on(monkeypatch, tmp_path):
    """Each evaluate option reaches EvalConfig's field of its name, not its default or another
    option's value (a swapped or dropped option would go unnoticed by the results' shape)."""
    from automr.experiments.eval_config import EvalConfig
    from automr.methods.registry import Artifacts

    calls = invoked(monkeypatch, "automr.experiments.evaluate.evaluate_methods", [
        "evaluate", "--data", "d", "--out", "o", "--methods", "bigrec:l2,automr:l2",
        "--finetuned", "f", "--memory", "m", "--retriever", "r", "--rella", "rl", "--trsr", "t",
        "--model", "lm", "--combiner", "append-token", "--k", "2", "--split", "valid",
        "--samples", "5", "--batch-size", "3", "--layer", "7", "--num-beams", "6",
        "--exclude-seen", "--seed", "4", "--retrieval-seed", "9", "--tune-samples", "11",
        "--reference", "automr:l2", "--resample", "users", "--quiet", *RUNTIME_GIVEN])
    (args, keywords), = calls
    assert args == (Path("d"), ["bigrec:l2", "automr:l2"], Path("o"), EvalConfig(
        split="valid", max_samples=5, seed=4, batch_size=3, layer=7, num_beams=6,
        exclude_seen=True, combiner="append-token", k=2, retrieval_seed=9, tune_samples=11,
        reference="automr:l2", resample="users"), Artifacts(model="lm", finetuned="f", memory="m",
                                          retriever="r", rella="rl", trsr="t"))
    assert keywords == {"progress": False, **RUNTIME_KEYWORDS}
    calls.clear()  # 0 means all samples and the grounder's beams
    runner.invoke(app, ["evaluate", "--data", "d", "--out", "o", "--samples", "0"])
    config = calls[0][0][3]
    assert (config.max_samples, config.num_beams, config.layer) == (None, None, None)


@pytest.mark.usefixtures("any_device")
def test_memory_build_passes_every_option_on(monkeypatch, tmp_path):
    from automr.memory import MemoryConfig, Pooling

    calls, loads = recorded_with_loads(monkeypatch, "automr.memory.build_memory")
    result = runner.invoke(app, [
        "memory", "build", "--data", "d", "--out", "o", "--model", "lm", "--layer", "2",
        "--encoder", "item", "--pooling", "last", "--no-store-token-states",
        "--storage-dtype", "float16", "--batch-size", "5", "--shard-elements", "7", "--quiet",
        *RUNTIME_GIVEN])
    assert isinstance(result.exception, Stop), result.output
    assert loads == [("lm", RUNTIME_KEYWORDS)]
    assert calls == [(("loaded", "dataset", 2, MemoryConfig(
        encoder="item", pooling=Pooling(kind="last"), store_token_states=False,
        storage_dtype="float16", shard_elements=7), Path("o")),
        {"batch_size": 5, "progress": False})]


@pytest.mark.usefixtures("any_device")
def test_annotate_passes_every_option_on(monkeypatch, tmp_path):
    from automr.annotation.run import AnnotateConfig
    from automr.recommenders.runs import FinetunedRun

    calls = []
    monkeypatch.setattr(FinetunedRun, "open", classmethod(lambda cls, path: StandInRun()))
    monkeypatch.setattr(PreparedDataset, "load", classmethod(lambda cls, folder: "dataset"))
    monkeypatch.setattr("automr.annotation.run.annotate_dataset", recorded(calls))
    result = runner.invoke(app, [
        "annotate", "--data", "d", "--memory", "m", "--finetuned", "f", "--out", "o",
        "--samples", "5", "--split", "valid", "--combiner", "prepend-token",
        "--element-batch", "3", "--element-subset", "4", "--element-seed", "6", "--seed", "7",
        "--quiet", *RUNTIME_GIVEN])
    assert isinstance(result.exception, Stop), result.output
    (args, keywords), = calls
    assert args[0] == RUNTIME_KEYWORDS and args[1] == "dataset" and args[3:] == (
        Path("o"), AnnotateConfig(split="valid", max_samples=5, seed=7, combiner="prepend-token",
                                  element_batch=3, element_subset=4, element_seed=6))
    assert keywords == {"progress": False}


def test_retriever_train_passes_every_option_on(monkeypatch, tmp_path):
    from automr.retrievers import RetrieverTrainingConfig

    calls = invoked(monkeypatch, "automr.experiments.retriever.train_retriever", [
        "retriever", "train", "--annotations", "a", "--data", "d", "--memory", "m", "--out",
        "o", "--label-form", "paper", "--temperature", "0.5", "--valid-fraction", "0.3",
        "--lr", "0.02", "--epochs", "3", "--patience", "4", "--monitor", "top1", "--seed", "5",
        "--normalize", "--device", "cpu:1", "--quiet"])
    assert calls == [((Path("a"), Path("d"), Path("m"), Path("o"), "paper", 0.5, 0.3,
                       RetrieverTrainingConfig(lr=0.02, max_epochs=3, patience=4,
                                               monitor="top1", seed=5, normalize=True)),
                      {"progress": False, "device": "cpu:1"})]


@pytest.mark.usefixtures("any_device")
def test_recommend_passes_every_option_on(monkeypatch, tmp_path):
    calls = invoked(monkeypatch, "automr.experiments.recommend.recommendations", [
        "recommend", "u1", "u2", "--data", "d", "--finetuned", "f", "--memory", "m",
        "--retriever", "r", "--top", "3", "--split", "valid", "--grounder", "l2", "--combiner",
        "append-token", "--k", "2", "--no-exclude-seen", "--num-beams", "5", *RUNTIME_GIVEN])
    assert calls == [((Path("d"), ["u1", "u2"], Path("f"), Path("m"), Path("r"), 3, "valid",
                       "l2", "append-token", 2, "cpu:1", Path("c"), "float16", False, 5), {})]
    calls.clear()
    runner.invoke(app, ["recommend", "u1", "--data", "d", "--finetuned", "f", "--memory", "m",
                        "--retriever", "r"])
    assert calls[0][0][-2:] == (True, None)  # exclude seen; 0 beams: the grounder's default


@pytest.mark.usefixtures("any_device")
def test_demo_ablate_and_rq2_pass_every_option_on(monkeypatch, tmp_path):
    from automr.experiments.ablation import AblationConfig
    from automr.experiments.demo import DemoConfig
    from automr.experiments.eval_config import EvalConfig

    calls = invoked(monkeypatch, "automr.experiments.demo.run_demo", [
        "demo", "--out", "o", "--layer", "2", "--train-samples", "3", "--annotate-samples",
        "4", "--test-samples", "5", "--likelihood-samples", "6", "--encoder", "window",
        "--combiner", "prepend-token", "--model", "lm", "--lora-targets", "q_proj",
        "--data", "d", "--seed", "8", "--quiet", *RUNTIME_GIVEN])
    (args, keywords), = calls
    assert args == (Path("o"), DemoConfig(
        model="lm", layer=2, train_samples=3, annotate_samples=4, test_samples=5,
        likelihood_samples=6, encoder="window", combiner="prepend-token", seed=8,
        lora_targets=("q_proj",)))
    assert {k: v for k, v in keywords.items() if k != "say"} == {
        "progress": False, "dataset_dir": Path("d"), **RUNTIME_KEYWORDS}
    calls.clear()
    monkeypatch.setattr("automr.experiments.ablation.run_ablation", recorded(calls))
    result = runner.invoke(app, [
        "ablate", "--data", "d", "--finetuned", "f", "--out", "o", "--encoders", "window",
        "--layers", "1,2", "--combiners", "concat", "--retrievers", "mlp,oracle",
        "--train-samples", "3", "--test-samples", "4", "--label-form", "paper",
        "--temperature", "0.5", "--seed", "6", "--resample", "users", "--quiet",
        *RUNTIME_GIVEN])
    assert isinstance(result.exception, Stop), result.output
    (args, keywords), = calls
    assert args == (Path("d"), Path("f"), Path("o"), AblationConfig(
        encoders=("window",), layers=(1, 2), combiners=("concat",),
        retrievers=("mlp", "oracle"), train_samples=3, test_samples=4, label_form="paper",
        temperature=0.5, seed=6, resample="users"))
    assert {k: v for k, v in keywords.items() if k != "say"} == {
        "progress": False, **RUNTIME_KEYWORDS}
    calls.clear()
    monkeypatch.setattr("automr.experiments.rq2.run_rq2", recorded(calls))
    result = runner.invoke(app, [
        "rq2", "--data", "d", "--out", "o", "--finetuned", "f", "--memory", "m",
        "--retriever", "r1", "--retriever", "r2", "--seeds", "1-2,5", "--grounder", "l2",
        "--samples", "3", "--seed", "4", "--num-beams", "5", "--combiner", "append-token",
        "--k", "2", "--exclude-seen", "--batch-size", "6", "--quiet", *RUNTIME_GIVEN])
    assert isinstance(result.exception, Stop), result.output
    (args, keywords), = calls
    assert args == (Path("d"), Path("o"))
    assert {k: v for k, v in keywords.items() if k != "say"} == {
        "finetuned": Path("f"), "memory": Path("m"), "retrievers": [Path("r1"), Path("r2")],
        "seeds": [1, 2, 5], "grounder": "l2", "progress": False, "config": EvalConfig(
            max_samples=3, seed=4, batch_size=6, num_beams=5, combiner="append-token", k=2,
            exclude_seen=True), **RUNTIME_KEYWORDS}


@pytest.mark.usefixtures("any_device")
def test_finetune_passes_every_option_on(monkeypatch, tmp_path):
    from automr.contexts.spec import ContextSpec
    from automr.memory import MemoryStore
    from automr.recommenders.finetune_config import FinetuneConfig, MemoryTraining

    calls, loads = recorded_with_loads(monkeypatch, "automr.recommenders.finetune.finetune")
    monkeypatch.setattr(MemoryStore, "open", classmethod(lambda cls, folder: ("memory", folder)))
    common = [
        "finetune", "--data", "d", "--out", "o", "--model", "lm", "--train-samples", "3",
        "--valid-samples", "4", "--epochs", "5", "--batch-size", "6", "--grad-accum", "7",
        "--lr", "0.02", "--warmup-steps", "8", "--schedule", "cosine", "--max-grad-norm",
        "0.5", "--lora-r", "9", "--lora-alpha", "10", "--lora-dropout", "0.1",
        "--lora-targets", "q_proj,v_proj", "--lora-from-layer", "2", "--loss-on", "sequence",
        "--cache-lower", "--eval-every", "11", "--checkpoint-every", "12", "--autocast",
        "bf16", "--patience", "13", "--seed", "14", "--quiet", *RUNTIME_GIVEN]
    config = FinetuneConfig(
        max_train_samples=3, max_valid_samples=4, epochs=5, batch_size=6, grad_accum=7,
        lr=0.02, warmup_steps=8, schedule="cosine", max_grad_norm=0.5, lora_r=9,
        lora_alpha=10, lora_dropout=0.1, target_modules=("q_proj", "v_proj"),
        lora_from_layer=2, loss_on="sequence", cache_lower=True, eval_every=11,
        checkpoint_every=12, autocast="bf16", patience=13, seed=14)
    for given, expected, memory in [  # a prompt context, or memory (not both: refused)
            (["--context", "trsr", "--context-k", "15", "--trsr-block-size", "16",
              "--trsr-max-blocks", "17", "--trsr-mode", "hierarchical",
              "--trsr-max-new-tokens", "18"],
             attrs.evolve(config, context=ContextSpec(
                 kind="trsr", k=15, block_size=16, max_blocks=17, mode="hierarchical",
                 max_new_tokens=18)), None),
            (["--memory", "m", "--memory-share", "0.25", "--memory-retrieval", "semantic",
              "--memory-combiner", "prepend-token"],
             attrs.evolve(config, memory=MemoryTraining(
                 share=0.25, retrieval="semantic", combiner="prepend-token")),
             ("memory", Path("m")))]:
        calls.clear()
        loads.clear()
        result = runner.invoke(app, [*common, *given])
        assert isinstance(result.exception, Stop), result.output
        assert loads == [("lm", RUNTIME_KEYWORDS)]
        (args, keywords), = calls
        assert args == ("loaded", "dataset", Path("o"), expected)
        assert keywords == {"progress": False, "cache_dir": Path("c"), "memory": memory}


@pytest.mark.usefixtures("any_device")
def test_bench_commands_pass_every_option_on(monkeypatch, tmp_path):
    """Each option of bench annotate, encode, ground and finetune reaches the bench function;
    the model loads from --model with the runtime options (the bench tests' real runs pass
    either way: the embedded default loads from the cache, one round is timed like three)."""
    bench = "automr.experiments.bench"
    calls, loads = recorded_with_loads(monkeypatch, f"{bench}.bench_annotate")
    result = runner.invoke(app, [
        "bench", "annotate", "--out", "o", "--model", "lm", "--layer", "2", "--prompt-tokens",
        "5", "--target-tokens", "4", "--elements", "6", "--combiner", "append-token",
        "--element-subset", "3", "--element-prefix", "7", "--repeats", "2", *RUNTIME_GIVEN])
    assert isinstance(result.exception, Stop), result.output
    assert calls == [(("loaded", 2, 5, 4, 6, "append-token"),
                      {"repeats": 2, "element_subset": 3, "element_prefix": 7})]
    result = runner.invoke(app, ["bench", "annotate", "--label", "a/b"])  # part of a file name
    assert result.exit_code == 2 and "--label 'a/b': use letters" in result.output
    assert len(calls) == len(loads) == 1, result.output
    monkeypatch.setattr(f"{bench}.bench_encode", recorded(calls))
    result = runner.invoke(app, [
        "bench", "encode", "--data", "d", "--out", "o", "--model", "lm", "--layer", "2",
        "--texts", "5", "--batch-size", "4", "--repeats", "2", *RUNTIME_GIVEN])
    assert isinstance(result.exception, Stop), result.output
    assert calls[1:] == [(("loaded", "dataset", 2, 5, 4, 2), {})]
    monkeypatch.setattr(f"{bench}.bench_ground", recorded(calls))
    result = runner.invoke(app, [
        "bench", "ground", "--data", "d", "--out", "o", "--model", "lm", "--grounders",
        "likelihood, l2", "--samples", "5", "--batch-size", "4", "--layer", "2", "--repeats",
        "2", *RUNTIME_GIVEN])
    assert isinstance(result.exception, Stop), result.output
    assert calls[2:] == [(("loaded", "dataset", ("likelihood", "l2"), 5, 4, 2),
                          {"cache_dir": Path("c"), "repeats": 2})]
    assert loads == [("lm", RUNTIME_KEYWORDS)] * 3
    monkeypatch.setattr(f"{bench}.bench_finetune", recorded(calls))
    result = runner.invoke(app, [
        "bench", "finetune", "--data", "d", "--out", "o", "--model", "lm", "--layer", "2",
        "--steps", "5", "--batch-size", "4", "--repeats", "2", *RUNTIME_GIVEN])
    assert isinstance(result.exception, Stop), result.output
    assert calls[3:] == [(("lm", "dataset", 2, 5, 4), {**RUNTIME_KEYWORDS, "repeats": 2})]


def test_rq3_passes_every_option_on(monkeypatch, tmp_path):
    calls = invoked(monkeypatch, "automr.experiments.rq3_report.run_rq3", [
        "rq3", "--results", "r", "--data", "d", "--memory", "m", "--reference", "base:l2",
        "--reference-results", "rr", "--method", "random:l2", "--rows", "3", "--out", "o",
        "--measure", "likelihood"])
    assert calls == [((Path("r"), Path("d"), Path("o")), {
        "reference": "base:l2", "method": "random:l2", "rows": 3, "memory": Path("m"),
        "reference_dir": Path("rr"), "measure": "likelihood"})]


def test_compare_passes_every_option_on(monkeypatch, tmp_path):
    calls = invoked(monkeypatch, "automr.evaluation.combine_folders", [
        "compare", "--out", "o", "--method", "a=e1/bigrec:l2", "--method", "b=x/e2.json/pop",
        "--reference", "b", "--seed", "4", "--resample", "users"])
    assert calls == [(({"a": ("e1", "bigrec:l2"), "b": ("x/e2.json", "pop")},),
                      {"out": Path("o"), "reference": "b", "seed": 4, "resample": "users"})]


def test_retriever_score_passes_every_option_on(monkeypatch, tmp_path):
    """--retriever NAME=FOLDER (a leading ~ the home folder, as --out's), --no-semantic and
    --seeds reach the scoring, each retriever loaded for the annotations' combiner."""
    from automr.annotation.run import Annotations
    from automr.memory import MemoryStore

    class Store:
        hidden_size = 5

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(MemoryStore, "open", classmethod(lambda cls, folder: Store()))
    monkeypatch.setattr(Annotations, "header_of", staticmethod(
        lambda folder: {"config": {"combiner": "append-token"}}))
    monkeypatch.setattr("automr.retrievers.build_retriever", lambda kind, hidden: (kind, hidden))
    held_out = []
    monkeypatch.setattr("automr.experiments.retriever.check_held_out",
                        lambda folder, annotations: held_out.append((folder, annotations)))
    monkeypatch.setattr("automr.recommenders.automr.load_retriever_for",
                        lambda store, folder, combiner: (folder, combiner))
    calls = []
    monkeypatch.setattr("automr.experiments.retriever.score_retrievers", recorded(calls))
    args = ["retriever", "score", "--annotations", "a", "--data", "d", "--memory", "m", "--out",
            "o"]
    result = runner.invoke(app, [*args, "--retriever", "x=~/r1", "--retriever", "y=r2",
                                 "--no-semantic", "--seeds", "3,5-6", "--resample", "users"])
    assert isinstance(result.exception, Stop), result.output
    home = str(tmp_path / "home" / "r1")
    assert held_out == [(home, Path("a")), ("r2", Path("a"))]
    assert calls == [((Path("a"), Path("d"), Path("m"), {
        "x": (home, "append-token"), "y": ("r2", "append-token")}),
        {"random_seeds": [3, 5, 6], "resample": "users"})]
    for twice, says in ((["x=r1", "--retriever", "x=r2"], "names 'x' twice"),
                        (["semantic=r"], "'semantic' is taken")):
        result = runner.invoke(app, [*args, "--retriever", *twice])
        assert result.exit_code == 2 and says in result.output, result.output
    calls.clear()
    result = runner.invoke(app, args)
    assert calls == [((Path("a"), Path("d"), Path("m"), {"semantic": ("semantic", 5)}),
                      {"random_seeds": list(range(10)), "resample": "samples"})], result.output


@pytest.mark.usefixtures("any_device")
def test_context_show_and_trsr_pass_every_option_on(monkeypatch, tmp_path):
    from automr.cli.common import Runtime
    from automr.contexts import ContextSpec

    class Dataset:
        catalog, prompt_config = "catalog", "prompt"

        def samples(self, split):
            return f"{split} samples"

    class Loaded:
        def fingerprint(self):
            return "fp"

    dataset, loaded = Dataset(), Loaded()
    subsets, loads, calls = [], [], []
    monkeypatch.setattr(PreparedDataset, "load", classmethod(lambda cls, folder: dataset))
    monkeypatch.setattr("automr.data.subsets.seeded_subset",
                        lambda samples, limit, seed: subsets.append((samples, limit, seed))
                        or ["sample"])
    monkeypatch.setattr(Runtime, "load_model",
                        lambda self, name: loads.append((name, self.keywords())) or loaded)
    monkeypatch.setattr("automr.contexts.build_context", recorded(calls))
    monkeypatch.setattr("automr.contexts.trsr_context", recorded(calls))
    trsr = ["--trsr-block-size", "6", "--trsr-max-blocks", "7", "--trsr-mode", "hierarchical",
            "--trsr-max-new-tokens", "8"]
    result = runner.invoke(app, [
        "context", "show", "--data", "d", "--kind", "rella", "--split", "valid", "--samples",
        "2", "--seed", "3", "--model", "lm", "--context-k", "4", *trsr, "--batch-size", "5",
        "--quiet", *RUNTIME_GIVEN])
    assert isinstance(result.exception, Stop), result.output
    result = runner.invoke(app, [
        "context", "trsr", "--data", "d", "--split", "test", "--samples", "2", "--seed", "3",
        "--model", "lm", *trsr, "--batch-size", "5", "--quiet", *RUNTIME_GIVEN])
    assert isinstance(result.exception, Stop), result.output
    assert subsets == [("valid samples", 2, 3), ("test samples", 2, 3)]
    assert loads == [("lm", RUNTIME_KEYWORDS)] * 2
    written = {"block_size": 6, "max_blocks": 7, "mode": "hierarchical", "max_new_tokens": 8}
    (show, shown), (summarise, summarised) = calls
    assert show[0] == ContextSpec(kind="rella", k=4, **written)
    assert show[1:] == (loaded, dataset, "fp", Path("c"))
    assert summarise == (loaded, "catalog", "prompt", "fp", ContextSpec(kind="trsr", **written),
                         Path("c"))
    assert shown == summarised == {"batch_size": 5, "progress": False}


def test_model_info_and_fetch_pass_every_option_on(monkeypatch, tmp_path):
    from automr.defaults import DEFAULT_MODEL

    calls = []
    monkeypatch.setattr("automr.llm.loading.describe_model", recorded(calls))
    monkeypatch.setattr("automr.llm.loading.fetch_embedded", recorded(calls))
    result = runner.invoke(app, ["model", "info", "org/lm", "--device", "cuda:1", "--dtype",
                                 "float16", "--cache-dir", "c"])
    assert isinstance(result.exception, Stop), result.output
    result = runner.invoke(app, ["model", "fetch", "--cache-dir", "c"])
    assert isinstance(result.exception, Stop), result.output
    assert calls == [(("org/lm",), {"device": "cuda:1", "dtype": "float16",
                                    "cache_dir": Path("c")}),
                     ((DEFAULT_MODEL, Path("c")), {})]


def test_step_messages_and_notices_go_to_stderr_so_a_redirected_stdout_is_the_table(
        tmp_path, capsys, monkeypatch):
    """`automr rq2 > rq2.out`, `demo` and `ablate` wrote their step lines (`[rq2] ... ->`,
    `[fine-tune BIGRec] done in ...`) to stdout, and an evaluate read back from its folder
    added 'Read back from ...' under the table (the CLI-in-scripts review): stdout holds what
    the command prints, as docs/cli.md says; steps are on stderr, none with --quiet."""
    from automr.cli.common import Runtime

    Runtime().say("[step] done")
    Runtime(quiet=True).say("[step] quiet")
    assert capsys.readouterr() == ("", "[step] done\n")
    synthetic_dataset(tmp_path)
    command = ["evaluate", "--data", str(tmp_path / "prepared"), "--out", str(tmp_path / "e"),
               "--methods", "pop", "--samples", "4", "--quiet"]
    first, again = runner.invoke(app, command), runner.invoke(app, command)
    assert first.exit_code == again.exit_code == 0, again.output
    assert again.stdout == first.stdout
    assert again.stdout.strip() == (tmp_path / "e" / "results.md").read_text().strip()
    assert "Read back from" in again.stderr and "computed again: ranks:pop" in again.stderr
    # under a launcher the other processes' stderr is not silenced: the notice is the main's
    from automr import distributed

    monkeypatch.setattr(distributed, "is_main", lambda: False)
    other = runner.invoke(app, command)
    assert other.exit_code == 0 and "Read back from" not in other.stderr, other.output


def test_help_written_to_a_pipe_keeps_whole_option_names(monkeypatch):
    """Off a terminal rich lays help out 80 columns wide and cut long option names
    (`--min-item-interact…`, `--min-user-interact…`: which is which?) in 11 commands' help
    (the CLI-in-scripts review). COLUMNS, when set, is still rich's width."""
    from typer import rich_utils

    for name in ("COLUMNS", "TERMINAL_WIDTH"):
        monkeypatch.delenv(name, raising=False)
    for command in (["data", "prepare", "ml-100k"], ["evaluate"], ["rq2"], ["finetune"]):
        shown = runner.invoke(app, [*command, "--help"]).output
        assert "…" not in shown and "--help" in shown, command
    shown = runner.invoke(app, ["data", "prepare", "ml-100k", "--help"]).output
    assert "--min-item-interactions " in shown and "--min-user-interactions " in shown
    # not another command's usage error, on stderr (a terminal's own width under `> out`)
    seen: list[object] = []
    monkeypatch.setattr(rich_utils, "_get_rich_console",
                        lambda stderr=False: seen.append(rich_utils.MAX_WIDTH) or
                        rich_utils.Console(stderr=stderr, width=rich_utils.MAX_WIDTH))
    assert runner.invoke(app, ["evaluate", "--bogus"]).exit_code == 2
    assert seen == [None]
    monkeypatch.undo()
    monkeypatch.setenv("COLUMNS", "80")
    assert "--min-item-interact…" in runner.invoke(app, ["data", "prepare", "ml-100k",
                                                         "--help"]).output
    assert rich_utils.MAX_WIDTH is None  # as it was: a later COLUMNS is still rich's width
