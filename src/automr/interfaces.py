"""The Protocols every AutoMR component implements (by shape, not by inheritance).

Data flow (DESIGN.md §3)::

    prompt ids --SplitLLM.lower--> LayerState z_t --------------------------+
    memory source --Encoder--> Memory (keys, token states)                  |
    Retriever.scores(query(z_t), keys) -> top-k -> MemoryTokens --Combiner--+--> LayerState
    SplitLLM.upper -> logits -> Grounder -> ranking over the catalog
    Annotator (eq. 5) -> labels S' -> retriever training with KL(S' || S) (eq. 6)
    Method.rank(samples) -> each target's rank; automr.evaluate compares Methods

Shapes use the axis vocabulary of :mod:`automr.types`. Implementations check them at run
time with jaxtyping + beartype.
"""

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import torch
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from automr.checks import beartype
from automr.errors import WrongTypeError
from automr.state import LayerState
from automr.types import Positions, TokenIds, TokenMask

if TYPE_CHECKING:  # the data layer and transformers stay out of this module's imports
    from automr.data.records import Sample
    from automr.state import KVCache

Insert = Callable[[LayerState], LayerState]
"""Joins something to a prompt's layer-L state (e.g. a combiner bound to retrieved memory)."""


@runtime_checkable
class SplitLLM(Protocol):
    """A causal LM cut at a layer: ``upper(lower(x, L))`` equals the full model.

    ``lower`` runs the embeddings and layers ``0..L-1`` and returns the state entering layer L;
    ``upper`` runs layers ``L..``, the final norm and the head, at requested positions only.
    Both take an optional :class:`KVCache` for incremental decoding; use one cache per half.
    """

    @property
    def num_layers(self) -> int:
        """The number of decoder layers."""
        ...

    @property
    def hidden_size(self) -> int:
        """The width of the layer states."""
        ...

    @property
    def vocab_size(self) -> int:
        """The width of the logits."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the model's weights (and its outputs) are."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights."""
        ...

    def new_cache(self) -> "KVCache":
        """An empty cache for one half (one for ``lower``, another for ``upper``)."""
        ...

    def lower(
        self, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
        cache: "KVCache | None" = None,
    ) -> LayerState:
        """Embeddings and layers ``0..layer-1``: the state entering layer ``layer`` (appended
        to ``cache``'s past when given)."""
        ...

    def upper(
        self, state: LayerState, cache: "KVCache | None" = None,
        logits_at: Positions | None = None,
    ) -> Float[Tensor, "batch k vocab"]:
        """Layers ``L..``, the final norm and the head on ``state``: logits at the positions
        ``logits_at`` (``k`` per sequence)."""
        ...


@jaxtyped(typechecker=beartype)
def _check_memory_tokens(
    hidden: Float[Tensor, "batch n hidden"], mask: Bool[Tensor, "batch n"]
) -> None:
    """Shapes checked in their own scope (see ``automr.state._check_layer_state``)."""


@attrs.frozen
class MemoryTokens:
    """Layer-L vectors to insert into a query: ``n`` per sequence, padded and masked.

    For the prepend/append-token combiners these are pooled keys (one per retrieved
    element); for concat they are an element's token states.
    """

    hidden: Float[Tensor, "batch n hidden"]
    mask: Bool[Tensor, "batch n"]

    def __attrs_post_init__(self) -> None:
        if self.hidden.shape[:2] != self.mask.shape:
            raise ValueError(
                f"MemoryTokens: hidden {tuple(self.hidden.shape)} and mask "
                f"{tuple(self.mask.shape)} disagree on [batch, n]"
            )
        _check_memory_tokens(self.hidden, self.mask)


@jaxtyped(typechecker=beartype)
def _check_memory_view(
    keys: Float[Tensor, "mem hidden"], item_ids: tuple[str, ...], timestamps: tuple[int, ...]
) -> None:
    """Types checked in their own scope (see ``automr.state._check_layer_state``)."""


@attrs.frozen
class MemoryView:
    """One user's memory as seen by one sample: time-ordered elements older than its prompt."""

    keys: Float[Tensor, "mem hidden"]
    item_ids: tuple[str, ...]
    timestamps: tuple[int, ...]

    def __attrs_post_init__(self) -> None:
        if not len(self.item_ids) == len(self.timestamps) == self.keys.shape[0]:
            raise ValueError(
                f"MemoryView: {self.keys.shape[0]} keys, {len(self.item_ids)} item ids and "
                f"{len(self.timestamps)} timestamps must agree"
            )
        _check_memory_view(self.keys, self.item_ids, self.timestamps)


@runtime_checkable
class Memory(Protocol):
    """Per-user, time-ordered layer-L representations of past interactions.

    Element ``i`` of a user is the ``i``-th interaction of their timeline.
    ``view(user, count, start)`` gives elements ``start .. start+count-1``: a sample whose
    long-term history is that span sees exactly it (never its recent K or anything later;
    ``start > 0`` when the history cap dropped the user's oldest interactions).
    ``token_states`` gives one element's per-token states (for the concat combiner).

    What the library reads memory through is :class:`~automr.memory.MemoryStore`, a built
    memory folder: retrieval, annotation and training also need its pooling, its index (which
    elements a sample sees) and its content digest. To change what a memory holds, build one
    with an element encoder of your own (:data:`automr.memory.ENCODERS`).
    """

    @property
    def layer(self) -> int:
        """The layer L the keys were taken at."""
        ...

    def users(self) -> Sequence[str]:
        """Every user with memory elements."""
        ...

    def view(self, user: str, count: int, start: int = 0) -> MemoryView:
        """Elements ``start .. start+count-1`` of ``user``'s memory."""
        ...

    def token_states(self, user: str, index: int) -> Float[Tensor, "seq hidden"]:
        """Element ``index``'s per-token layer-L states (for the concat combiner)."""
        ...


@runtime_checkable
class Encoder(Protocol):
    """Turns token sequences into layer-L memory entries: one pooled key per sequence
    (:class:`~automr.memory.LayerEncoder`; the element texts it encodes come from an element
    encoder, :data:`automr.memory.ENCODERS`). It describes that class:
    :func:`~automr.memory.build_memory` takes none of yours (it also reads the lower half's
    tokens, cache and width): to change what a memory holds, write an element encoder."""

    def encode(
        self, input_ids: TokenIds, attention_mask: TokenMask
    ) -> Float[Tensor, "batch hidden"]:
        """One pooled layer-L key per sequence."""
        ...


@runtime_checkable
class Retriever(Protocol):
    """Scores each memory element's usefulness for a query (higher = more useful).

    ``query`` is the pooled layer-L state of the prompt; ``keys`` a padded batch of memories
    with ``mask`` marking real elements. Scores at masked elements are ignored by callers
    (:func:`automr.retrievers.top_k` sets them to -inf).
    """

    def scores(
        self, query: Float[Tensor, "batch hidden"], keys: Float[Tensor, "batch mem hidden"],
        mask: Bool[Tensor, "batch mem"],
    ) -> Float[Tensor, "batch mem"]:
        """One score per memory element (higher = more useful; masked ones are ignored)."""
        ...


@runtime_checkable
class Combiner(Protocol):
    """Joins retrieved memory tokens to a query's layer-L state.

    ``uses_token_states`` says whether it wants each element's token states (concat) or its
    pooled key (prepend/append-token). Combining an empty ``MemoryTokens`` (n = 0, or every
    position masked) must return a state equivalent to the query.
    """

    @property
    def uses_token_states(self) -> bool:
        """Whether it takes each element's token states (else its pooled key)."""
        ...

    def combine(self, query: LayerState, memory: MemoryTokens) -> LayerState:
        """``query`` with ``memory`` joined (the query itself for an empty ``memory``)."""
        ...


@runtime_checkable
class Annotator(Protocol):
    """Eq. 5: how much each memory element raises the likelihood of the true next item.

    Returns, for one sample, the log-likelihood of the target tokens without memory and with
    each element inserted (upper half only); labels are derived from these. ``memory`` holds
    one row per element (its ``batch`` axis is the memory axis). It describes
    :class:`~automr.annotation.UpperAnnotator`, which :func:`~automr.annotation.annotate_dataset`
    builds itself (give it a combiner of yours, not an annotator).
    """

    def log_likelihoods(
        self, prompt_ids: Int[Tensor, " seq"], target_ids: Int[Tensor, " target"],
        memory: MemoryTokens,
    ) -> tuple[Float[Tensor, ""], Float[Tensor, " mem"]]:
        """The target's log-likelihood without memory, and with each element of ``memory``."""
        ...


@runtime_checkable
class Grounder(Protocol):
    """Ranks the whole catalog for a batch of prompts, through a split LM.

    ``insert`` (optional) joins memory to the prompt's layer-L state, so a memory-free
    recommender and AutoMR share the same grounders. It is bound to the batch's samples in
    order: apply it once, to the layer-L state of every prompt, rows as given. Items the
    model writes alike are ties in an evaluation (the target counts after those listed right
    after it): those sharing the target's title, or its token sequence where the grounder
    holds its ``targets`` (:class:`~automr.grounding.targets.CatalogTargets`), unless the
    grounder has a ``tie_key`` (a tensor, one value per catalog item) telling them apart.
    """

    def rank(
        self, llm: SplitLLM, input_ids: TokenIds, attention_mask: TokenMask, layer: int,
        insert: Insert | None = None,
    ) -> Int[Tensor, "batch items"]:
        """Catalog positions, best first, one full ranking per prompt."""
        ...


@runtime_checkable
class PromptContext(Protocol):
    """Extra text per sample for the prompt's input section, before the recent-history line.

    The ReLLa and TRSR baselines are BIGRec fine-tuned and evaluated with their context in the
    prompt (:mod:`automr.contexts`). ``texts`` works on a batch (so an LM-written context can
    batch its generation) and gives None where a sample gets no context (e.g. no long-term
    history). ``config`` is a JSON-able description from which the same context is rebuilt.
    """

    @property
    def config(self) -> dict[str, Any]:
        """A JSON-able description the same context is rebuilt from."""
        ...

    def texts(self, samples: Sequence["Sample"]) -> list[str | None]:
        """The context text of each sample (None: no context for it)."""
        ...


@runtime_checkable
class Method(Protocol):
    """A recommender as :func:`automr.evaluate` sees it: a full-catalog rank per sample.

    ``rank`` gives, for each sample, the 0-based rank of its target among all catalog items
    (an int; the catalog's size for a miss, as
    :func:`~automr.evaluation.metrics.rank_in_list` gives for a target not in a list). It is
    called once per shard of samples (64 by default), not once for all of them.
    ``settings`` is a dict, JSON-able, of everything that decides those ranks (model,
    adapter, grounder, retriever, and for your own class its name and version): an
    evaluation folder reuses ranks saved under the same name only when the settings are
    equal (``evaluate`` adds the keys ``method``, ``samples`` and ``n_items`` itself, so they
    are refused in a method's own); with empty settings it never reuses them.
    Builders for every method kind the CLI knows are in :mod:`automr.methods`; any object of
    this shape works.
    """

    @property
    def settings(self) -> Mapping[str, Any]:
        """Everything that decides the ranks (JSON-able)."""
        ...

    def rank(self, samples: Sequence["Sample"]) -> Sequence[int]:
        """Each sample's target's 0-based rank among all catalog items (the catalog's size
        for a miss)."""
        ...


@runtime_checkable
class LikelihoodMethod(Method, Protocol):
    """A :class:`Method` backed by an LM: it also scores the true next title.

    ``target_log_likelihoods`` gives, per sample, ``(log P(target title + EOS | prompt),
    number of target tokens)``, teacher-forced through the method's own prompt and memory:
    the quantity eq. 5 optimises, a continuous measure that resolves small paired effects.
    """

    def target_log_likelihoods(self, samples: Sequence["Sample"]) -> list[tuple[float, int]]:
        """``(log P(target title + EOS | prompt), number of target tokens)`` per sample."""
        ...


@runtime_checkable
class Explained(Protocol):
    """A method that keeps, per sample it ranked, what it used (e.g. the memory elements it
    retrieved, or the prompt context it wrote): ``details()`` maps a kind (``retrieved``,
    ``contexts``: letters, digits, ``-`` and ``_``, not ``ranks``, ``loglik`` or ``models``)
    to ``{sample id: value}``, each value JSON (strings, numbers, lists, dicts:
    not a tensor or a numpy number); evaluation folders save each kind beside the ranks
    (``KIND/METHOD.json``)."""

    def details(self) -> Mapping[str, Mapping[str, Any]]:
        """``{kind: {sample id: value}}`` of the samples ranked so far."""
        ...


def require_instance(value: object, kind: type, role: str, instead: str) -> None:
    """Refuse ``value`` (the ``role`` a caller gave it) unless it is a ``kind``, in one line
    that says ``instead``, how to get one: a folder's path or a dict where a loaded object is
    meant would otherwise fail at its first attribute, with an AttributeError."""
    if not isinstance(value, kind):
        raise WrongTypeError(f"the {role} argument is of type {type(value).__name__}, not "
                             f"{kind.__name__} ({instead})")


def require(value: object, protocol: type, role: str, instead: str) -> None:
    """Refuse ``value`` (the ``role`` a caller gave it) unless it has ``protocol``'s shape,
    in one line that lists what the shape needs and ``instead``, how to get a real one: a
    registry name or a wrong object would otherwise fail at its first use, mid-run. A class
    (``Concat`` for ``Concat()``) has its methods' names, so it passes ``isinstance``; it is
    refused too, as its unbound methods fail at the first call."""
    if isinstance(value, type) and isinstance(value, protocol):
        raise WrongTypeError(f"the {role} is the class {value.__name__}, not an instance of "
                             f"it: pass {value.__name__}(...) ({instead})")
    if isinstance(value, protocol):
        return
    needs = [name if isinstance(member, property) else
             f"{name}({', '.join(list(inspect.signature(member).parameters)[1:])})"
             for name, member in vars(protocol).items() if not name.startswith("_")]
    raise WrongTypeError(f"the {role} is not a {protocol.__name__}: it needs "
                         f"{' and '.join(needs)} (got a {type(value).__name__}; {instead})")
