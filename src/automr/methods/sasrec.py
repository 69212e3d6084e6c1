"""SASRec as a :class:`~automr.interfaces.Method`: trained on the training period on first use."""

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from automr import distributed
from automr.checks import beartype
from automr.data import PreparedDataset, Sample
from automr.data.fingerprint import dataset_fingerprint
from automr.devices import resolve_device
from automr.errors import AutomrError
from automr.paths import home_path
from automr.recommenders.sasrec import SASRec, SASRecConfig, fit_sasrec, rank_targets
from automr.storage import CONFIG_FILE


@beartype
@attrs.define(eq=False)
class SASRecMethod:
    """SASRec trained on every user's training-period sequence (validation split for early
    stopping), then scoring the whole catalog from each sample's history; trained and run on
    ``device`` (``auto``, ``cpu``, ``mps``, ``cuda[:N]``, as a model loads; or a
    ``torch.device``)."""

    dataset: PreparedDataset
    config: SASRecConfig = attrs.field(factory=SASRecConfig)
    progress: bool = False
    device: torch.device = attrs.field(default="cpu", converter=resolve_device)
    saved: Path | None = attrs.field(default=None,
                                     converter=attrs.converters.optional(home_path))
    """Where the trained model is kept: loaded from there when it was saved, else trained and
    saved there, so a resumed evaluation ranks with the model its first shards used (CUDA
    training is not bit-deterministic)."""
    _model: SASRec | None = attrs.field(default=None, init=False)

    @property
    def settings(self) -> Mapping[str, Any]:
        """``{"sasrec": config}``: every field of the :class:`SASRecConfig`."""
        return {"sasrec": attrs.asdict(self.config)}

    def item_ids(self, items: Iterable[str]) -> list[int]:
        """SASRec's ids of catalog items: the catalog position + 1 (0 is padding)."""
        return [position + 1 for position in self.dataset.catalog.positions(items)]

    def model(self) -> SASRec:
        """The trained model (trained, or loaded from :attr:`saved`, on the first call)."""
        if self._model is None and self.saved is not None and (self.saved / CONFIG_FILE).is_file():
            self._model = self._checked(SASRec.load(self.saved, self.device))
        if self._model is None:
            dataset, ids = self.dataset, self.item_ids
            items: dict[str, list[str]] = {}
            times: dict[str, list[int]] = {}
            for interaction in dataset.interactions:
                if dataset.boundaries.split_of(interaction.timestamp) == "train":
                    items.setdefault(interaction.user, []).append(interaction.item)
                    times.setdefault(interaction.user, []).append(interaction.timestamp)
            valid = [(ids(s.history), ids([s.target])[0]) for s in dataset.samples("valid")]
            self._model, _ = fit_sasrec([ids(i) for i in items.values()], valid, self.config,
                                        times=list(times.values()), n_items=len(dataset.catalog),
                                        device=self.device, quiet=not self.progress)
            if self.saved is not None:
                self._model.provenance = {"dataset": dataset_fingerprint(self.dataset)}
                self._model.save(self.saved)
        return self._model

    def _checked(self, model: SASRec) -> SASRec:
        """``model`` (loaded from :attr:`saved`) when it is this method's: trained with its
        config (the ranking batch size aside) on its dataset (a save of an older automr
        records no dataset: its catalog size is compared); else refused in one line (it would
        rank with another model than its settings say)."""
        asked, kept = attrs.asdict(self.config), attrs.asdict(model.config)
        other = [f"{key} {kept[key]!r} (not {asked[key]!r})" for key in asked
                 if kept[key] != asked[key] and key != "eval_batch_size"]
        if model.n_items != len(self.dataset.catalog):
            other.append(f"{model.n_items} items (not {len(self.dataset.catalog)})")
        elif model.provenance.get("dataset") not in (None, dataset_fingerprint(self.dataset)):
            other.append("trained on another dataset")
        if other:
            raise AutomrError(f"{self.saved} holds another SASRec than this one's: "
                              f"{', '.join(other)}; give this config another saved folder, or "
                              f"remove that one to train again")
        return model

    def train_on_main(self) -> None:
        """Under a launcher: train on the main process only and give every process its
        weights, so that every shard is ranked by one model (CUDA training is not
        bit-deterministic; N trainings would also cost N times). Every process calls it at the
        same point; without a launcher it trains here."""
        weights = distributed.on_main(
            lambda: {name: tensor.cpu() for name, tensor in self.model().state_dict().items()})
        if self._model is None:
            model = SASRec(self.config, n_items=len(self.dataset.catalog))
            model.load_state_dict(weights)
            self._model = model.to(self.device).eval()

    def rank(self, samples: Iterable[Sample]) -> list[int]:
        """Full-ranking ranks over the catalog; with ``config.exclude_seen`` (the default) the
        sample's history items other than the target are left out, as SASRec is trained."""
        model, ids = self.model(), self.item_ids
        pairs = [(ids(s.history), ids([s.target])[0]) for s in samples]
        return rank_targets(model, pairs, self.config.exclude_seen,
                            self.config.eval_batch_size).tolist()

    def scores(self, samples: Iterable[Sample]) -> torch.Tensor:
        """``[samples, catalog items]`` float32 on the CPU: the trained model's score of every
        catalog item (column ``i`` is the catalog's ``i``-th item) after each sample's history."""
        model = self.model()
        histories = [self.item_ids(s.history) for s in samples]
        size = self.config.eval_batch_size
        return torch.cat([model.score(histories[start : start + size])[:, 1:].float().cpu()
                          for start in range(0, len(histories), size)]
                         or [torch.zeros(0, len(self.dataset.catalog))])
