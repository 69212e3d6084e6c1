"""automr: memory retrieval for LLM-based generative recommenders (AutoMR).

The main components, importable from here (each is loaded on first use, so ``import automr``
stays light)::

    import automr

    dataset = automr.PreparedDataset.load("runs/demo/data")
    run = automr.FinetunedRun.open("runs/demo/bigrec")        # a finished BIGRec fine-tune
    loaded = run.load()
    store = run.open_memory("runs/demo/memory")               # checked against the fine-tune
    grounder = automr.build_grounder("constrained", loaded, dataset, run.base_fingerprint)
    bigrec = automr.GenerativeMethod(loaded, dataset, grounder, store.layer, progress=True)
    mine = automr.GenerativeMethod(loaded, dataset, grounder, store.layer, progress=True,
        retrieval=automr.MemoryRetrieval(store, MyRetriever(), automr.Concat()))
    samples = automr.seeded_subset(dataset.samples("test"), 200, seed=0)
    print(automr.evaluate({"bigrec": bigrec, "mine": mine}, samples,
                          len(dataset.catalog)).markdown())

``docs/api/index.md`` says what to import for what.
"""

from automr._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    # errors and Protocols
    "AutomrError": "automr.errors",
    **{name: "automr.interfaces" for name in (
        "Annotator", "Combiner", "Encoder", "Explained", "Grounder", "LikelihoodMethod", "Memory",
        "MemoryTokens", "MemoryView", "Method", "PromptContext", "Retriever", "SplitLLM")},
    # data
    **{name: "automr.data" for name in (
        "Catalog", "Interaction", "Item", "PreparedDataset", "ProtocolConfig", "PromptConfig",
        "Sample", "load_amazon", "load_csv", "load_movielens_100k", "prepare_dataset",
        "prepare_movielens_100k")},
    "seeded_subset": "automr.data.subsets",
    "dataset_fingerprint": "automr.data.fingerprint",
    # the LM and its split
    **{name: "automr.llm" for name in ("HFSplitLLM", "LayerState", "LoadedModel", "load_model")},
    **{name: "automr.defaults" for name in ("DEFAULT_LAYER", "DEFAULT_MODEL")},
    # memory
    **{name: "automr.memory" for name in (
        "ItemEncoder", "MemoryConfig", "MemoryStore", "WindowEncoder", "build_memory")},
    # retrievers and combiners
    **{name: "automr.retrievers" for name in (
        "MLPRetriever", "RETRIEVERS", "RandomRetriever", "RetrievalDataset",
        "RetrieverTrainingConfig", "SemanticRetriever", "build_retriever", "load_retriever",
        "train_mlp_retriever")},
    **{name: "automr.combiners" for name in ("AppendToken", "COMBINERS", "Concat",
                                              "PrependToken")},
    # grounding, annotation, recommenders
    **{name: "automr.grounding" for name in ("GROUNDER_KINDS", "build_grounder")},
    **{name: "automr.annotation.run" for name in (
        "AnnotateConfig", "Annotations", "annotate_dataset", "retrieval_dataset")},
    "UpperAnnotator": "automr.annotation.likelihood",
    **{name: "automr.recommenders.finetune" for name in ("FinetuneConfig", "finetune")},
    "FinetunedRun": "automr.recommenders.runs",
    "MemoryRetrieval": "automr.recommenders.automr",
    "SASRecConfig": "automr.recommenders.sasrec",
    # methods and evaluation
    **{name: "automr.methods" for name in (
        "METHODS", "Artifacts", "CooccurrenceMethod", "GenerativeMethod", "MethodOptions",
        "PopularityMethod", "PriorWeightedMethod", "SASRecMethod", "Workspace",
        "build_method")},
    **{name: "automr.evaluation" for name in (
        "Evaluation", "EvaluationFolder", "MetricReport", "combine_folders", "evaluate",
        "open_evaluation")},
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
