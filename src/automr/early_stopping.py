"""Epoch loops: early stopping on a validation value (keep the best weights, stop after
``patience`` misses) and one progress line per epoch. SASRec and the retriever share both."""

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
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
        """Record epoch ``epoch``'s value; True when it is the best so far (a NaN never is:
        taken first, no later value was below it and its weights were restored)."""
        if not math.isnan(value) and (self.best is None or value < self.best):
            self.best, self.best_epoch, self.stale = value, epoch, 0
            self._state = copy.deepcopy(model.state_dict())
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` updates in a row brought no improvement."""
        return self.stale >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best weights into ``model`` (nothing without an update)."""
        if self._state is not None:
            model.load_state_dict(self._state)


@contextlib.contextmanager
def epoch_progress(label: str, epochs: int, quiet: bool) -> Iterator[Callable[[str], None]]:
    """A progress bar over ``epochs``; the yielded function ends an epoch with a status line."""
    from automr.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn(f"{label} {{task.description}}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, disable=quiet) as progress:
        task = progress.add_task("training", total=epochs)
        yield lambda status: progress.update(task, advance=1, description=status)
