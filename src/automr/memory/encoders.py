"""Encoders: one past interaction -> a text -> the lower half to layer L -> a pooled key.

- :class:`LayerEncoder` is the shared core and the :class:`~automr.interfaces.Encoder`: token
  ids through ``LLM^(:L)`` then :class:`~automr.memory.pooling.Pooling`. The same function
  encodes queries, so a sample's ``z_t`` and a memory key live in the same space.
- :class:`WindowEncoder` is the paper's ``z_m = LLM^(:L)(x_{u,h_m})`` (eq. 2): element m is
  encoded as a BIGRec prompt over a window of the user's timeline (see its docstring for which
  window).
- :class:`ItemEncoder` encodes the item's quoted title alone (the same text for every user,
  so each distinct item is encoded once per build): a cheap ablation.

:data:`ENCODERS` is the registry of element-encoder kinds the CLI exposes.
"""

import bisect
import copy
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, final

import attrs
import torch
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase as Tokenizer

from automr.checks import beartype
from automr.data.catalog import Catalog
from automr.data.prompts import PromptConfig, encode_texts, format_prompt
from automr.errors import AutomrError
from automr.interfaces import SplitLLM
from automr.llm.loading import LoadedModel, model_fingerprint
from automr.llm.split import HFSplitLLM
from automr.memory.pooling import Pooling
from automr.state import KVCache, LayerState
from automr.types import TokenIds, TokenMask

DEFAULT_POOLING: Final = Pooling()
PREFIX_CACHE_SIZE: Final = 8


@beartype
@attrs.frozen
class Backbone:
    """A split LM with its tokenizer, name and fingerprint (what a memory records it was
    built with). Make one with :meth:`of` from a :class:`~automr.llm.loading.LoadedModel` or
    with :meth:`from_model` from a plain model and tokenizer."""

    llm: SplitLLM
    tokenizer: Tokenizer
    name: str
    fingerprint: str | None = None

    @classmethod
    def of(cls, model: "LoadedModel | Backbone") -> "Backbone":
        """``model`` itself if it is a Backbone, else its model split, tokenizer, name and
        fingerprint."""
        if isinstance(model, Backbone):
            return model
        return cls(HFSplitLLM(model.model), model.tokenizer, model.name, model.fingerprint())

    @classmethod
    def from_model(cls, model: PreTrainedModel, tokenizer: Tokenizer, name: str) -> "Backbone":
        """Wrap a transformers causal LM (fingerprint computed from its weights)."""
        return cls(HFSplitLLM(model), tokenizer, name, model_fingerprint(model, name))


@beartype
@attrs.frozen
class Encoded:
    """Pooled keys of a batch of texts and, if asked for, each text's real-token states."""

    keys: Float[Tensor, "batch hidden"]
    states: tuple[Float[Tensor, "_ hidden"], ...] | None
    tokens: int

    def __attrs_post_init__(self) -> None:
        if self.states is not None and len(self.states) != self.keys.shape[0]:
            raise ValueError(f"Encoded: {self.keys.shape[0]} keys but {len(self.states)} states")


@final
class LayerEncoder:
    """Token ids -> ``LLM^(:L)`` -> pooled key: the :class:`~automr.interfaces.Encoder`.

    Texts are tokenized like prompts everywhere else (``add_special_tokens=True``, as
    :func:`automr.data.tokenize_example` does), so encoding a sample's prompt text here gives
    exactly its query ``z_t``. Batches are right-padded; left padding gives the same keys.

    ``share_prefix``: :meth:`encode_tokens` runs the tokens every sequence of a batch starts
    with (the prompt template's fixed header, about half of a BIGRec prompt) once, and the
    rest of each sequence on top of that KV cache; the prefix's states are remembered
    (``PREFIX_CACHE_SIZE`` of them), so a later batch with the same prefix does not compute it
    again. Same states up to float rounding; batches whose common prefix is shorter than
    ``min_shared`` tokens run plainly.
    """

    def __init__(self, backbone: Backbone, layer: int, pooling: Pooling = DEFAULT_POOLING,
                 share_prefix: bool = True, min_shared: int = 8) -> None:
        if not 0 <= layer <= backbone.llm.num_layers:
            raise AutomrError(f"layer {layer} is outside 0..{backbone.llm.num_layers} for "
                              f"{backbone.name}")
        self.backbone = backbone
        self.layer = layer
        self.pooling = pooling
        self.share_prefix = share_prefix
        self.min_shared = min_shared
        self._prefixes: dict[tuple[int, ...], tuple[LayerState, KVCache]] = {}

    @property
    def hidden_size(self) -> int:
        """The width of the keys (the split LM's hidden size)."""
        return self.backbone.llm.hidden_size

    @jaxtyped(typechecker=beartype)
    def states(self, input_ids: TokenIds, attention_mask: TokenMask) -> LayerState:
        """The layer-L states of a padded batch (no gradients)."""
        llm = self.backbone.llm
        with torch.no_grad():
            return llm.lower(input_ids.to(llm.device), attention_mask.to(llm.device), self.layer)

    @jaxtyped(typechecker=beartype)
    def encode(
        self, input_ids: TokenIds, attention_mask: TokenMask
    ) -> Float[Tensor, "batch hidden"]:
        """Pooled layer-L key of each sequence of a padded batch (left or right padding)."""
        state = self.states(input_ids, attention_mask)
        return self.pooling(state.hidden, state.mask)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, with the tokenizer's special tokens (like prompts)."""
        if not texts:
            return []
        ids = encode_texts(self.backbone.tokenizer, list(texts),
                           add_special_tokens=True)["input_ids"]
        for text, row in zip(texts, ids, strict=True):
            if not row:
                raise AutomrError(f"text {text[:60]!r} tokenizes to nothing; cannot encode it")
        return [list(row) for row in ids]

    @jaxtyped(typechecker=beartype)
    def encode_tokens(
        self, token_lists: Sequence[Sequence[int]], keep_states: bool = False
    ) -> Encoded:
        """Keys (and optionally real-token states) of unpadded token lists, as one batch."""
        shared = self.shared_tokens(token_lists)
        if shared:
            state = self._states_after_prefix(token_lists, shared)
        else:
            state = self.states(*pad_right(token_lists, self.pad_id))
        keys = self.pooling(state.hidden, state.mask)
        states = None
        if keep_states:
            states = tuple(state.hidden[row, : len(tokens)].clone()
                           for row, tokens in enumerate(token_lists))
        return Encoded(keys=keys, states=states, tokens=sum(len(t) for t in token_lists))

    def shared_tokens(self, token_lists: Sequence[Sequence[int]]) -> int:
        """How many leading tokens :meth:`encode_tokens` runs once for this batch (0: none).
        Their states are memoised: a later batch with the same prefix does not compute it."""
        shared = common_prefix(token_lists) if self.share_prefix and self.layer > 0 else 0
        switch = getattr(self.backbone.llm, "longrope_switch", None)  # longrope: factors by
        crosses = switch is not None and shared <= switch < max(map(len, token_lists))  # length
        return shared if shared >= self.min_shared and len(token_lists) >= 2 and not crosses \
            else 0

    def _states_after_prefix(self, token_lists: Sequence[Sequence[int]], shared: int
                             ) -> LayerState:
        """The batch's layer-L states, its first ``shared`` tokens computed once."""
        llm = self.backbone.llm
        batch = len(token_lists)
        head, cache = self._prefix(tuple(token_lists[0][:shared]))
        ids, mask = pad_right([t[shared:] for t in token_lists], self.pad_id)
        cache.repeat_interleave(batch)
        with torch.no_grad():
            tail = llm.lower(ids.to(llm.device), mask.to(llm.device), self.layer, cache)
        hidden = torch.cat([head.hidden.expand(batch, -1, -1), tail.hidden], 1)
        full_mask = torch.cat([head.mask.expand(batch, -1), tail.mask], 1)
        return LayerState(hidden=hidden, mask=full_mask, layer=self.layer)

    def encode_texts(self, texts: Sequence[str], keep_states: bool = False) -> Encoded:
        """:meth:`encode_tokens` of the texts' :meth:`tokenize` ids (an
        :class:`~automr.errors.AutomrError` for a text that tokenizes to nothing)."""
        return self.encode_tokens(self.tokenize(texts), keep_states)

    def _prefix(self, tokens: tuple[int, ...]) -> tuple[LayerState, KVCache]:
        """The states and a fresh copy of the KV cache of a shared prefix (remembered: most
        batches share the same template header). Computed alone, so the result does not
        depend on which batches came before."""
        if tokens not in self._prefixes:
            llm = self.backbone.llm
            ids = torch.tensor([list(tokens)], device=llm.device)
            cache = llm.new_cache()
            with torch.no_grad():
                head = llm.lower(ids, torch.ones_like(ids, dtype=torch.bool), self.layer, cache)
            if len(self._prefixes) >= PREFIX_CACHE_SIZE:
                self._prefixes.pop(next(iter(self._prefixes)))
            self._prefixes[tokens] = (head, cache)
        head, cache = self._prefixes[tokens]
        return head, copy.deepcopy(cache)

    @property
    def pad_id(self) -> int:
        """The id batches are padded with: the tokenizer's pad token, else its EOS, else 0."""
        tokenizer = self.backbone.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
            tokenizer.eos_token_id
        return int(pad) if pad is not None else 0


def common_prefix(token_lists: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix, leaving every sequence at least one more token."""
    if not token_lists:
        return 0
    limit = min(len(t) for t in token_lists) - 1
    first = token_lists[0]
    length = 0
    while length < limit and all(t[length] == first[length] for t in token_lists):
        length += 1
    return length


@jaxtyped(typechecker=beartype)
def pad_right(
    token_lists: Sequence[Sequence[int]], pad_id: int
) -> tuple[Int[Tensor, "batch seq"], Bool[Tensor, "batch seq"]]:
    """A right-padded id batch and its boolean mask."""
    width = max((len(t) for t in token_lists), default=0)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(token_lists), width, dtype=torch.bool)
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = torch.tensor(list(tokens), dtype=torch.long)
        mask[row, : len(tokens)] = True
    return ids, mask


class ElementEncoder(Protocol):
    """Turns element ``index`` of a user's timeline into text and encodes it with ``base``.

    ``reuses_texts`` says that many elements share a text (encode each distinct one once).
    ``settings`` is what a memory's ``config.json`` records about the encoder.
    """

    @property
    def kind(self) -> str: ...  # read-only: a frozen attrs class or a dataclass fits too

    @property
    def base(self) -> LayerEncoder: ...

    @property
    def reuses_texts(self) -> bool: ...

    def text(self, items: Sequence[str], timestamps: Sequence[int], index: int) -> str:
        """The text of element ``index`` of a timeline (``items`` with their ``timestamps``)."""
        ...

    def settings(self) -> dict[str, Any]:
        """``{"kind", "window", "includes_item"}``, as the memory's ``config.json`` records it."""
        ...


@final
class WindowEncoder:
    """Eq. 2: element m is the lower-half encoding of a BIGRec prompt over the user's timeline.

    The paper's ``x_{u,h_m}`` is the prompt the user had at time m, i.e. the K items *before*
    m; but then the element stored for interaction m does not contain item m at all (item m
    first appears in element m+1's window). A memory element should represent its interaction,
    so by default (``includes_item=True``) element m's window is the K timeline positions up to
    and including m: ``items[max(0, m-K+1) : m+1]`` - the prompt a sample right after m would
    see, so in deployment the query encoded for the next prediction is what gets stored.

    With ``includes_item=False`` the window is the paper's literal reading, defined exactly as
    the protocol builds a sample's prompt at m's time (:func:`automr.data.build_samples`): the
    latest K interactions *strictly earlier* than m's timestamp (interactions sharing m's
    timestamp are not in it). Element m's key then equals the query ``z_t`` of a sample at m.

    A user's first elements have fewer than K predecessors: the window holds what exists,
    possibly no item at all (an empty title list in the prompt; with ``includes_item=False``
    the first element of every user is that same, item-free prompt).
    """

    kind = "window"
    reuses_texts = False

    def __init__(
        self, base: LayerEncoder, catalog: Catalog, prompt_config: PromptConfig, window: int,
        includes_item: bool = True,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.base = base
        self.catalog = catalog
        self.prompt_config = prompt_config
        self.window = window
        self.includes_item = includes_item

    def positions(self, timestamps: Sequence[int], index: int) -> range:
        """Timeline positions of element ``index``'s window, oldest first."""
        if self.includes_item:
            return range(max(0, index + 1 - self.window), index + 1)
        prior = bisect.bisect_left(timestamps, timestamps[index], 0, index + 1)
        return range(max(0, prior - self.window), prior)

    def text(self, items: Sequence[str], timestamps: Sequence[int], index: int) -> str:
        """The prompt over the titles at :meth:`positions` (``items`` a user's timeline)."""
        window = [items[i] for i in self.positions(timestamps, index)]
        return format_prompt(self.catalog.titles(window), self.prompt_config)

    def settings(self) -> dict[str, Any]:
        """``{"kind": "window", "window": K, "includes_item": ...}``."""
        return {"kind": self.kind, "window": self.window, "includes_item": self.includes_item}


@final
class ItemEncoder:
    """Element m is the item's title alone, quoted as in prompts (``"Toy Story (1995)"``):
    one key per catalog item, shared by every user who interacted with it."""

    kind = "item"
    reuses_texts = True

    def __init__(self, base: LayerEncoder, catalog: Catalog, prompt_config: PromptConfig) -> None:
        self.base = base
        self.catalog = catalog
        self.prompt_config = prompt_config

    def text(self, items: Sequence[str], timestamps: Sequence[int], index: int) -> str:
        """Item ``items[index]``'s title in the prompt's title format (``timestamps`` unused)."""
        return self.prompt_config.title_format.format(title=self.catalog.title(items[index]))

    def settings(self) -> dict[str, Any]:
        """``{"kind": "item", "window": None, "includes_item": True}``."""
        return {"kind": self.kind, "window": None, "includes_item": True}


@beartype
@attrs.frozen
class EncoderKind:
    """One element-encoder kind the CLI exposes: a description and a builder taking
    ``(base, catalog, prompt_config, window, includes_item)``."""

    description: str
    build: Callable[[LayerEncoder, Catalog, PromptConfig, int, bool], ElementEncoder]


ENCODERS: Final[dict[str, EncoderKind]] = {
    "window": EncoderKind(
        "eq. 2: the BIGRec prompt over the user's K-item window at the interaction",
        lambda base, catalog, prompt, window, includes: WindowEncoder(
            base, catalog, prompt, window, includes),
    ),
    "item": EncoderKind(
        "the item's quoted title alone (one key per catalog item, shared by all users)",
        lambda base, catalog, prompt, window, includes: ItemEncoder(base, catalog, prompt),
    ),
}
"""Element-encoder kinds by name (``automr`` CLI ``--encoder``, ``MemoryConfig.encoder``). A
kind of your own (an :class:`ElementEncoder`: the text of element ``index`` of a timeline)
enters by name: ``ENCODERS["genre"] = EncoderKind("...", build)``, then
``MemoryConfig(encoder="genre")``; a memory built so is opened, annotated and retrieved from
as any other (register the kind again in a new process before reading it). Its builder gets
``MemoryConfig.window`` (the dataset's ``recent_k`` when None) and ``window_includes_item``;
the memory records what its ``settings()`` report and rebuilds it with those."""
