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

from typing import TYPE_CHECKING

from automr._lazy import lazy_exports, typed_exports

if TYPE_CHECKING:  # the exports, as type checkers read them; imported on first use
    from automr.annotation.likelihood import UpperAnnotator as UpperAnnotator
    from automr.annotation.run import (
        AnnotateConfig as AnnotateConfig,
        Annotations as Annotations,
        annotate_dataset as annotate_dataset,
        retrieval_dataset as retrieval_dataset,
    )
    from automr.combiners.tokens import (
        COMBINERS as COMBINERS,
        AppendToken as AppendToken,
        Concat as Concat,
        PrependToken as PrependToken,
    )
    from automr.data import (
        Catalog as Catalog,
        Interaction as Interaction,
        Item as Item,
        PreparedDataset as PreparedDataset,
        PromptConfig as PromptConfig,
        ProtocolConfig as ProtocolConfig,
        Sample as Sample,
        load_amazon as load_amazon,
        load_csv as load_csv,
        load_movielens as load_movielens,
        load_movielens_100k as load_movielens_100k,
        prepare_dataset as prepare_dataset,
        prepare_movielens_100k as prepare_movielens_100k,
    )
    from automr.data.fingerprint import dataset_fingerprint as dataset_fingerprint
    from automr.data.subsets import seeded_subset as seeded_subset
    from automr.defaults import (
        DEFAULT_LAYER as DEFAULT_LAYER,
        DEFAULT_MODEL as DEFAULT_MODEL,
    )
    from automr.errors import AutomrError as AutomrError
    from automr.evaluation import (
        Evaluation as Evaluation,
        EvaluationFolder as EvaluationFolder,
        MetricReport as MetricReport,
        combine_folders as combine_folders,
        evaluate as evaluate,
        open_evaluation as open_evaluation,
    )
    from automr.experiments.recommend import Recommender as Recommender
    from automr.grounding import (
        GROUNDER_KINDS as GROUNDER_KINDS,
        build_grounder as build_grounder,
    )
    from automr.interfaces import (
        Annotator as Annotator,
        Combiner as Combiner,
        Encoder as Encoder,
        Explained as Explained,
        Grounder as Grounder,
        LikelihoodMethod as LikelihoodMethod,
        Memory as Memory,
        MemoryTokens as MemoryTokens,
        MemoryView as MemoryView,
        Method as Method,
        PromptContext as PromptContext,
        Retriever as Retriever,
        SplitLLM as SplitLLM,
    )
    from automr.llm.loading import (
        LoadedModel as LoadedModel,
        load_model as load_model,
    )
    from automr.llm.split import HFSplitLLM as HFSplitLLM
    from automr.memory import (
        ItemEncoder as ItemEncoder,
        MemoryConfig as MemoryConfig,
        MemoryStore as MemoryStore,
        WindowEncoder as WindowEncoder,
        build_memory as build_memory,
    )
    from automr.methods import (
        METHODS as METHODS,
        Artifacts as Artifacts,
        CooccurrenceMethod as CooccurrenceMethod,
        GenerativeMethod as GenerativeMethod,
        MethodOptions as MethodOptions,
        PopularityMethod as PopularityMethod,
        PriorWeightedMethod as PriorWeightedMethod,
        SASRecMethod as SASRecMethod,
        Workspace as Workspace,
        build_method as build_method,
    )
    from automr.recommenders.automr import (
        MemoryRetrieval as MemoryRetrieval,
        Retrieval as Retrieval,
    )
    from automr.recommenders.finetune import (
        FinetuneConfig as FinetuneConfig,
        finetune as finetune,
    )
    from automr.recommenders.runs import FinetunedRun as FinetunedRun
    from automr.recommenders.sasrec import SASRecConfig as SASRecConfig
    from automr.retrievers import (
        RETRIEVERS as RETRIEVERS,
        MLPRetriever as MLPRetriever,
        RandomRetriever as RandomRetriever,
        RetrievalDataset as RetrievalDataset,
        RetrieverTrainingConfig as RetrieverTrainingConfig,
        SemanticRetriever as SemanticRetriever,
        build_retriever as build_retriever,
        load_retriever as load_retriever,
        train_mlp_retriever as train_mlp_retriever,
    )
    from automr.state import LayerState as LayerState

__version__ = "0.1.0"

_EXPORTS = typed_exports(__file__)
__all__ = sorted(_EXPORTS)
if not TYPE_CHECKING:  # a checker reads the imports above, not a __getattr__ of any name
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
