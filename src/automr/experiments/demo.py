"""``automr demo``: the whole pipeline at a size that finishes on a laptop CPU.

prepare -> fine-tune (LoRA on layers >= L) -> memory -> annotation (eq. 5) -> retriever
training (eq. 6) -> ranking by the two floors (popularity, co-occurrence counts), BIGRec,
AutoMR and random retrieval on the same test samples -> the true title's log-likelihood under
BIGRec, AutoMR and random retrieval on more test samples (no decoding: cheap, and paired
intervals resolve small effects) -> one test user's recommendation with the memory AutoMR
retrieved. Every step writes its own folder under the run folder and resumes when rerun;
:func:`demo_summary` says what came out.
"""

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import torch

import automr
from automr.annotation.labels import LABEL_FORMS, LABEL_TEMPERATURE
from automr.annotation.run import AnnotateConfig, annotate_dataset
from automr.checks import beartype, int_field, is_str_tuple, real_field, to_float, to_strs
from automr.combiners import COMBINERS
from automr.combiners.names import COMBINER_NAMES
from automr.data import PreparedDataset, prepare_movielens_100k
from automr.data.fingerprint import dataset_fingerprint
from automr.data.subsets import seeded_subset
from automr.defaults import DEFAULT_LAYER
from automr.errors import AutomrError
from automr.evaluation.folder import EvaluationFolder
from automr.evaluation.likelihood import LikelihoodReport, compare_likelihoods
from automr.experiments.evaluate import EvalConfig, evaluate_methods
from automr.experiments.recommend import RECOMMEND_GROUNDERS, recommend
from automr.experiments.retriever import train_retriever
from automr.llm.loading import DEFAULT_MODEL, canonical_model_name, dtype_used, load_model
from automr.memory import ENCODERS, MemoryConfig, build_memory
from automr.memory.store import MemoryStore
from automr.methods.registry import LM_RULES, Artifacts
from automr.recommenders.finetune import FinetuneConfig, finetune
from automr.recommenders.runs import RESULT_FILE, FinetunedRun
from automr.retrievers import RetrieverTrainingConfig
from automr.storage import (
    append_lines,
    check_own_folder,
    folder_lock,
    read_json,
    write_text_atomic,
)

_POSITIVE = attrs.validators.gt(0)


@beartype
@attrs.frozen(kw_only=True)
class DemoConfig:
    """Sizes of each step (with SmolLM2-135M these defaults took 11 to 24 minutes of CPU time on a
    2-core x86-64 VM: docs/results.md, "The demo")."""

    model: str = DEFAULT_MODEL
    layer: int = int_field(attrs.validators.ge(0), default=DEFAULT_LAYER)
    train_samples: int = int_field(_POSITIVE, default=96)
    valid_samples: int = int_field(_POSITIVE, default=16)
    epochs: int = int_field(_POSITIVE, default=1)
    batch_size: int = int_field(_POSITIVE, default=8)
    lr: float = attrs.field(default=1e-3, converter=to_float,
                            validator=attrs.fields(FinetuneConfig).lr.validator)
    lora_targets: tuple[str, ...] = attrs.field(
        converter=to_strs, validator=[is_str_tuple, attrs.validators.min_len(1)],
        default=attrs.fields(FinetuneConfig).target_modules.default)
    """The linear modules of each tuned layer that get LoRA (:attr:`FinetuneConfig.target_modules
    <automr.recommenders.finetune_config.FinetuneConfig.target_modules>`)."""
    encoder: str = attrs.field(default="item", validator=attrs.validators.in_(tuple(ENCODERS)))
    combiner: str = attrs.field(default="concat",
                                validator=attrs.validators.in_(COMBINER_NAMES))
    annotate_samples: int = int_field(_POSITIVE, default=64)
    annotate_elements: int | None = int_field(_POSITIVE, default=16, optional=True)
    """Seeded memory elements annotated per sample (None: all; concat shares no prompt work,
    so each element costs an upper pass over the whole prompt)."""
    label_form: str = attrs.field(default="log", validator=attrs.validators.in_(LABEL_FORMS))
    temperature: float = real_field(*LABEL_TEMPERATURE, default=1.0)
    test_samples: int = int_field(_POSITIVE, default=48)
    likelihood_samples: int = int_field(_POSITIVE, default=200)
    grounder: str = attrs.field(default="constrained",  # the last step recommends with it
                                validator=attrs.validators.in_(RECOMMEND_GROUNDERS))
    num_beams: int = int_field(_POSITIVE, default=5)
    seed: int = int_field(default=0)


DEMO_FILES = ("data", "bigrec", "memory", "annotations", "retriever", "results", "likelihood",
              "example", "settings.json", "runs.jsonl")
"""What a demo folder holds: its steps' folders, its settings and its run log."""


def run_demo(
    out_dir: Path | str, config: DemoConfig = DemoConfig(), device: str = "auto",
    cache_dir: Path | str | None = None, progress: bool = True,
    dataset_dir: Path | str | None = None, say: Callable[[str], None] = print,
    dtype: str = "auto",
) -> Path:
    """Run every step into ``out_dir``, models on ``device`` in ``dtype``; returns the folder
    holding ``results.md``.

    ``dataset_dir`` uses an already prepared dataset instead of preparing ML-100K. A second
    demo started into ``out_dir`` while one runs there is refused (:func:`folder_lock`): both
    passed the settings check before either had worked, and ran their own settings into the
    same step folders.
    """
    out = Path(out_dir)
    used = dtype_used(dtype, device)  # a --dtype or --device refused before anything is written
    check_own_folder(out, "demo", DEMO_FILES)  # a resumed one, or new
    with folder_lock(out, "demo"):  # a second demo at once would defeat the settings check
        return _run_steps(out, config, device, cache_dir, progress, dataset_dir, say, dtype,
                          used)


def _run_steps(out: Path, config: DemoConfig, device: str, cache_dir: Path | str | None,
               progress: bool, dataset_dir: Path | str | None, say: Callable[[str], None],
               dtype: str, used: str) -> Path:
    """:func:`run_demo`'s steps, once its folder is checked and locked."""
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, {"config": attrs.asdict(config), "dataset": None if dataset_dir is None
                          else str(Path(dataset_dir).resolve()), "dtype": used})
    timings: dict[str, float] = {}

    def step(name: str, folder: Path, work: Callable[[], object],
             rules: dict[str, object] | None = None) -> None:
        """Run ``work`` unless it finished before under the same ``rules`` (of an LM's values,
        :data:`~automr.methods.registry.LM_RULES`: a step an earlier automr finished otherwise
        runs again, and its evaluation makes those values anew); each step resumes on its own
        if cut."""
        done = out / f".done-{folder.name}"
        marked = read_json(done, "automr demo") if done.exists() else None
        if folder.exists() and isinstance(marked, dict) and all(  # a deleted folder: again
                marked.get(key) == value for key, value in (rules or {}).items()):
            say(f"[{name}] already done: {folder}")
            return
        say(f"[{name}] ...")
        start = time.perf_counter()
        work()
        timings[name] = round(time.perf_counter() - start, 1)
        write_text_atomic(done, json.dumps({"seconds": timings[name], **(rules or {})}))
        say(f"[{name}] done in {timings[name]} s: {folder}")

    lm_rules = {"lm_rules": LM_RULES}

    data = Path(dataset_dir) if dataset_dir is not None else out / "data"
    if dataset_dir is None:
        step("prepare ML-100K", data,
             lambda: prepare_movielens_100k(data, cache_dir=cache_dir))
    dataset = PreparedDataset.load(data)
    bigrec = out / "bigrec"
    if (bigrec / RESULT_FILE).is_file():  # a rerun shows its finished steps: of this data
        try:  # and this model? (settings.json names their folders, not what they hold)
            tuned = FinetunedRun.open(bigrec)
            tuned.check_dataset(dataset)
            tuned.check_base(cache_dir)
        except AutomrError as error:
            raise AutomrError(f"{out} holds a demo run made with other data or another model "
                              f"in the same folder ({error}); its finished steps would be "
                              f"shown as this run's. Use another --out.") from None

    def tune() -> None:
        if (bigrec / RESULT_FILE).is_file():  # finished, cut before its step was marked
            return
        finetune(
            load_model(config.model, device=device, dtype=dtype, cache_dir=cache_dir), dataset,
            bigrec,
            FinetuneConfig(max_train_samples=config.train_samples,
                           max_valid_samples=config.valid_samples, epochs=config.epochs,
                           batch_size=config.batch_size, lr=config.lr,
                           lora_from_layer=config.layer, target_modules=config.lora_targets,
                           eval_every=4, seed=config.seed),
            progress=progress)

    step("fine-tune BIGRec", bigrec, tune)
    memory = out / "memory"
    step("build memory", memory, lambda: build_memory(
        load_model(config.model, device=device, dtype=dtype, cache_dir=cache_dir), dataset,
        config.layer,
        MemoryConfig(encoder=config.encoder,
                     store_token_states=COMBINERS[config.combiner]().uses_token_states), memory,
        progress=progress))
    annotations = out / "annotations"
    step("annotate (eq. 5)", annotations, lambda: annotate_dataset(
        FinetunedRun.open(bigrec).load(device=device, dtype=dtype, cache_dir=cache_dir),
        dataset,
        MemoryStore.open(memory), annotations,
        AnnotateConfig(max_samples=config.annotate_samples, seed=config.seed,
                       combiner=config.combiner, element_subset=config.annotate_elements,
                       element_seed=config.seed), progress=progress))
    retriever = out / "retriever"
    step("train retriever (eq. 6)", retriever, lambda: train_retriever(
        annotations, data, memory, retriever, config.label_form, config.temperature,
        config=RetrieverTrainingConfig(seed=config.seed), progress=progress, device=device))
    results = out / "results"
    grounder = config.grounder
    beams = None if grounder == "likelihood" else config.num_beams  # it scores every title
    methods = ["pop", "cooc", f"bigrec:{grounder}", f"automr:{grounder}", f"random:{grounder}"]
    step("evaluate", results, lambda: evaluate_methods(
        data, methods, results,
        EvalConfig(max_samples=config.test_samples, seed=config.seed, layer=config.layer,
                   num_beams=beams, combiner=config.combiner, exclude_seen=True),
        Artifacts(model=config.model, finetuned=bigrec, memory=memory, retriever=retriever),
        device=device, dtype=dtype, cache_dir=cache_dir, progress=progress), lm_rules)
    likelihood = out / "likelihood"
    step("target likelihood", likelihood, lambda: evaluate_methods(
        data, ["bigrec:likelihood", "automr:likelihood", "random:likelihood"], likelihood,
        EvalConfig(max_samples=config.likelihood_samples, seed=config.seed,
                   layer=config.layer, combiner=config.combiner, measures=("likelihood",),
                   batch_size=16),
        Artifacts(model=config.model, finetuned=bigrec, memory=memory, retriever=retriever),
        device=device, dtype=dtype, cache_dir=cache_dir, progress=progress), lm_rules)
    example = out / "example"
    step("one user's recommendation", example, lambda: write_text_atomic(
        example / "example.md", "\n".join(recommend(
            data, example_user(dataset, config), bigrec, memory, retriever, top=5,
            grounder=grounder, combiner=config.combiner, device=device, cache_dir=cache_dir,
            dtype=dtype, num_beams=beams).describe()) + "\n"), lm_rules)
    record = {"config": attrs.asdict(config), "seconds": timings,
              "versions": {"automr": automr.__version__, "torch": torch.__version__,
                           "python": platform.python_version()},
              "machine": platform.platform(), "threads": torch.get_num_threads(),
              "dataset_fingerprint": dataset_fingerprint(dataset)}
    runs = out / "runs.jsonl"
    append_lines(runs, [json.dumps(record)])  # never through a link
    return results


def _check_settings(out: Path, settings: dict) -> None:
    """Finished steps are skipped on a rerun, so a rerun must have the first run's settings
    (else the results of the old ones would be shown, and recorded, as the new ones'). A run
    that left no step's work but ML-100K's (which no setting changes), e.g. one stopped by a
    mistyped ``--model``, holds nothing of its settings: the rerun takes its place."""
    path = out / "settings.json"
    settings = _model_as_one_name(json.loads(json.dumps(settings)))
    worked = any((out / name).exists() for name in DEMO_FILES
                 if name != "data" and "." not in name)  # a step's folder, ML-100K's aside
    if not path.exists() or not worked:
        write_text_atomic(path, json.dumps(settings, indent=1) + "\n")
        return
    first = read_json(path, f"`automr demo` (delete {path} and rerun the same demo)")
    first.setdefault("dtype", settings["dtype"])  # recorded since; older runs took it as given
    if isinstance(first.get("config"), dict):  # older runs tuned the default modules
        first["config"].setdefault("lora_targets", list(DemoConfig().lora_targets))
    _model_as_one_name(first)  # older runs recorded it as typed
    if first != settings:
        changed = sorted(k for k in {**first.get("config", {}), **settings["config"]}
                         if first.get("config", {}).get(k) != settings["config"].get(k))
        changed += [name for key, name in (("dataset", "data"), ("dtype", "dtype"))
                    if first.get(key) != settings[key]]
        raise AutomrError(f"{out} holds a demo run with other settings "
                          f"({', '.join(changed)}); its finished steps would be shown as this "
                          f"run's. Use another --out.")


def _model_as_one_name(settings: dict) -> dict:
    """``settings`` with its model folder as one path however it was typed (``./m``,
    ``/abs/m``), so that a rerun with the other spelling resumes."""
    config = settings.get("config")
    if isinstance(config, dict) and isinstance(config.get("model"), str):
        config["model"] = canonical_model_name(config["model"])
    return settings


def example_user(dataset: PreparedDataset, config: DemoConfig) -> str:
    """The user of the first seeded test sample the likelihood step scores."""
    return seeded_subset(dataset.samples("test"), config.likelihood_samples, config.seed)[0].user


def demo_summary(out_dir: Path | str) -> str:
    """What the demo measured, in words: the ranking table, then AutoMR's target
    log-likelihood gain over BIGRec and over random retrieval with paired 95% intervals."""
    out = Path(out_dir)
    lines = [_step_file(out, out / "results" / "results.md").read_text(encoding="utf-8")]
    likelihood = EvaluationFolder(out / "likelihood")
    reports = {m: LikelihoodReport.load(_step_file(out, likelihood.ranks_file(m, "loglik")))
               for m in ("bigrec:likelihood", "automr:likelihood", "random:likelihood")}
    n = len(reports["bigrec:likelihood"].sample_ids)
    lines.append(f"Log-likelihood of the true next title, {n} test samples (nats per sample, "
                 f"paired bootstrap 95% interval):")
    automr = reports["automr:likelihood"]
    for other in ("bigrec", "random"):  # resampled as the step's own paired intervals
        diff = compare_likelihoods(automr, reports[f"{other}:likelihood"],
                                   n_resamples=automr.n_resamples, seed=automr.seed,
                                   resample=automr.resample)["target_ll"]
        verdict = ("higher" if diff.low > 0 else "lower" if diff.high < 0
                   else "no difference resolved")
        lines.append(f"  AutoMR - {other:<7} {diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]"
                     f"  ({verdict})")
    example = out / "example" / "example.md"
    if example.exists():
        lines += ["", "The user of the likelihood step's first sample, at their latest test "
                      "sample, AutoMR's top 5:",
                  example.read_text(encoding="utf-8").rstrip()]
    return "\n".join(lines) + "\n"


def _step_file(out: Path, path: Path) -> Path:
    """``path``, written by the demo step of the folder it lies in; a missing one is one line
    saying how to run that step again (a rerun skips a step marked done)."""
    if not path.is_file():
        step = path.relative_to(out).parts[0]
        raise AutomrError(f"{path} is missing; delete {out / f'.done-{step}'} and rerun the "
                          f"same demo (that step runs again, the others are kept)")
    return path
