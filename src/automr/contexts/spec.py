"""What a prompt context is: the recorded, JSON-able description it is rebuilt from."""

from typing import Any

import attrs

from automr.checks import beartype, int_field

CONTEXT_KINDS = ("rella", "trsr")
TRSR_MODES = ("recurrent", "hierarchical")

_positive = attrs.validators.gt(0)


@beartype
@attrs.frozen(kw_only=True)
class ContextSpec:
    """A baseline's prompt context: ``rella`` (uses ``k``) or ``trsr`` (uses ``block_size``,
    ``max_blocks``, ``mode``, ``max_new_tokens``).

    Fine-tuning records it in ``finetune.json`` (:meth:`to_json` keeps only the fields the
    kind uses) and evaluation rebuilds the same context from it (:meth:`from_json`).
    """

    kind: str = attrs.field(validator=attrs.validators.in_(CONTEXT_KINDS))
    k: int = int_field(_positive, default=5)
    block_size: int = int_field(_positive, default=5)
    max_blocks: int = int_field(_positive, default=5)
    mode: str = attrs.field(default="recurrent", validator=attrs.validators.in_(TRSR_MODES))
    max_new_tokens: int = int_field(_positive, default=40)

    def to_json(self) -> dict[str, Any]:
        """``kind`` and the fields it uses (``k`` for ``rella``; the other four for ``trsr``)."""
        if self.kind == "rella":
            return {"kind": self.kind, "k": self.k}
        return {"kind": self.kind, "block_size": self.block_size, "max_blocks": self.max_blocks,
                "mode": self.mode, "max_new_tokens": self.max_new_tokens}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ContextSpec":
        """The spec of a :meth:`to_json` dict (the fields it lacks take their defaults)."""
        return cls(**data)
