"""``automr memory build``, ``automr annotate``, ``automr retriever train|score``."""

import json
from pathlib import Path
from typing import Annotated

import typer

from automr.cli.common import (
    DEFAULT_LORA_TARGETS,
    CombinerOption,
    DataOption,
    DeviceOption,
    FinetunedOption,
    LabelFormOption,
    LabelTemperatureOption,
    LayerOption,
    LoraTargetsOption,
    MemoryOption,
    ModelOption,
    QuietOption,
    ResampleOption,
    RetrieverOption,
    Runtime,
    SampleSeedOption,
    SplitOption,
    checked_options,
    command_group,
    parse_lora_targets,
    runtime_options,
    user_errors,
    zero_is,
)
from automr.defaults import DEFAULT_LAYER, DEFAULT_MODEL
from automr.errors import AutomrError
from automr.paths import home_path

memory_app = command_group("Build per-user layer-L memories.")
retriever_app = command_group("Train and score retrievers on annotations.")



@memory_app.command("build")
@user_errors
@runtime_options()
def memory_build(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Memory folder (a rerun resumes).")],
    model: ModelOption = DEFAULT_MODEL,
    layer: LayerOption = DEFAULT_LAYER,
    encoder: Annotated[str, typer.Option(
        help="window (eq. 2: the prompt at each interaction) or item (the title alone).")] =
        "window",
    pooling: Annotated[str, typer.Option(help="mean (without the first token) or last.")] =
        "mean",
    store_token_states: Annotated[bool, typer.Option(
        help="Also store token states (the concat combiner, the default, needs them).")] = True,
    storage_dtype: Annotated[str, typer.Option(help="model, float32, float16, bfloat16.")] =
        "model",
    batch_size: Annotated[int, typer.Option(
        help="Prompts per lower-half forward (a resume may change it; states then differ "
             "within float rounding).")] = 16,
    shard_elements: Annotated[int, typer.Option(
        help="Close a shard once it holds this many elements (0 = the encoder's default: "
             "2048 for window, 200,000 for item).")] = 0,
    *, runtime: Runtime,
) -> None:
    """Encode every interaction of the dataset into a memory at layer L."""
    from automr.data import PreparedDataset
    from automr.memory import MemoryConfig, Pooling, build_memory

    given = zero_is(shard_elements, "--shard-elements", "the encoder's default")
    sharding = {} if given is None else {"shard_elements": given}
    config = checked_options("memory", lambda: MemoryConfig(
        encoder=encoder, pooling=Pooling(kind=pooling), store_token_states=store_token_states,
        storage_dtype=storage_dtype, **sharding))
    store = build_memory(runtime.load_model(model), PreparedDataset.load(data), layer, config,
                         out, batch_size=batch_size, progress=runtime.progress)
    typer.echo(f"memory of {len(store.users())} users at layer {store.layer} in {out}")


@user_errors
@runtime_options(exact=True)
def annotate_command(
    data: DataOption,
    memory: MemoryOption,
    finetuned: FinetunedOption,
    out: Annotated[Path, typer.Option(help="Annotation folder (a rerun resumes).")],
    samples: Annotated[int, typer.Option(help="Seeded subset of samples (0 = all).")] = 256,
    split: SplitOption = "train",
    combiner: CombinerOption = "concat",
    element_batch: Annotated[int, typer.Option(help="Memory elements per upper pass.")] = 32,
    element_subset: Annotated[int, typer.Option(
        help="Annotate a seeded subset of this many elements per sample (0 = all).")] = 0,
    element_seed: Annotated[int, typer.Option(help="Seed of the element subsets.")] = 0,
    seed: SampleSeedOption = 0,
    *, runtime: Runtime,
) -> None:
    """Eq. 5: each memory element's effect on the true next item's likelihood."""
    from automr.annotation.run import AnnotateConfig, annotate_dataset
    from automr.data import PreparedDataset
    from automr.recommenders.runs import FinetunedRun

    max_samples = zero_is(samples, "--samples", "every sample of the split")
    subset = zero_is(element_subset, "--element-subset", "every element")
    config = checked_options("annotation", lambda: AnnotateConfig(
        split=split, max_samples=max_samples, seed=seed, combiner=combiner,
        element_batch=element_batch, element_subset=subset, element_seed=element_seed),
        {"max_samples": "samples"})
    run = FinetunedRun.open(finetuned)
    run.check_plain()
    dataset = PreparedDataset.load(data)
    store = run.open_memory(memory)
    store.check_dataset(dataset)  # the memory's dataset first, then the fine-tune's
    run.check_dataset(dataset)
    annotate_dataset(run.load(**runtime.keywords()), dataset, store, out, config,
                     progress=runtime.progress)
    typer.echo(f"annotations in {out}")


@retriever_app.command("train")
@user_errors
def retriever_train(
    annotations: Annotated[Path, typer.Option(help="Annotation folder (automr annotate).")],
    data: DataOption,
    memory: MemoryOption,
    out: Annotated[Path, typer.Option(help="Retriever folder.")],
    label_form: LabelFormOption = "log",
    temperature: LabelTemperatureOption = 1.0,
    valid_fraction: Annotated[float, typer.Option(
        help="Held-out share of annotated samples for early stopping.")] = 0.2,
    lr: Annotated[float, typer.Option(help="Learning rate (Adam).")] = 1e-3,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 200,
    patience: Annotated[int, typer.Option(
        help="Stop after this many epochs without improvement (the best state is kept).")] = 10,
    monitor: Annotated[str, typer.Option(
        help="Early stopping on the held-out samples: kl, top1 (agreement with the best "
             "element) or regret (eq. 5 gain given up by the top pick).")] = "kl",
    seed: Annotated[int, typer.Option(
        help="Seed of the held-out split, initialisation and batch order.")] = 0,
    normalize: Annotated[bool, typer.Option(
        help="Standardise queries and unit-scale keys before eq. 3 (the paper's scores on raw "
             "layer states start nearly one-hot).")] = False,
    device: DeviceOption = "auto",
    quiet: QuietOption = False,
) -> None:
    """Eq. 6: train the MLP retriever with KL(S' || S)."""
    from automr.experiments.retriever import train_retriever
    from automr.retrievers import RetrieverTrainingConfig

    config = checked_options("retriever training", lambda: RetrieverTrainingConfig(
        lr=lr, max_epochs=epochs, patience=patience, monitor=monitor, seed=seed,
        normalize=normalize),
        {"max_epochs": "epochs"})
    record = train_retriever(annotations, data, memory, out, label_form, temperature,
                             valid_fraction, config, progress=not quiet, device=device)
    valid = record["valid"]
    typer.echo(f"retriever in {out} (train {record['train_samples']}, valid "
               f"{record['valid_samples']}" + (f", valid KL {valid['kl']:.4f} (equal scores "
                                               f"{valid['uniform_kl']:.4f}), top-1 agreement "
                                               f"{valid['top1']:.3f}, regret "
                                               f"{valid['regret']:.4f})" if valid else ")"))


@retriever_app.command("score")
@user_errors
def retriever_score(
    annotations: Annotated[Path, typer.Option(
        help="Annotation folder of held-out samples (e.g. automr annotate --split test).")],
    data: DataOption,
    memory: MemoryOption,
    out: Annotated[Path, typer.Option(help="Folder for scores.json and scores.md.")],
    retriever: Annotated[list[str] | None, typer.Option(
        help="NAME=FOLDER of a trained retriever; repeat for several.")] = None,
    semantic: Annotated[bool, typer.Option(help="Also score semantic retrieval.")] = True,
    seeds: Annotated[str, typer.Option(
        help="Random retrieval seeds: comma-separated integers or ranges.")] = "0-9",
    resample: ResampleOption = "samples",
    training_annotations: Annotated[bool, typer.Option(
        "--training-annotations/--no-training-annotations",
        help="Take annotations a --retriever was trained on (how well it fits them, not "
             "what it learned); refused without.")] = False,
) -> None:
    """What each retriever's first pick is worth: eq. 5's gain, read off the annotations.

    Exact, no model; beside the oracle, the random expectation and seeded random draws."""
    from automr.annotation.run import Annotations
    from automr.cli.figures import parse_seeds
    from automr.experiments.retriever import check_held_out, score_retrievers
    from automr.memory import MemoryStore
    from automr.recommenders.automr import load_retriever_for
    from automr.retrievers import build_retriever
    from automr.storage import check_own_folder, write_text_atomic

    check_own_folder(out, "scores", ("scores.json", "scores.md"))
    store = MemoryStore.open(memory)
    combiner = Annotations.header_of(annotations)["config"]["combiner"]
    hidden = store.hidden_size
    chosen = {"semantic": build_retriever("semantic", hidden)} if semantic else {}
    for text in retriever or []:
        name, sep, folder = text.partition("=")
        if not sep or not name or not folder:
            raise AutomrError(f"--retriever takes NAME=FOLDER, got {text!r}")
        folder = str(home_path(folder))  # as --out's ~
        if name in chosen:
            raise AutomrError(f"--retriever names {name!r} twice (with --semantic, 'semantic' "
                              f"is taken)")
        if not training_annotations:
            check_held_out(folder, annotations)
        chosen[name] = load_retriever_for(store, folder, combiner)  # this memory's keys
    del store
    scores = score_retrievers(annotations, data, memory, chosen, random_seeds=parse_seeds(seeds),
                              resample=resample)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "scores.json", json.dumps(scores.to_json(), indent=1) + "\n")
    text = scores.markdown()
    write_text_atomic(out / "scores.md", text)
    typer.echo(text)


@user_errors
@runtime_options(exact=True)  # eq. 5's gains and the closing likelihood differences
def demo_command(
    out: Annotated[Path, typer.Option(help="Run folder (a rerun resumes).")] = Path(
        "runs/demo"),
    layer: LayerOption = DEFAULT_LAYER,
    train_samples: Annotated[int, typer.Option(help="Fine-tuning samples.")] = 96,
    annotate_samples: Annotated[int, typer.Option(help="Annotated samples.")] = 64,
    test_samples: Annotated[int, typer.Option(help="Test samples per ranked method.")] = 48,
    likelihood_samples: Annotated[int, typer.Option(
        help="Test samples of the closing target-likelihood comparison.")] = 200,
    encoder: Annotated[str, typer.Option(help="Memory encoder: item or window.")] = "item",
    combiner: CombinerOption = "concat",
    model: ModelOption = DEFAULT_MODEL,
    lora_targets: LoraTargetsOption = DEFAULT_LORA_TARGETS,
    data: Annotated[Path | None, typer.Option(
        help="Use this prepared dataset instead of preparing MovieLens-100K.")] = None,
    seed: Annotated[int, typer.Option(
        help="Seed of every step (sample subsets, fine-tune, retriever).")] = 0,
    *, runtime: Runtime,
) -> None:
    """The main job: the whole pipeline on the embedded default, ending with a results table.

    Prepares MovieLens-100K, fine-tunes BIGRec (LoRA on layers >= L), builds the memory,
    annotates (eq. 5), trains the retriever (eq. 6), ranks the popularity and co-occurrence
    floors, BIGRec, AutoMR and random retrieval on the same test samples, and ends with AutoMR's
    gain in the true title's log-likelihood over BIGRec and over random retrieval, with paired
    intervals, and one test user's recommendation with the memory AutoMR retrieved.
    """
    from automr.experiments.demo import DemoConfig, demo_summary, run_demo

    config = checked_options("demo", lambda: DemoConfig(
        model=model, layer=layer, train_samples=train_samples, annotate_samples=annotate_samples,
        test_samples=test_samples, likelihood_samples=likelihood_samples, encoder=encoder,
        combiner=combiner, seed=seed,
        lora_targets=parse_lora_targets(lora_targets)))
    results = run_demo(out, config, **runtime.keywords(), progress=runtime.progress,
                       dataset_dir=data, say=runtime.say)
    typer.echo(demo_summary(out))
    typer.echo(f"artifacts: {out.resolve()} (results in {results}, {out / 'likelihood'})")


@user_errors
@runtime_options(quiet=False)
def recommend_command(
    users: Annotated[list[str], typer.Argument(
        help="User ids (as in the dataset); the model loads once for all of them.")],
    data: DataOption,
    finetuned: FinetunedOption,
    memory: MemoryOption,
    retriever: RetrieverOption,
    top: Annotated[int, typer.Option(help="How many items to show.")] = 10,
    split: Annotated[str, typer.Option(help="Take the user's latest sample of this split.")] =
        "test",
    grounder: Annotated[str, typer.Option(help="l2, constrained or likelihood.")] =
        "constrained",
    combiner: CombinerOption = "concat",
    k: Annotated[int, typer.Option(help="Memory elements retrieved.")] = 1,
    exclude_seen: Annotated[bool, typer.Option(
        help="Leave the sample's history (the user's latest max_history items, 100 by "
             "default: older ones stay) out of the list, as evaluate --exclude-seen.")] = True,
    num_beams: Annotated[int, typer.Option(
        help="Beams, as evaluate's (0 = grounder default: 4 for l2, 10 for constrained; "
             "likelihood generates none).")] = 0,
    *, runtime: Runtime,
) -> None:
    """Users' top items from AutoMR and the memory elements it retrieved (item, date)."""
    from automr.experiments.recommend import recommendations

    shown = recommendations(data, users, finetuned, memory, retriever, top, split, grounder,
                            combiner, k, runtime.device, runtime.cache_dir, runtime.dtype,
                            exclude_seen, num_beams or None)
    for number, result in enumerate(shown):
        typer.echo(("\n" if number else "") + "\n".join(result.describe(split)))
