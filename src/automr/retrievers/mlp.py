"""The paper's retriever (eq. 3): ``s = softmax(MLP(z_t)^T M)`` over a user's memory."""

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, final

import attrs
import torch
from attrs import validators as v
from jaxtyping import Bool, Float, jaxtyped
from torch import Tensor, nn
from torch.nn import functional as F

from automr.checks import beartype, int_field, is_int, real_field, to_int
from automr.errors import AutomrError
from automr.retrievers.selection import masked_log_softmax
from automr.retrievers.storage import WEIGHTS_FILE, read_retriever, write_retriever
from automr.storage import loaded_module

Activation = Literal["gelu", "relu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


@beartype
@attrs.frozen(kw_only=True)
class MLPRetrieverConfig:
    """``MLP = Linear(hidden_size, mlp_hidden) -> activation -> Linear(mlp_hidden, hidden_size)``.

    Scores are ``MLP(z_t) . m / temperature`` (the paper: 2 layers, hidden 256, temperature
    1). With ``normalize``, ``z_t`` is standardised (a layer norm without weights) and each
    key ``m`` scaled to unit length first. A model's raw layer-L states are long (norms above
    100 for SmolLM2 at layer 15), so the paper's scores start nearly one-hot (a mean top
    probability of 0.96 on ML-100K) and KL training ends far above uniform scores;
    normalised, they start near uniform (docs/results.md, "What makes an element help").
    """

    hidden_size: int = attrs.field(converter=to_int, validator=[is_int, v.gt(0)])
    mlp_hidden: int = int_field(v.gt(0), default=256)
    activation: Activation = attrs.field(default="gelu", validator=v.in_(tuple(ACTIVATIONS)))
    temperature: float = real_field(v.gt(0.0), v.lt(math.inf), default=1.0)
    normalize: bool = False


@final
class MLPRetriever(nn.Module):
    """A trainable :class:`~automr.interfaces.Retriever` (eq. 3).

    ``provenance`` (free-form strings: model fingerprint, layer, pooling) is saved with the
    weights and checked by :meth:`load`, so a retriever trained on one model's keys is not
    silently used with another's.
    """

    def __init__(
        self, config: MLPRetrieverConfig, provenance: Mapping[str, str] | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.provenance = dict(provenance or {})
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.mlp_hidden),
            ACTIVATIONS[config.activation](),
            nn.Linear(config.mlp_hidden, config.hidden_size),
        )

    @jaxtyped(typechecker=beartype)
    def project(self, query: Float[Tensor, "batch hidden"]) -> Float[Tensor, "batch hidden"]:
        """``MLP(z_t)``: the vector every memory element is compared with."""
        weight = self.mlp[0].weight
        return self.mlp(query.to(dtype=weight.dtype))

    @jaxtyped(typechecker=beartype)
    def scores(
        self, query: Float[Tensor, "batch hidden"], keys: Float[Tensor, "batch mem hidden"],
        mask: Bool[Tensor, "batch mem"],
    ) -> Float[Tensor, "batch mem"]:
        """The logits ``MLP(z_t) . m / temperature`` (pre-softmax).

        Masked elements come back as ``-inf``; whatever their keys hold has no effect on the
        real scores or on gradients.
        """
        keys = keys.masked_fill(~mask.unsqueeze(-1), 0.0)
        if self.config.normalize:
            query = F.layer_norm(query, query.shape[-1:])
        projected = self.project(query)
        keys = keys.to(dtype=projected.dtype)  # before normalising: in float16 (a model
        if self.config.normalize:  # loaded so) its eps is 0 and a zero key, e.g. every masked
            keys = F.normalize(keys, dim=-1)  # slot, gave NaN scores and NaN gradients
        logits = torch.einsum("bh,bmh->bm", projected, keys) / self.config.temperature
        return logits.masked_fill(~mask, -torch.inf)

    @jaxtyped(typechecker=beartype)
    def log_probs(
        self, query: Float[Tensor, "batch hidden"], keys: Float[Tensor, "batch mem hidden"],
        mask: Bool[Tensor, "batch mem"],
    ) -> Float[Tensor, "batch mem"]:
        """``log S`` of eq. 3: log-softmax of :meth:`scores` over each row's real elements."""
        return masked_log_softmax(self.scores(query, keys, mask), mask)

    def save(self, directory: Path | str) -> None:
        """Write ``config.json`` and ``retriever.safetensors`` into ``directory`` (created)."""
        write_retriever(directory, "mlp", attrs.asdict(self.config), self.provenance,
                        tensors=self.state_dict(), hidden_size=self.config.hidden_size)

    @classmethod
    def load(
        cls, directory: Path | str, device: str | torch.device = "cpu",
        expect: Mapping[str, str] | None = None, hidden_size: int | None = None,
    ) -> "MLPRetriever":
        """Rebuild a retriever written by :meth:`save`, in eval mode on ``device``.

        Refuses one saved for another ``hidden_size`` or with provenance contradicting
        ``expect``.
        """
        meta, tensors = read_retriever(directory, "mlp", expect, hidden_size)
        if not tensors:
            raise AutomrError(f"{directory} has no weights for its MLP retriever")
        retriever = loaded_module(
            directory, "retriever", WEIGHTS_FILE, "train it again with `automr retriever train`",
            lambda: cls(MLPRetrieverConfig(**meta["settings"]), meta.get("provenance")), tensors)
        return retriever.to(device).eval()
