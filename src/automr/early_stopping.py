"""Early stopping on a validation value: keep the best weights, stop after ``patience`` misses."""

import copy
from typing import Any

import attrs
import torch


@attrs.define
class EarlyStopping:
    """Tracks a value to minimise (pass ``-recall`` to maximise recall) once per epoch.

    :meth:`update` keeps a copy of the model's weights whenever the value improves strictly;
    :attr:`should_stop` turns true after ``patience`` updates without improvement;
    :meth:`restore` loads the best weights back (nothing happens if there was no update).
    """

    patience: int = attrs.field(validator=attrs.validators.gt(0))
    best: float | None = None
    best_epoch: int = 0
    stale: int = 0
    _state: dict[str, Any] | None = attrs.field(default=None, repr=False)

    def update(self, value: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record epoch ``epoch``'s value; True when it is the best so far."""
        if self.best is None or value < self.best:
            self.best, self.best_epoch, self.stale = value, epoch, 0
            self._state = copy.deepcopy(model.state_dict())
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        if self._state is not None:
            model.load_state_dict(self._state)
