"""The heavy steps on a tiny model, as tests/test_distributed.py runs them: in the test's own
process for the single-process reference, and as a script under ``torchrun`` (2 gloo
processes) for the data-parallel run::

    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        tests/distributed_steps.py WORKSPACE OUT

writes OUT/{memory,item-memory,annotations,evaluation,cli-evaluation,finetune,summaries.json}
and OUT/finetune-cut, a fine-tune stopped after step 4 (the test resumes it in one process);
memory and annotations resume what the test left there.
"""

import sys
from pathlib import Path

LAYER = 2
FINETUNE = dict(max_train_samples=17, max_valid_samples=5, batch_size=2, grad_accum=4,
                epochs=2, eval_every=3, patience=100, lr=5e-3, lora_dropout=0.0,
                lora_from_layer=LAYER, checkpoint_every=1)
"""17 samples in effective batches of 8: every third step has 1 sample (one process has none);
with 2 processes each runs 2 micro-batches of 2 (the first without gradient sync)."""
EVALUATE_METHODS = ("pop", "sasrec", "base:l2", "random:likelihood")


def _model(workspace: Path):
    from automr.llm.loading import load_model

    return load_model(str(workspace / "model"), device="cpu")


def _dataset(workspace: Path):
    from automr.data import PreparedDataset

    return PreparedDataset.load(workspace / "prepared")


def memory(workspace: Path, out: Path, on_shard=None, encoder: str = "window"):
    """A window memory, or with ``encoder="item"`` one of shared shards (each item once)."""
    from automr.memory import MemoryConfig, build_memory

    config = MemoryConfig(encoder=encoder, shard_elements=40, store_token_states=True)
    return build_memory(_model(workspace), _dataset(workspace), LAYER, config, out,
                        batch_size=5, progress=False, on_shard=on_shard)


def annotate(workspace: Path, memory_dir: Path, out: Path) -> None:
    from automr.annotation.run import AnnotateConfig, annotate_dataset
    from automr.memory import MemoryStore

    config = AnnotateConfig(max_samples=10, shard_size=3, combiner="append-token")
    annotate_dataset(_model(workspace), _dataset(workspace), MemoryStore.open(memory_dir), out,
                     config, progress=False)


def finetune(workspace: Path, out: Path, interrupt_after: int | None = None,
             resume: bool = True) -> dict | None:
    """The fine-tune; with ``interrupt_after``, Ctrl-C right after that step's checkpoint,
    then (``resume``) the same call again (it resumes)."""
    import automr.recommenders.finetune as ft

    config = ft.FinetuneConfig(**FINETUNE)
    if interrupt_after is not None:
        original = ft._save_checkpoint

        def interrupted(model, optimizer, record, out_dir, scaler=None):
            original(model, optimizer, record, out_dir, scaler)
            if record["step"] == interrupt_after:
                raise KeyboardInterrupt

        ft._save_checkpoint = interrupted
        try:
            ft.finetune(_model(workspace), _dataset(workspace), out, config, progress=False)
        except KeyboardInterrupt:
            pass
        finally:
            ft._save_checkpoint = original
        if not resume:
            return None
    return ft.finetune(_model(workspace), _dataset(workspace), out, config, progress=False)


def evaluation(workspace: Path, finetuned: Path, memory_dir: Path, out: Path):
    from automr.data.subsets import seeded_subset
    from automr.evaluation import evaluate
    from automr.methods.registry import (
        Artifacts,
        MethodOptions,
        Workspace,
        build_method,
    )

    dataset = _dataset(workspace)
    space = Workspace(dataset, Artifacts(model=str(workspace / "model"), finetuned=finetuned,
                                         memory=memory_dir),
                      MethodOptions(layer=LAYER, batch_size=2, combiner="append-token"),
                      device="cpu", cache_dir=workspace / "cache", progress=False)
    methods = {name: build_method(name, space) for name in EVALUATE_METHODS}
    samples = seeded_subset(dataset.samples("test"), 7, 0)
    return evaluate(methods, samples, len(dataset.catalog), out=out,
                    measures=("ranks", "likelihood"), n_resamples=50, shard_size=2)


def cli_evaluate_args(workspace: Path, out: Path) -> list[str]:
    return ["evaluate", "--data", str(workspace / "prepared"), "--out", str(out),
            "--methods", "pop,base:likelihood", "--model", str(workspace / "model"),
            "--samples", "4", "--layer", str(LAYER), "--measures", "ranks,likelihood",
            "--device", "cpu",
            "--cache-dir", str(workspace / "cache"), "--quiet"]


class HashWriter:
    """Stands in for the summarising LM: a reply that depends only on the prompt."""

    max_new_tokens, batch_size = 4, 2

    def render(self, instruction: str) -> str:
        return instruction

    def generate(self, prompts: list[str]) -> list[str]:
        import hashlib

        return [f"likes {hashlib.sha256(p.encode()).hexdigest()[:8]}" for p in prompts]


def summaries(workspace: Path, folder: Path) -> list[str | None]:
    """TRSR summaries of 8 training samples (each process writes its share)."""
    from automr.contexts import TRSRContext
    from automr.contexts.summaries import SummaryCache
    from automr.data.subsets import seeded_subset

    dataset = _dataset(workspace)
    context = TRSRContext(HashWriter(), SummaryCache(folder / "summaries.jsonl", "fp", 4),
                          dataset.catalog, dataset.prompt_config, block_size=3, max_blocks=2,
                          progress=False)
    samples = seeded_subset(dataset.samples("train"), 8, 0)
    context.precompute(samples)
    return context.texts(samples)


def main(workspace: Path, out: Path) -> None:
    from automr import distributed
    from automr.cli.main import app
    from automr.storage import write_json_atomic

    distributed.init()
    ref = workspace / "ref"
    memory(workspace, out / "memory")
    memory(workspace, out / "item-memory", encoder="item")
    annotate(workspace, ref / "memory", out / "annotations")
    import automr.methods.sasrec as sasrec

    fits, fit = [], sasrec.fit_sasrec
    sasrec.fit_sasrec = lambda *args, **kwargs: fits.append(1) or fit(*args, **kwargs)
    evaluation(workspace, ref / "finetune", ref / "memory", out / "evaluation")
    sasrec.fit_sasrec = fit
    write_json_atomic(out / f"sasrec-fits.rank-{distributed.rank()}.json", len(fits))
    record = finetune(workspace, out / "finetune", interrupt_after=2)
    finetune(workspace, out / "finetune-cut", interrupt_after=4, resume=False)  # test resumes
    texts = summaries(workspace, out / "trsr")
    app(cli_evaluate_args(workspace, out / "cli-evaluation"), standalone_mode=False)
    if distributed.is_main():
        write_json_atomic(out / "summaries.json", texts)
        write_json_atomic(out / "processes.json", {"world": distributed.world_size(),
                                                   "steps": record["step"]})
    distributed.barrier()  # every output is written before any process exits


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
