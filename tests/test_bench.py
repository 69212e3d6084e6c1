"""``automr bench`` runs and reports agreement with the naive way (no timing is asserted)."""

import json

import pytest
from typer.testing import CliRunner

from automr.cli.main import app
from automr.testing.synthetic import save_tiny_model, synthetic_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    synthetic_dataset(root)
    save_tiny_model(root / "model", num_layers=4)
    return root


@pytest.mark.parametrize("combiner", ["concat", "append-token", "prepend-token"])
def test_bench_annotate_agrees_with_the_naive_way(workspace, tmp_path, combiner):
    result = runner.invoke(app, ["bench", "annotate", "--out", str(tmp_path), "--model",
                                 str(workspace / "model"), "--layer", "2", "--prompt-tokens",
                                 "12", "--target-tokens", "3", "--elements", "5", "--combiner",
                                 combiner, "--element-subset", "2", "--repeats", "1",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    [saved] = tmp_path.glob("annotate-*.json")
    payload = json.loads(saved.read_text())
    for key in ("max_abs_logprob_diff", "max_abs_logprob_diff_plain",
                "max_abs_logprob_diff_subset"):
        assert payload[key] < 1e-4
    assert payload["speedup"] > 0 and (tmp_path / saved.name.replace(".json", ".md")).exists()
    # the naive way's extra work: the lower half per element and the head at every position
    assert payload["work_ratio"] > 1 and payload["subset_work_ratio"] > payload["work_ratio"]
    assert payload["element_subset"] == 2
    for key in ("speedup", "speedup_over_plain", "subset_speedup"):  # the line says the file's
        assert (f"{payload[key]:.2f}x [{payload[f'{key}_min']:.2f}, "
                f"{payload[f'{key}_max']:.2f}]") in result.output
    if combiner == "append-token":  # the shared prompt is the layout's whole point
        assert payload["work_ratio_over_plain"] > 1
    if combiner == "concat":  # one shared token is below min_shared: not cached
        assert payload["shared_prefix_tokens"] == 1 and payload["prefix_cached"] is False


def test_bench_annotate_concat_shares_the_elements_common_header(workspace, tmp_path):
    """Elements that start with a 9-token header (encoded once by the memory encoder, so
    bit-identical) share its upper-half work: less work than the plain path, same labels."""
    result = runner.invoke(app, ["bench", "annotate", "--out", str(tmp_path), "--model",
                                 str(workspace / "model"), "--layer", "2", "--prompt-tokens",
                                 "6", "--target-tokens", "3", "--elements", "4",
                                 "--element-prefix", "9", "--repeats", "1", "--device", "cpu",
                                 "--label", "header"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.glob("*.json")] == ["annotate-concat-header-cpu.json"]
    payload = json.loads((tmp_path / "annotate-concat-header-cpu.json").read_text())
    assert payload["shared_prefix_tokens"] == 9 and payload["prefix_cached"] is True
    assert payload["work_ratio_over_plain"] > 1.2
    assert payload["max_abs_logprob_diff"] < 1e-4


def encode_args(workspace, out) -> list[str]:
    return ["bench", "encode", "--data", str(workspace / "prepared"), "--out", str(out),
            "--model", str(workspace / "model"), "--layer", "2", "--texts", "6", "--batch-size",
            "3", "--repeats", "1", "--device", "cpu"]


def test_bench_encode_reports_throughput_and_overhead(workspace, tmp_path):
    result = runner.invoke(app, encode_args(workspace, tmp_path))
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "encode-cpu.json").read_text())
    assert payload["tokens"] > 0 and payload["encoder_tokens_per_s"] > 0
    assert payload["unshared_tokens_per_s"] > 0 and payload["sharing_speedup"] > 0
    assert "split overhead" in result.output
    # the ways agree: the prompts' shared template header (memoised, run once) changes the
    # keys only by float rounding, and upper(lower(x)) is the model's own forward
    assert payload["encoder_prefixes"] >= 1 and payload["encoder_prefix_tokens"] > 0
    assert payload["max_abs_key_diff_sharing"] < 1e-4
    assert payload["max_abs_diff_split"] < 1e-4
    assert "keys with vs without sharing within" in result.output


def test_bench_ground_reports_every_grounder(workspace, tmp_path):
    result = runner.invoke(app, ["bench", "ground", "--data", str(workspace / "prepared"),
                                 "--out", str(tmp_path), "--model", str(workspace / "model"),
                                 "--grounders", "constrained,l2,likelihood", "--samples", "2",
                                 "--layer", "2",
                                 "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "ground-cpu.json").read_text())
    assert all(payload[f"{k}_samples_per_s"] > 0 for k in ("constrained", "l2", "likelihood"))


def test_bench_ground_generates_in_every_round(workspace, tmp_path, monkeypatch):
    """An L2 method keeps its distances; each timed round must still generate, not read them."""
    from automr.grounding.l2 import L2Grounder

    calls = []
    generate = L2Grounder.generate
    monkeypatch.setattr(L2Grounder, "generate",
                        lambda self, *args: calls.append(1) or generate(self, *args))
    result = runner.invoke(app, ["bench", "ground", "--data", str(workspace / "prepared"),
                                 "--out", str(tmp_path), "--model", str(workspace / "model"),
                                 "--grounders", "l2", "--samples", "2", "--batch-size", "2",
                                 "--layer", "2", "--repeats", "2", "--device", "cpu",
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert len(calls) == 3  # the warm-up and two rounds, one batch each


def test_bench_finetune_compares_the_three_ways(workspace, tmp_path):
    result = runner.invoke(app, ["bench", "finetune", "--data", str(workspace / "prepared"),
                                 "--out", str(tmp_path), "--model", str(workspace / "model"),
                                 "--layer", "3", "--steps", "2", "--batch-size", "2",
                                 "--repeats", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "finetune-cpu.json").read_text())
    # 4 layers: the upper variant adapts only layer 3, a quarter of the LoRA weights
    assert payload["upper_layers_lora_parameters"] * 4 == payload["all_layers_lora_parameters"]
    assert payload["upper_cached_lora_parameters"] == payload["upper_layers_lora_parameters"]
    assert all(payload[f"{w}_s_per_step"] > 0
               for w in ("all_layers", "upper_layers", "upper_cached"))
    assert payload["max_abs_loss_diff_cached_vs_plain"] < 1e-5
    assert payload["lower_cache_bytes"] > 0 and payload["cached_speedup_over_plain"] > 0
    assert "faster per step" in result.output and "cached layer-L states" in result.output
    for key in ("upper_layers_speedup", "cached_speedup_over_plain"):
        low, high = payload[f"{key}_min_max"]
        assert f"{payload[key]:.2f}x [{low:.2f}, {high:.2f}] faster per step" in result.output


def test_under_a_launcher_the_files_count_every_process_and_the_line_says_whose(
        workspace, tmp_path, monkeypatch):
    """Two processes (the other's share gathered as a stand-in): the file's texts and tokens
    were process 0's alone and the printed ratios read as the whole run's."""
    from automr.experiments import bench

    other = {"texts": 3, "tokens": 40, "encoder_tokens_per_s": 1.0,
             "raw_lower_tokens_per_s": 2.0, "max_abs_logprob_diff": 0.5,
             "max_abs_logprob_diff_plain": 0.25, "max_abs_logprob_diff_subset": 0.125,
             "encoder_prefix_tokens": 30, "encoder_prefixes": 1}
    monkeypatch.setattr(bench.distributed, "gather",
                        lambda mine: [mine, {k: other.get(k, 1.0) for k in mine}])
    result = runner.invoke(app, encode_args(workspace, tmp_path))
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "encode-cpu.json").read_text())
    own = payload["per_process"][0]
    assert payload["processes"] == 2 and own["texts"] == 6
    assert (payload["texts"], payload["tokens"]) == (9, own["tokens"] + 40)
    assert own["encoder_prefix_tokens"] > 0  # of the same tokens: every process's
    assert payload["encoder_prefix_tokens"] == own["encoder_prefix_tokens"] + 30
    assert payload["encoder_prefixes"] == own["encoder_prefixes"] + 1
    assert "process 0 of 2: encoder vs raw lower half" in result.output
    result = runner.invoke(app, ["bench", "annotate", "--out", str(tmp_path), "--model",
                                 str(workspace / "model"), "--layer", "2", "--prompt-tokens",
                                 "6", "--target-tokens", "2", "--elements", "3", "--repeats",
                                 "1", "--device", "cpu", "--element-subset", "2"])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "annotate-concat-cpu.json").read_text())
    assert payload["max_abs_logprob_diff"] == 0.5  # the worst process's
    assert payload["max_abs_logprob_diff_plain"] == 0.25  # so the plain path's, the subset's
    assert payload["max_abs_logprob_diff_subset"] == 0.125
    assert "process 0 of 2: speedup over the naive way" in result.output


def test_the_model_size_script_runs_both_benches_on_a_random_model(workspace, tmp_path):
    """benchmarks/model_size.py, which a GPU session runs once without a rehearsal: on the
    tiny shape it writes one row and the JSON of both benches."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "model_size.py"
    done = subprocess.run(
        [sys.executable, str(script), "--data", str(workspace / "prepared"), "--shapes", "tiny",
         "--device", "cpu", "--tokenizer", str(workspace / "model"), "--texts", "4",
         "--batch-size", "2", "--repeats", "1", "--out", str(tmp_path / "size")],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "size-cpu.json").read_text())["shapes"]["tiny"]
    assert saved["encode"]["texts"] == 4 and saved["encode"]["sharing_speedup"] > 0
    assert saved["annotate"]["max_abs_logprob_diff"] < 1e-4
    assert (tmp_path / "size-cpu.md").read_text().count("| tiny |") == 1


@pytest.mark.parametrize(("command", "given", "named"), [
    (["annotate"], ["--combiner", "foo"], "--combiner 'foo'"),
    (["annotate"], ["--elements", "0"], "--elements"),
    (["annotate"], ["--prompt-tokens", "0"], "--prompt-tokens"),
    (["annotate"], ["--target-tokens", "0"], "--target-tokens"),
    (["encode", "--data", "DATA"], ["--batch-size", "0"], "--batch-size"),
    (["ground", "--data", "DATA"], ["--samples", "0"], "--samples"),
    (["ground", "--data", "DATA"], ["--batch-size", "0"], "--batch-size"),
    (["finetune", "--data", "DATA"], ["--steps", "0"], "--steps"),
    (["finetune", "--data", "DATA"], ["--batch-size", "0"], "--batch-size"),
    (["finetune", "--data", "DATA"], ["--layer", "0"], "--layer"),
])
def test_a_bench_option_out_of_range_is_one_line(workspace, tmp_path, command, given, named):
    """A combiner that does not exist or a count below 1 is one line naming the option (they
    were a KeyError, IndexError, ZeroDivisionError or attrs traceback, and ``bench ground
    --samples 0`` timed no sample at all and reported its ratios)."""
    command = [str(workspace / "prepared") if word == "DATA" else word for word in command]
    result = runner.invoke(app, ["bench", *command, "--out", str(tmp_path), "--model",
                                 str(workspace / "model"), "--layer", "2", "--repeats", "1",
                                 "--device", "cpu", *given])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert named in result.output and "Traceback" not in result.output
    assert not list(tmp_path.glob("*.json"))


def test_the_profile_script_answers_help_and_runs_on_a_random_model(workspace, tmp_path):
    """benchmarks/profile_paths.py (positional arguments): --help prints its usage (it was a
    torch traceback, '--help' read as the device), and the tiny shape writes every way, with
    the device, machine and command it ran on (it wrote none of them)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_paths.py"
    usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                           text=True, timeout=600)
    assert usage.returncode == 0 and "DEVICE DTYPE SHAPE" in usage.stdout, usage.stderr
    out = tmp_path / "profile.json"
    done = subprocess.run(
        [sys.executable, str(script), "cpu", "float32", "tiny", str(workspace / "model"),
         str(workspace / "prepared"), str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    saved = json.loads(out.read_text())
    assert {"annotate_fast_new", "annotate_plain", "encode_shared", "encode_unshared"} <= set(
        saved) and saved["shape"] == "tiny"
    assert saved["device"] == "cpu" and saved["machine"]["threads"] >= 1
    assert saved["command"].startswith("python ") and str(out) in saved["command"]


def test_the_work_count_reads_each_layers_own_modules():
    """The count per token is the layers' linear modules (for Llama exactly the attention and
    MLP projections from its sizes, what it was computed from); a Mamba, whose config has no
    attention heads or MLP width (real ones: the count failed on them), counts its mixers'
    projections and no attention; Nemotron-H counts attention pairs in its attention blocks
    only."""
    from automr.experiments.bench import WorkCounter
    from automr.llm.split import HFSplitLLM
    from automr.testing.tiny import tiny_config, tiny_model

    llama = WorkCounter(HFSplitLLM(tiny_model(tiny_config("llama", 2))))
    config = llama.config
    projections = config.hidden_size * config.head_dim * 2 * (
        config.num_attention_heads + config.num_key_value_heads)
    assert llama.per_token == projections + 3 * config.hidden_size * config.intermediate_size
    assert llama.per_pair == 2 * config.num_attention_heads * config.head_dim
    mamba = tiny_config("mamba", 2)
    assert not hasattr(mamba, "num_attention_heads")
    counted = WorkCounter(HFSplitLLM(tiny_model(mamba)))
    assert counted.per_pair == 0 and counted.per_token > 0
    nemotron = WorkCounter(HFSplitLLM(tiny_model(tiny_config("nemotron_h", 5))))
    kinds = nemotron.config.layer_types
    assert nemotron.per_pair == 2 * nemotron.config.num_attention_heads * 8 * kinds.count(
        "full_attention") / len(kinds)


def test_the_distributed_script_runs_both_ways_with_its_own_interpreter(tmp_path,
                                                                        monkeypatch):
    """benchmarks/distributed_cpu.py started one process as whatever `automr` PATH found (none
    when the venv is not activated: the run stopped; another install's: other code timed)
    and two as `sys.executable -m automr`."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    from automr.storage import RUNS_FILE

    script = Path(__file__).parents[1] / "benchmarks" / "distributed_cpu.py"
    spec = importlib.util.spec_from_file_location("distributed_cpu", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    started = []

    def run(command, **kwargs):
        started.append(command)
        out = Path(command[command.index("--out") + 1])
        out.mkdir(parents=True)
        (out / RUNS_FILE).write_text(json.dumps({"seconds": 1.0, "processes": 1}) + "\n")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(module.subprocess, "run", run)
    monkeypatch.setattr(module.shutil, "which", lambda name: "/another/env/bin/automr")
    for processes in (1, 2):
        module.run(["memory", "build"], tmp_path / str(processes), processes, 1)
    one, two = started
    assert one[:3] == [sys.executable, "-m", "automr"]
    assert two[0] == sys.executable and two[two.index("-m", 3):][:2] == ["-m", "automr"]


def test_the_likelihood_script_averages_prompt_lengths_over_samples(workspace, monkeypatch):
    """benchmarks/likelihood.py's ``prompt_tokens_mean`` is the mean over the samples, also
    when the last batch is short (it was the mean of the batches' means: 413.75 for prompts of
    415, 414 and 413 tokens in batches of 2)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "likelihood.py"
    spec = importlib.util.spec_from_file_location("likelihood_bench", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lengths, prompts = [], module.left_padded_prompts

    def shortened(loaded, dataset, batch):  # the synthetic prompts are all of one length
        ids, mask = prompts(loaded, dataset, batch)
        for row in range(len(batch)):  # the n-th prompt loses its first n tokens
            cut = mask[row].nonzero()[0, 0] + len(lengths)
            ids[row, :cut], mask[row, :cut] = loaded.tokenizer.pad_token_id, 0
            lengths.append(int(mask[row].sum()))
        return ids, mask

    monkeypatch.setattr(module, "left_padded_prompts", shortened)
    result = module.bench_likelihood(workspace / "prepared", samples=3, batch_size=2, layer=2,
                                     repeats=1, model=str(workspace / "model"))
    assert result["samples"] == 3 and len(set(lengths)) == 3
    assert result["prompt_tokens_mean"] == pytest.approx(sum(lengths) / 3)
    assert result["max_abs_diff_nats"] < 1e-4


def test_the_distributed_script_refuses_an_unknown_step_before_running_any(tmp_path,
                                                                          monkeypatch, capsys):
    """``--steps evaluate-l2,anotate`` ran the evaluation (minutes to hours), then stopped on
    a KeyError at the misspelt step; it is one line naming it, before anything runs."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "distributed_cpu.py"
    spec = importlib.util.spec_from_file_location("distributed_cpu", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    started = []
    monkeypatch.setattr(module, "run", lambda *args: started.append(args))
    monkeypatch.setattr(sys, "argv", [
        "distributed_cpu.py", "--data", "d", "--finetuned", "f", "--memory", "m", "--work",
        str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--steps",
        "evaluate-l2,anotate"])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code == 2 and not started
    assert "--steps: unknown anotate; choose from evaluate-l2" in capsys.readouterr().err


def test_the_likelihood_script_counts_the_opening_tokens_it_runs_once(workspace):
    """``shared_opening_tokens`` counts what prefill runs once: a batch of one prompt shares
    nothing (it reported the whole prompt, 414 tokens here), two prompts their common
    opening."""
    import importlib.util
    from pathlib import Path

    from automr.data import PreparedDataset, tokenize_sample
    from automr.data.subsets import seeded_subset
    from automr.llm import load_model
    from automr.llm.decoding import common_prefix

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "likelihood.py"
    spec = importlib.util.spec_from_file_location("likelihood_bench", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def opening(samples: int) -> float:
        return module.bench_likelihood(workspace / "prepared", samples=samples, batch_size=2,
                                       layer=2, repeats=1, model=str(workspace / "model"),
                                       )["shared_opening_tokens"]

    dataset = PreparedDataset.load(workspace / "prepared")
    tokenizer = load_model(str(workspace / "model"), device="cpu").tokenizer
    prompts = [tokenize_sample(tokenizer, s, dataset.catalog, dataset.prompt_config).prompt_ids
               for s in seeded_subset(dataset.samples("test"), 2, 0)]
    assert opening(1) == 0
    assert opening(2) == common_prefix(prompts) >= 8


def test_the_likelihood_methods_script_scores_alike_both_ways(workspace, tmp_path):
    """benchmarks/likelihood_methods.py: BIGRec and two retrievals of one fine-tune, the
    lower half kept or run per method, give the same values."""
    import importlib.util
    from pathlib import Path

    import automr
    from automr.memory import MemoryConfig, build_memory
    from automr.recommenders.finetune import FinetuneConfig, finetune

    dataset = automr.PreparedDataset.load(workspace / "prepared")
    model = str(workspace / "model")
    finetune(automr.load_model(model, device="cpu"), dataset, tmp_path / "ft",
             FinetuneConfig(max_train_samples=4, max_valid_samples=2, batch_size=2,
                            lora_from_layer=2), progress=False)
    build_memory(automr.load_model(model, device="cpu"), dataset, 2,
                 MemoryConfig(encoder="item", store_token_states=True), tmp_path / "mem",
                 progress=False)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "likelihood_methods.py"
    spec = importlib.util.spec_from_file_location("likelihood_methods_bench", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.bench_likelihood_methods(workspace / "prepared", tmp_path / "ft",
                                             tmp_path / "mem", samples=3, batch_size=2,
                                             repeats=1)
    assert result["samples"] == 3 and result["methods"] == ["bigrec", "random", "semantic"]
    assert result["max_abs_diff_nats"] == 0


@pytest.mark.parametrize("option", ["--titles", "--repeats", "--check"])
def test_the_trie_script_refuses_a_count_below_one(tmp_path, monkeypatch, capsys, option):
    """``--titles 0`` crashed on an empty catalog, ``--repeats 0`` in a traceback, and
    ``--check 0`` printed a table whose tries were never compared (0 equal answers)."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "trie.py"
    spec = importlib.util.spec_from_file_location("trie_bench", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["trie.py", "--out", str(tmp_path), option, "0"])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code == 2 and not any(tmp_path.iterdir())
    assert f"{option} must be >= 1, got 0" in capsys.readouterr().err


def test_the_embed_texts_script_sorts_by_length_and_keeps_each_titles_vector(workspace,
                                                                            tmp_path):
    """benchmarks/embed_texts.py on the tiny model: the catalog's vectors batched shortest
    first equal those of batches in catalog order (the reference it keeps) within float
    rounding, row by row, and the sorted batches pad less."""
    import importlib.util
    from pathlib import Path

    from automr.llm.loading import load_model

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "embed_texts.py"
    spec = importlib.util.spec_from_file_location("embed_texts_bench", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded = load_model(str(workspace / "model"), device="cpu")
    dataset = synthetic_dataset(tmp_path, items=12, titles={  # lengths a batch pads to
        "i1": "A title much longer than any other one in many words (1999)",
        "i6": "Another long title as long as the first one or nearly (2001)"})
    result = module.bench_embed_texts(loaded, dataset, batch_size=4, repeats=1)
    assert result["texts"] == len(dataset.catalog) and result["max_abs_diff"] < 1e-4
    assert 1 <= result["padded_over_real_sorted"] < result["padded_over_real_catalog_order"]


def test_the_gamma_script_chooses_as_the_per_gamma_reference(tmp_path):
    """benchmarks/gamma.py: choose_gamma with the distances normalised once chooses the gamma,
    and every gamma's value, of the per-gamma reference it keeps, bit for bit."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gamma.py"
    spec = importlib.util.spec_from_file_location("gamma_bench", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.bench_gamma(samples=6, items=40, repeats=1)
    assert result["equal_choice"] and result["speedup"] > 0


def test_the_retriever_epochs_script_trains_as_the_checked_every_time_reference():
    """benchmarks/retriever_epochs.py: training on batches made unchecked gives the retriever
    and history of the way that checked every batch in full, and the script's patches of that
    way are undone after it."""
    import importlib.util
    from pathlib import Path

    from automr.retrievers import dataset as dataset_module

    derived, check = (dataset_module.RetrievalDataset._derived,
                      dataset_module._real_keys_finite)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "retriever_epochs.py"
    spec = importlib.util.spec_from_file_location("retriever_epochs_bench", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.bench_epochs(samples=30, epochs=1, repeats=1, mem=12, hidden=8)
    assert result["equal_training"] and result["speedup"] > 0
    assert dataset_module.RetrievalDataset._derived is derived
    assert dataset_module._real_keys_finite is check


def test_a_gpu_benchmark_waits_for_and_names_its_own_gpu(monkeypatch):
    """`bench ... --device cuda:1` synchronised the current GPU (cuda:0) and recorded its
    name; a CPU run on a GPU machine recorded the GPU too (the GPU review; CUDA's queries
    stood in)."""
    import torch

    import automr.experiments.bench as bench

    waited = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    monkeypatch.setattr(torch.cuda, "get_device_name",
                        lambda device=None: f"GPU {torch.device(device or 'cuda:0').index}")
    bench.interleaved({"way": lambda: None}, 1, torch.device("cuda:1"))
    assert waited and all(torch.device(d) == torch.device("cuda:1") for d in waited)
    assert bench.machine("cuda:1")["cuda"] == "GPU 1"
    assert "cuda" not in bench.machine("cpu")
