"""SASRec as a :class:`~automr.interfaces.Method`: trained on the training period on first use."""

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from automr.data import PreparedDataset, Sample
from automr.recommenders.sasrec import SASRec, SASRecConfig, fit_sasrec, rank_targets


@attrs.define(eq=False)
class SASRecMethod:
    """SASRec trained on every user's training-period sequence (validation split for early
    stopping), then scoring the whole catalog from each sample's history; trained and run on
    ``device``."""

    dataset: PreparedDataset
    config: SASRecConfig = attrs.field(factory=SASRecConfig)
    progress: bool = False
    device: str | torch.device = "cpu"
    _model: SASRec | None = attrs.field(default=None, init=False)

    @property
    def settings(self) -> Mapping[str, Any]:
        return {"sasrec": attrs.asdict(self.config)}

    @property
    def index(self) -> dict[str, int]:
        """Catalog item id -> SASRec item id (0 is padding)."""
        return {item_id: i + 1 for i, item_id in enumerate(self.dataset.catalog.ids)}

    def model(self) -> SASRec:
        """The trained model (trained on the first call)."""
        if self._model is None:
            index, dataset = self.index, self.dataset
            sequences: dict[str, list[int]] = {}
            times: dict[str, list[int]] = {}
            for interaction in dataset.interactions:
                if dataset.boundaries.split_of(interaction.timestamp) == "train":
                    sequences.setdefault(interaction.user, []).append(index[interaction.item])
                    times.setdefault(interaction.user, []).append(interaction.timestamp)
            valid = [([index[i] for i in s.history], index[s.target])
                     for s in dataset.samples("valid")]
            self._model, _ = fit_sasrec(list(sequences.values()), valid, self.config,
                                        times=list(times.values()), n_items=len(index),
                                        device=self.device, quiet=not self.progress)
        return self._model

    def rank(self, samples: Sequence[Sample]) -> list[int]:
        """Full-ranking ranks over the catalog; with ``config.exclude_seen`` (the default) the
        sample's history items other than the target are left out, as SASRec is trained."""
        model, index = self.model(), self.index
        pairs = [([index[i] for i in s.history], index[s.target]) for s in samples]
        return rank_targets(model, pairs, self.config.exclude_seen,
                            self.config.eval_batch_size).tolist()

    def scores(self, samples: Sequence[Sample]) -> torch.Tensor:
        """``[samples, catalog items]`` float32 on the CPU: the trained model's score of every
        catalog item (column ``i`` is the catalog's ``i``-th item) after each sample's history."""
        model, index = self.model(), self.index
        histories = [[index[i] for i in s.history] for s in samples]
        size = self.config.eval_batch_size
        return torch.cat([model.score(histories[start : start + size])[:, 1:].float().cpu()
                          for start in range(0, len(histories), size)]
                         or [torch.zeros(0, len(index))])
