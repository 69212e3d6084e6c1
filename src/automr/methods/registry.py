"""The method kinds the CLI knows: one registry dict of builders.

A method is named ``KIND`` or ``KIND:GROUNDER`` (``automr evaluate --methods``). Each
:class:`MethodKind` says which artifacts it needs, what decides its ranks (its settings, for
resuming an evaluation folder) and how to build it. Building is deferred until the method
first ranks, so a resumed evaluation loads no model and trains nothing.

Adding a method kind is one builder function and one line in :data:`METHODS`.
"""

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from automr import distributed
from automr.checks import beartype, int_field
from automr.combiners import COMBINERS
from automr.combiners.names import COMBINER_NAMES
from automr.data import PreparedDataset, Sample
from automr.data.fingerprint import dataset_fingerprint
from automr.data.popularity import popularity
from automr.data.subsets import seeded_subset
from automr.defaults import DEFAULT_LAYER
from automr.devices import resolve_device
from automr.errors import AutomrError
from automr.evaluation.folder import EvaluationFolder, evaluated_settings
from automr.evaluation.metrics import seen_mask
from automr.grounding.catalog import GROUNDER_KINDS, build_grounder
from automr.grounding.likelihood import LoweredBatches
from automr.grounding.prior import best_gamma, gamma_metrics, min_max
from automr.interfaces import LikelihoodMethod, Method, PromptContext
from automr.llm.loading import (
    DEFAULT_MODEL,
    LoadedModel,
    dtype_used,
    files_fingerprint,
    load_model,
    model_folder,
    weight_files,
)
from automr.llm.split import HFSplitLLM
from automr.memory import MemoryRecord, MemoryStore
from automr.methods.baselines import CooccurrenceMethod, PopularityMethod
from automr.methods.generative import GenerativeMethod, KeptLikelihoods
from automr.methods.injection import PriorWeightedMethod, Scores
from automr.methods.sasrec import SASRecMethod
from automr.recommenders.automr import MemoryRetrieval, Retrieval, load_retriever_for
from automr.recommenders.runs import FinetunedRun
from automr.recommenders.sasrec import LOSSES, SASRecConfig
from automr.retrievers import build_retriever
from automr.retrievers.storage import retriever_digest
from automr.storage import read_json


@beartype
@attrs.frozen(kw_only=True)
class MethodOptions:
    """How named methods run (the method-level part of ``automr evaluate``'s options)."""

    layer: int | None = int_field(attrs.validators.ge(0), default=None, optional=True)
    """Split layer; None: the memory's layer when a memory is given, else the default (15,
    or a smaller model's last). Memory-free methods rank the same at any layer (the split is
    exact)."""
    num_beams: int | None = int_field(attrs.validators.gt(0), default=None, optional=True)
    batch_size: int = int_field(attrs.validators.gt(0), default=8)
    exclude_seen: bool = False
    combiner: str = attrs.field(default="concat",
                                validator=attrs.validators.in_(COMBINER_NAMES))
    k: int = int_field(attrs.validators.gt(0), default=1)
    seed: int = int_field(default=0)
    """Seed of SASRec's training and of random retrieval (unless ``retrieval_seed``)."""
    sasrec_loss: str = attrs.field(default="ce", validator=attrs.validators.in_(LOSSES))
    """SASRec's training loss (``sasrec`` and ``l2-sasrec``): ``ce`` or the paper's ``bce``
    (:class:`~automr.recommenders.sasrec.SASRecConfig`)."""
    retrieval_seed: int | None = int_field(default=None, optional=True)
    tune_samples: int = int_field(attrs.validators.gt(0), default=200)
    """Seeded validation samples on which the ``-pop`` and ``-sasrec`` grounders choose their
    ``gamma``."""

    def sasrec_config(self) -> SASRecConfig:
        """How the SASRec of ``sasrec`` and ``l2-sasrec`` is trained: its defaults, with this
        seed and loss."""
        return SASRecConfig(seed=self.seed, loss=self.sasrec_loss)


def _popularity_prior(space: "Workspace") -> Scores:
    """Training-period popularity, counted once: one row, the same for every sample."""
    prior = popularity(space.dataset).float()[None]
    return lambda samples: prior


INJECTIONS: dict[str, Callable[["Workspace"], Scores]] = {
    "l2-pop": _popularity_prior,
    "l2-sasrec": lambda space: space.sasrec().scores,
}
"""The L2 grounding with BIGRec's statistical information injection
(:class:`~automr.methods.injection.PriorWeightedMethod`), by name: the prior's scores, from
training-period popularity (the same for every sample) or SASRec (per sample)."""

TUNING_CELLS = 2**24
"""Gamma is tuned on about this many ``[samples, items]`` cells at a time (64 MB a float32
matrix), in whole generation batches: at once below 16,777 samples of a 1,000-item catalog,
160 samples at a time of a 100,000-item one at batches of 8."""

SAME_GAMMA = {"l2-pop": "constrained-pop", "constrained-pop": "l2-pop"}
"""Grounders that take one gamma (tuned on the L2 grounding with popularity): a resume or a
method added to an evaluation folder takes the other's saved one."""

TUNING_NOTES = ("tuned_on_valid_samples", "valid_ndcg@5")
"""What :meth:`Workspace.tuned_gamma` says of a tuning beside the gamma."""

INJECTION_ONLY = ("grounder", "tune_samples", "tune_seed", "sasrec")
"""What only an injection's settings hold beside its L2 grounding's (its generations are the
same)."""

GROUNDERS = (*GROUNDER_KINDS, *INJECTIONS)
"""What ``KIND:GROUNDER`` accepts: every grounder kind and every L2 injection."""
TUNED_GROUNDERS = ("constrained-pop", *INJECTIONS)
"""The grounders whose prior weight (gamma) is tuned on seeded validation samples."""


@attrs.frozen(kw_only=True)
class Artifacts:
    """The folders named methods are built from; each method kind says which it needs."""

    model: str | None = attrs.field(default=None, validator=attrs.validators.optional(
        attrs.validators.instance_of(str)))
    """The untuned LM of ``base`` methods; None: the base model of the fine-tune given
    (``finetuned``, else ``rella``, else ``trsr``: so that ``base`` and the tuned methods are
    one model), else :data:`~automr.defaults.DEFAULT_MODEL`."""
    finetuned: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    memory: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    retriever: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    rella: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    trsr: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))


MADE_BY = {
    "finetuned": "`automr finetune`", "memory": "`automr memory build`",
    "retriever": "`automr retriever train`", "rella": "`automr finetune --context rella`",
    "trsr": "`automr finetune --context trsr`",
}

def _tuned_fingerprint(folder: Path) -> str:
    return FinetunedRun.open(folder).fingerprint()


DIGESTS: dict[str, Callable[[Path], str]] = {
    "finetuned": _tuned_fingerprint, "rella": _tuned_fingerprint, "trsr": _tuned_fingerprint,
    "memory": MemoryStore.digest, "retriever": retriever_digest,
}
"""What each artifact folder holds, hashed: part of a method's settings, so that an artifact
made again in the same folder is not taken for the old one by a resumed evaluation."""


def _model_key(run: FinetunedRun | None) -> str:
    """Which loaded model: ``base``, or a fine-tune by its folder."""
    return "base" if run is None else str(run.path.resolve())


@attrs.define(eq=False)
class SharedModels:
    """Loaded models, and the lower half's likelihood batches of their methods
    (:class:`~automr.grounding.likelihood.LoweredBatches`). A :class:`Workspace` makes its
    own; give one to several (``automr rq2`` does, an evaluation per run) and they load each
    model once, and run the lower half of a likelihood batch once between them where its
    ``lowered`` keeps passes for the methods built later (``keep_for_later``)."""

    models: dict[tuple[str, str, str], LoadedModel] = attrs.field(factory=dict)
    """By model (the base model's name, or a fine-tune's folder), device and dtype."""
    lowered: LoweredBatches = attrs.field(factory=LoweredBatches)
    digests: dict[str, str] = attrs.field(factory=dict)
    """Each artifact folder's digest when first read (:data:`DIGESTS`), by resolved path."""

    def unchanged(self, folder: Path, digest: str) -> str:
        """``digest`` of artifact ``folder``, refused where it differs from the folder's
        first: what was loaded from it (a model, a retriever, a memory) is kept, so an
        artifact made again into the same folder would rank with the old one under the new
        one's settings."""
        first = self.digests.setdefault(str(folder.resolve()), digest)
        if first != digest:
            raise AutomrError(f"{folder} was made again since these methods first read it "
                              f"(what they loaded from it is kept): build them in a new "
                              f"Workspace")
        return digest


@attrs.define
class Workspace:
    """What the builders share: the data, the artifacts, options, and loaded models (each
    model is loaded once however many methods use it; ``shared`` by several workspaces, once
    for all of them)."""

    dataset: PreparedDataset = attrs.field(validator=attrs.validators.instance_of(
        PreparedDataset))
    artifacts: Artifacts = attrs.field(default=Artifacts(),
                                       validator=attrs.validators.instance_of(Artifacts))
    options: MethodOptions = attrs.field(default=MethodOptions(),
                                         validator=attrs.validators.instance_of(MethodOptions))
    device: str = "auto"
    cache_dir: Path | str | None = None
    progress: bool = True
    dtype: str = "auto"
    """The models' dtype (``auto``: bfloat16 on CUDA, float32 on CPU)."""
    kept: EvaluationFolder | None = None
    """An evaluation folder whose L2 generations made with the same settings are measured
    again instead of generated again (an injection added to a folder that holds ``X:l2``),
    and where the SASRec its methods train is kept for a resume."""
    shared: SharedModels = attrs.field(factory=SharedModels,
                                       validator=attrs.validators.instance_of(SharedModels))
    measured: Sequence[str] = ()
    """The ids of the samples its methods are evaluated on (:func:`~automr.experiments.
    evaluate.evaluate_methods` gives them): a resume's saved values in :attr:`kept` are
    matched with them."""
    settings: dict[str, Mapping[str, Any]] = attrs.field(factory=dict, init=False)
    """The settings (:func:`method_settings`) of each method :func:`build_method` built here,
    by name."""
    _sasrec: SASRecMethod | None = attrs.field(default=None, init=False)
    _plain: dict[tuple[str, int | None], GenerativeMethod] = attrs.field(factory=dict,
                                                                        init=False)
    _retrievals: dict[str, MemoryRetrieval] = attrs.field(factory=dict, init=False)
    _contexts: dict[str, PromptContext] = attrs.field(factory=dict, init=False)
    _likelihoods: KeptLikelihoods = attrs.field(factory=KeptLikelihoods, init=False)
    """Target log-likelihoods by model, retrieval and context, shared by their methods'
    grounders."""
    _data_fingerprint: str | None = attrs.field(default=None, init=False)

    @property
    def data_fingerprint(self) -> str:
        """The dataset's fingerprint (computed once: every method's settings hold it)."""
        if self._data_fingerprint is None:
            self._data_fingerprint = dataset_fingerprint(self.dataset)
        return self._data_fingerprint

    def artifact(self, name: str, method: str = "this method") -> Path:
        """The folder of artifact ``name`` (``finetuned``, ``memory``, ...), which must be
        given (``method`` needs it)."""
        path = getattr(self.artifacts, name)
        if path is None:
            folder = "DIR" if name in ("memory", "retriever") else "RUN_DIR"
            raise AutomrError(f"{method} needs --{name} {folder} (from {MADE_BY[name]})")
        return path

    def run(self, name: str) -> FinetunedRun:
        """The fine-tune of artifact ``name``, checked to carry the matching prompt context
        (``rella``/``trsr``) or none (``finetuned``)."""
        run = FinetunedRun.open(self.artifact(name))
        kind = None if run.context is None else run.context.kind
        wanted = None if name == "finetuned" else name
        if kind != wanted:
            how = "without a prompt context" if kind is None else f"with a {kind} context"
            use = (f"give --finetuned a fine-tune without --context (evaluate it as "
                   f"{kind}:G with --{kind})" if wanted is None else
                   f"{name}:* methods need a fine-tune from {MADE_BY[name]}")
            raise AutomrError(f"{run.path} was fine-tuned {how}; {use}")
        if run.record.get("data_fingerprint") is not None:
            run.check_dataset(self.dataset, self.data_fingerprint)
        return run

    @property
    def base_model(self) -> str:
        """The model ``base`` methods run (:attr:`Artifacts.model` resolved)."""
        tuned = [self.artifacts.finetuned, self.artifacts.rella, self.artifacts.trsr]
        if self.artifacts.model is None and any(tuned):
            return FinetunedRun.open(next(run for run in tuned if run)).base_model
        return DEFAULT_MODEL if self.artifacts.model is None else self.artifacts.model

    def model(self, run: FinetunedRun | None) -> LoadedModel:
        """The base model (``run`` None) or ``run``'s tuned model, loaded once."""
        key = (self.base_model if run is None else str(run.path.resolve()), self.device,
               self.dtype)
        if key not in self.shared.models:
            self.shared.models[key] = (
                load_model(self.base_model, device=self.device, dtype=self.dtype,
                           cache_dir=self.cache_dir)
                if run is None else run.load(device=self.device, dtype=self.dtype,
                                             cache_dir=self.cache_dir))
        return self.shared.models[key]

    def generative(self, grounder: str, run: FinetunedRun | None, label: str,
                   retrieval: Retrieval | None = None) -> Method:
        """BIGRec-style ranking with ``run``'s tuned model (None: the base model); the L2
        grounding and its injections (``l2-pop``, ``l2-sasrec``) share one plain L2 method
        per model and retrieval, so each sample is generated for once."""
        if grounder == "l2":
            return self.plain_l2(run, retrieval, label)
        if grounder in INJECTIONS:
            return self.injected(grounder, self.plain_l2(run, retrieval, label), label)
        return self._generative(grounder, run, label, retrieval)

    def _generative(self, grounder: str, run: FinetunedRun | None, label: str,
                    retrieval: Retrieval | None = None) -> GenerativeMethod:
        loaded = self.model(run)
        base = loaded.fingerprint() if run is None else run.base_fingerprint
        context = None if run is None or run.context is None else self._context(run, loaded, base)
        layer = self.split_layer(loaded) if retrieval is None else retrieval.store.layer

        def method(kind: str, gamma: float = 0.0) -> GenerativeMethod:
            return GenerativeMethod(
                loaded, self.dataset,
                build_grounder(kind, loaded, self.dataset, base, self.options.num_beams,
                               self.cache_dir, self.progress, gamma),
                layer=layer, retrieval=retrieval, context=context,
                batch_size=self.options.batch_size, exclude_seen=self.options.exclude_seen,
                progress=self.progress, label=label, likelihoods=self._likelihoods,
                lowered=self.shared.lowered)

        if not grounder.endswith("-pop"):
            return method(grounder)
        gamma, tuning = self.tuned_gamma(self.plain_l2(run, retrieval, label),
                                         INJECTIONS["l2-pop"](self), label)
        tuned = method(grounder, gamma)
        tuned.note("grounding", {"gamma": gamma, **tuning, "tuned_with": "l2-pop"})
        return tuned

    def plain_l2(self, run: FinetunedRun | None, retrieval: Retrieval | None,
                 label: str) -> GenerativeMethod:
        """The L2 method of ``run``'s model with ``retrieval`` (None: no memory), one per
        model and retrieval object, so that its generations serve every injection."""
        # the plain method holds its retrieval, so the object's id stays unique while cached
        key = (_model_key(run), None if retrieval is None else id(retrieval))
        if key not in self._plain:
            self._plain[key] = self._generative("l2", run, label, retrieval)
            self._plain[key].keep(self.kept_generations(label.partition(":")[0]))
        return self._plain[key]

    def kept_generations(self, kind: str) -> dict[str, dict[str, Any]]:
        """The per-sample details (``generated``, ``retrieved``, ``contexts``) that ``kind``'s
        L2 grounding and its injections saved in :attr:`kept` with the settings its L2
        grounding has now (the same model, memory, beams, dtype, ...)."""
        if self.kept is None:
            return {}
        return self.kept.generations([f"{kind}:{g}" for g in ("l2", *INJECTIONS)],
                                     method_settings(f"{kind}:l2", self), INJECTION_ONLY)

    def injected(self, grounder: str, plain: GenerativeMethod,
                 method: str = "") -> PriorWeightedMethod:
        """``plain`` with the prior of ``grounder`` and its gamma tuned on validation (for
        ``method``: :meth:`tuned_gamma`)."""
        scores = INJECTIONS[grounder](self)
        gamma, tuning = self.tuned_gamma(plain, scores, method)
        return PriorWeightedMethod(plain, scores, gamma,
                                   {"prior": grounder.removeprefix("l2-"), **tuning})

    def sasrec(self) -> SASRecMethod:
        """SASRec (seed ``options.seed``), trained once for every method that uses it: on
        first use, or under a launcher here, on the main process, for every process (every
        process must call this at the same point: :func:`build_method` does)."""
        if self._sasrec is None:
            config = self.options.sasrec_config()
            saved = None if self.kept is None else self.kept.model_dir(
                "sasrec", {"dataset": self.data_fingerprint, "sasrec": attrs.asdict(config)})
            self._sasrec = SASRecMethod(self.dataset, config, self.progress,
                                        device=resolve_device(self.device), saved=saved)
            if distributed.launched():
                self._sasrec.train_on_main()
        return self._sasrec

    def tuned_gamma(self, plain: GenerativeMethod, scores: Scores,
                    method: str = "") -> tuple[float, dict[str, Any]]:
        """BIGRec's prior weight: the gamma with the best NDCG@5 on ``tune_samples`` seeded
        validation samples, from ``plain``'s L2 distances (memory included if any) and the
        prior ``scores``; and what it was tuned on (``tuned_on_valid_samples``: how many,
        ``valid_ndcg@5``: each gamma's value). Where :attr:`kept` holds ranks of ``method``
        made with its settings (:attr:`settings`, on :attr:`measured`; a cut run's shards),
        their gamma: every sample of a resumed run is ranked with one (bfloat16 may tune
        another in other batches), and it is not tuned again; else the gamma of its
        :data:`SAME_GAMMA` sibling saved there (``constrained-pop`` orders with
        ``l2-pop``'s)."""
        saved = self.saved_tuning(method)
        if saved is not None:
            return saved
        samples = seeded_subset(self.dataset.samples("valid"), self.options.tune_samples,
                                self.options.seed)
        if not samples:
            raise AutomrError("the -pop grounders choose gamma on validation samples; this "
                              "dataset has none")
        catalog = self.dataset.catalog
        per_sample = []  # a chunk of samples at a time: a large catalog's matrices are GBs
        # whole generation batches: in bfloat16 a batch of other prompts rounds otherwise
        batch = plain.batch_size
        rows = max(1, TUNING_CELLS // len(catalog) // batch) * batch
        for chunk in (samples[i : i + rows] for i in range(0, len(samples), rows)):
            targets = torch.tensor(catalog.positions(s.target for s in chunk))
            exclude = (seen_mask([catalog.positions(s.history) for s in chunk], len(catalog))
                       if self.options.exclude_seen else None)
            per_sample.append(gamma_metrics(plain.distances(chunk),
                                            min_max(scores(chunk).float()), targets,
                                            exclude=exclude))
        gamma, values = best_gamma(torch.cat(per_sample, dim=1))
        return gamma, {"tuned_on_valid_samples": len(samples),
                       "valid_ndcg@5": {str(g): v for g, v in values.items()}}

    def saved_tuning(self, method: str) -> tuple[float, dict[str, Any]] | None:
        """The gamma, and its tuning's notes, that :attr:`kept` saved for ``method`` or its
        :data:`SAME_GAMMA` sibling with their settings on :attr:`measured` (see
        :meth:`tuned_gamma`)."""
        if self.kept is None or method not in self.settings:
            return None
        kind, grounder = parse_method(method)
        names = [method] + ([f"{kind}:{SAME_GAMMA[grounder]}"] if grounder in SAME_GAMMA
                            else [])
        for name in names:
            settings = self.settings.get(name) or method_settings(name, self)
            saved = self.kept.saved_note(name, evaluated_settings(
                settings, name, self.measured, len(self.dataset.catalog)), "grounding")
            if saved is not None and isinstance(saved.get("gamma"), int | float):
                return float(saved["gamma"]), {key: saved[key] for key in TUNING_NOTES
                                               if key in saved}
        return None

    def retrieval(self, kind: str) -> MemoryRetrieval:
        """The memory (checked against the fine-tune) with a retriever of ``kind``: the
        trained one (``automr``) or a fresh ``random``/``semantic`` one; one per kind, so
        that a kind's L2 grounding and its injections share their generations."""
        if kind in self._retrievals:
            return self._retrievals[kind]
        run = self.run("finetuned")
        store = run.open_memory(self.artifact("memory"), device=str(self.model(run).model.device))
        store.check_dataset(self.dataset)
        layer = self.options.layer
        if layer is not None and layer != store.layer:
            raise AutomrError(f"--layer {layer} differs from the memory's layer {store.layer}: "
                              f"memory methods run at the layer their keys come from")
        retriever = (load_retriever_for(store, self.artifact("retriever"),
                                        self.options.combiner) if kind == "automr"
                     else build_retriever(kind, store.hidden_size, seed=self.retrieval_seed))
        self._retrievals[kind] = MemoryRetrieval(store, retriever,
                                                 COMBINERS[self.options.combiner](),
                                                 k=self.options.k)
        return self._retrievals[kind]

    @property
    def layer(self) -> int:
        """The split layer: the option, else the memory's, else :data:`DEFAULT_LAYER`."""
        if self.options.layer is not None:
            return self.options.layer
        if self.artifacts.memory is not None:
            return MemoryRecord.read(self.artifacts.memory).layer
        return DEFAULT_LAYER

    def _context(self, run: FinetunedRun, loaded: LoadedModel, base: str) -> PromptContext:
        """``run``'s prompt context (ReLLa, TRSR), built once: its methods share it, and with
        it their likelihoods."""
        key = _model_key(run)
        if key not in self._contexts:
            from automr.contexts import build_context

            self._contexts[key] = build_context(
                run.context, loaded, self.dataset, base, self.cache_dir,
                batch_size=self.options.batch_size, progress=self.progress)
        return self._contexts[key]

    def split_layer(self, loaded: LoadedModel) -> int:
        """Where a memory-free method of ``loaded`` splits: :attr:`layer`, the default kept
        within a smaller model (it ranks the same at any layer); a given ``--layer`` must
        fit."""
        layers = HFSplitLLM(loaded.model).num_layers
        if self.options.layer is not None and self.options.layer > layers:
            raise AutomrError(f"--layer {self.options.layer} is outside 0..{layers} for "
                              f"{loaded.name}")
        return min(self.layer, layers)

    @property
    def retrieval_seed(self) -> int:
        """The seed of the retrievers built here rather than loaded (random retrieval draws
        from it): ``options.retrieval_seed``, else ``options.seed``."""
        options = self.options
        return options.seed if options.retrieval_seed is None else options.retrieval_seed


Builder = Callable[[Workspace, str | None, str], Method]
"""``(workspace, grounder, label) -> method`` (grounder None for kinds that take none)."""


@attrs.frozen
class MethodKind:
    """One method kind: what it is, which artifacts and options decide its ranks, and how to
    build it."""

    description: str
    build: Builder
    artifacts: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    grounded: bool = True
    """Named ``KIND:GROUNDER`` (an LM that writes titles) rather than ``KIND``."""
    likelihood: bool = True
    """Scores the true title (:class:`~automr.interfaces.LikelihoodMethod`)."""
    version: int = 1
    """Raise it when the builder's method ranks otherwise (another algorithm): the resume
    settings are known before the method is built, so its own ``settings`` cannot tell a
    rerun that ranks saved by the old one are stale; ``version`` does."""


def _sasrec(space: Workspace, grounder: str | None, label: str) -> Method:
    return space.sasrec()


def _base(space: Workspace, grounder: str | None, label: str) -> Method:
    return space.generative(grounder, None, label)


def _tuned(artifact: str) -> Builder:
    def build(space: Workspace, grounder: str | None, label: str) -> Method:
        return space.generative(grounder, space.run(artifact), label)

    return build


def _with_memory(kind: str) -> Builder:
    def build(space: Workspace, grounder: str | None, label: str) -> Method:
        retrieval = space.retrieval(kind)
        return space.generative(grounder, space.run("finetuned"), label, retrieval)

    return build


LM_OPTIONS = ("layer", "num_beams", "exclude_seen")
MEMORY_OPTIONS = ("num_beams", "exclude_seen", "combiner", "k")

METHODS: dict[str, MethodKind] = {
    # version 2: under the same settings it trained otherwise before 5fa8bf1 (BCE, not
    # softmax cross-entropy; timestamp ties in file order) and before 9fb5450 (each user's
    # last max_len + 1 items only, not every position)
    "sasrec": MethodKind("SASRec trained on the training period", _sasrec,
                         options=("seed", "sasrec_loss"), grounded=False, likelihood=False,
                         version=2),
    "pop": MethodKind("training-period popularity (a floor)",
                      lambda space, grounder, label: PopularityMethod(
                          space.dataset, exclude_seen=space.options.exclude_seen),
                      options=("exclude_seen",), grounded=False, likelihood=False),
    "cooc": MethodKind("item-to-item co-occurrence counts (a floor)",
                       lambda space, grounder, label: CooccurrenceMethod(
                           space.dataset, exclude_seen=space.options.exclude_seen),
                       options=("exclude_seen",), grounded=False, likelihood=False),
    "base": MethodKind("the untuned LM", _base, ("model",), LM_OPTIONS),
    "bigrec": MethodKind("BIGRec: the LM with its LoRA adapter", _tuned("finetuned"),
                         ("finetuned",), LM_OPTIONS),
    "automr": MethodKind("BIGRec + memory, trained retriever", _with_memory("automr"),
                         ("finetuned", "memory", "retriever"), MEMORY_OPTIONS),
    # version 2: for a while (62ca894 to 7655fa1) its draws were over distinct keys, not
    # elements; folders of those commits held other draws under the same settings
    "random": MethodKind("BIGRec + memory, random retrieval", _with_memory("random"),
                         ("finetuned", "memory"), (*MEMORY_OPTIONS, "retrieval_seed"),
                         version=2),
    "semantic": MethodKind("BIGRec + memory, semantic retrieval", _with_memory("semantic"),
                           ("finetuned", "memory"), MEMORY_OPTIONS),
    "rella": MethodKind("ReLLa: BIGRec tuned with similar long-term items in the prompt",
                        _tuned("rella"), ("rella",), LM_OPTIONS),
    "trsr": MethodKind("TRSR: BIGRec tuned with LM summaries of the long-term history",
                       _tuned("trsr"), ("trsr",), LM_OPTIONS),
}
"""Method kinds by name: ``KIND`` or ``KIND:GROUNDER`` in ``automr evaluate --methods``."""


def parse_method(method: str) -> tuple[str, str | None]:
    """``"bigrec:l2"`` -> ``("bigrec", "l2")``; ``"sasrec"`` -> ``("sasrec", None)``."""
    name, _, grounder = method.partition(":")
    kind = METHODS.get(name)
    if kind is not None and (grounder in GROUNDERS if kind.grounded else not grounder):
        return name, grounder or None
    plain = [n for n, k in METHODS.items() if not k.grounded]
    grounded = [n for n, k in METHODS.items() if k.grounded]
    raise AutomrError(
        f"unknown method {method!r}; use {', '.join(plain)} or NAME:GROUNDER with NAME in "
        f"{', '.join(grounded)} and GROUNDER in {', '.join(GROUNDERS)}")


def method_settings(method: str, space: Workspace) -> dict[str, Any]:
    """What decides ``method``'s ranks: the dataset (its fingerprint), an LM's dtype, its
    artifacts (resolved paths, what they hold, a base model in a local folder or a hub id's
    cached snapshot by its files' fingerprint, and the prompt context a context baseline was
    tuned with) and the options it uses."""
    name, grounder = parse_method(method)
    kind = METHODS[name]
    settings: dict[str, Any] = {"data": space.data_fingerprint}
    if kind.grounded:
        settings["grounder"] = grounder
    if kind.likelihood:  # an LM's dtype moves its scores (and so ties and beams)
        settings["dtype"] = dtype_used(space.dtype, space.device)
    for artifact in kind.artifacts:
        if artifact == "model":
            settings["model"] = space.base_model
            # a local folder's files, or those of a hub id's snapshot in the cache (the id
            folder = model_folder(space.base_model)  # names no revision: a new one moves them)
            files = weight_files(folder) if folder is not None else ()
            if files and all(file.is_file() for file in files):
                settings.setdefault("digests", {})["model"] = files_fingerprint(
                    folder, files, space.cache_dir)
            continue
        folder = space.artifact(artifact, method)
        if artifact in ("finetuned", "rella", "trsr"):  # its prompt context, dataset and base
            space.run(artifact).check_base(space.cache_dir)  # model, checked before any work
        settings[artifact] = str(folder.resolve())
        settings.setdefault("digests", {})[artifact] = space.shared.unchanged(
            folder, DIGESTS[artifact](folder))
    for option in kind.options:
        settings[option] = (space.retrieval_seed if option == "retrieval_seed"
                            else getattr(space.options, option))
    if settings.get("sasrec_loss") == "ce":  # absent at its default, so ranks saved before
        del settings["sasrec_loss"]  # the option existed stay valid
    if "layer" in settings:
        settings["layer"] = space.layer
    if name in ("rella", "trsr"):
        settings["context"] = space.run(name).context.to_json()
    if grounder is not None and grounder.endswith(("-pop", "-sasrec")):
        settings.update(tune_samples=space.options.tune_samples, tune_seed=space.options.seed)
    if grounder == "l2-sasrec":
        settings["sasrec"] = attrs.asdict(space.options.sasrec_config())
    return settings | rule_marks(method)


LM_RULES = 2
"""The rules an LM method's values follow beyond its settings; raise it when one changes, so
values saved before are made again. 2: titles holding a special token's text tokenized as text
(c6492c0); the tokenizer's BOS kept in L2 prompts and titles (47fbdd9); items of one title, or
of one token sequence, tie (792143b, 3a339de); exactly tied gammas go to the smallest
(aa61fef); copies of a retrieved key are recorded as the first (62ca894: rq3's ages). Values
saved before any of these were read back as today's."""


def rule_marks(method: str) -> dict[str, Any]:
    """What in ``method``'s settings names the algorithm that makes its values, where an
    earlier automr made them otherwise: its kind's ``version`` from 2 on (absent at 1, so ranks
    saved before versions existed stay valid) and, for an LM (``KIND:GROUNDER``),
    :data:`LM_RULES`."""
    name, _ = parse_method(method)
    marks: dict[str, Any] = {}
    if METHODS[name].version != 1:
        marks["version"] = METHODS[name].version
    if METHODS[name].grounded:
        marks["lm_rules"] = LM_RULES
    return marks


def check_current(path: Path | str, method: str,
                  kinds: Sequence[str] = ("ranks", "loglik")) -> None:
    """Refuse ``method``'s values of ``kinds`` in the evaluation folder ``path`` (each followed
    to where it was made) where an earlier automr made them by another algorithm
    (:func:`rule_marks`): `automr evaluate` would make them again, and paired with today's
    values a method would differ from itself. An export keeps no settings and is taken as it
    is."""
    if not Path(path).is_dir():
        return
    for kind in kinds:
        where, measured = EvaluationFolder(path).chain(method, kind)[-1]
        try:
            marks = rule_marks(measured)
        except AutomrError:  # a method of the user's own (automr.evaluate), no kind of the CLI's
            continue
        file = EvaluationFolder(where).settings_file(measured, kind) if where.is_dir() else None
        saved = read_json(file, "automr evaluate") if file and file.is_file() else None
        if isinstance(saved, dict) and any(saved.get(key) != value
                                           for key, value in marks.items()):
            values, measure = (("ranks", "ranks") if kind == "ranks" else
                               ("log-likelihoods", "likelihood"))
            command = EvaluationFolder(where).evaluate_command(measured, measure)
            lacking = ", ".join(f"{key} {value}" for key, value in marks.items()
                                if saved.get(key) != value)
            raise AutomrError(f"the {values} of {measured} in {where} were made by an earlier "
                              f"automr (their settings lack this one's {lacking}), which may "
                              f"have made them otherwise; make them anew with {command}")


def lower_halves_shared(methods: Sequence[str]) -> bool:
    """Whether two of ``methods`` (names) score target likelihoods with one model and other
    memory (BIGRec and AutoMR, random retrieval, ...): a likelihood batch's lower half, which
    never sees memory, run for one then serves the other."""
    inputs = set()
    for method in methods:
        name = parse_method(method)[0]
        kind = METHODS[name]
        if kind.likelihood:
            model = next((a for a in kind.artifacts if a in MODEL_ARTIFACTS), name)
            inputs.add((model, name if "memory" in kind.artifacts else None))
    models = [model for model, _ in inputs]
    return len(models) > len(set(models))


MODEL_ARTIFACTS = ("model", "finetuned", "rella", "trsr")
"""The artifacts that name a method's LM (the base model, or a fine-tune)."""


def build_method(method: str, space: Workspace) -> Method:
    """The method named ``method``, checked now (artifacts present and compatible names) and
    built when it first ranks. Under a launcher, a method that uses SASRec has it trained
    here, on the main process for every process: every process builds its methods at this
    point, while a process with no shard to rank would never reach a first rank."""
    name, grounder = parse_method(method)
    kind = METHODS[name]
    settings = space.settings[method] = method_settings(method, space)
    if distributed.launched() and (name == "sasrec" or grounder == "l2-sasrec"):
        space.sasrec()
    deferred = DeferredLikelihood if kind.likelihood else Deferred
    return deferred(settings, lambda: kind.build(space, grounder, method))


@attrs.define(eq=False)
class Deferred:
    """A method built on first use (``rank``, ``details``), with its settings known before."""

    settings: Mapping[str, Any]
    make: Callable[[], Method] = attrs.field(repr=False)
    _method: Method | None = attrs.field(default=None, init=False, repr=False)

    @property
    def method(self) -> Method:
        """The method, built by ``make`` on the first read and kept."""
        if self._method is None:
            self._method = self.make()
        return self._method

    def rank(self, samples: Sequence[Sample]) -> Sequence[int]:
        """The built :attr:`method`'s ranks (building it on the first call)."""
        return self.method.rank(samples)

    def details(self) -> Mapping[str, Mapping[str, Any]]:
        """The built method's details; ``{}`` when it is not built yet or keeps none."""
        if self._method is None or not hasattr(self._method, "details"):
            return {}
        return self._method.details()


@attrs.define(eq=False)
class DeferredLikelihood(Deferred):
    """A :class:`Deferred` LM method: it also scores the true title."""

    def target_log_likelihoods(self, samples: Sequence[Sample]) -> list[tuple[float, int]]:
        """The built :attr:`method`'s (building it on the first call); refused for a method
        that scores no title (a kind of one's own left at ``MethodKind(likelihood=True)``)."""
        if not isinstance(self.method, LikelihoodMethod):
            raise AutomrError(f"a {type(self.method).__name__} scores no true title (it has no "
                              f"target_log_likelihoods): register its kind with "
                              f"MethodKind(..., likelihood=False), or measure ranks only")
        return self.method.target_log_likelihoods(samples)
