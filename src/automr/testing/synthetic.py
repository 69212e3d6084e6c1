"""Small synthetic datasets and saved tiny models, for fast end-to-end tests and examples."""

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automr.data import PreparedDataset, ProtocolConfig, prepare_csv
from automr.testing.tiny import tiny_config, tiny_model, tiny_tokenizer

DAY = 86_400
START = 1_500_000_000  # 2017-07-14


def write_synthetic_csv(
    folder: Path, users: int = 12, items: int = 30, per_user: int = 24, seed: int = 0,
    titles: Mapping[str, str] | None = None,
) -> tuple[Path, Path]:
    """Interactions and items files in the generic CSV format, spread over ~3 months.

    Each user walks through the catalog with a user-specific stride, so histories carry some
    signal about the next item. ``titles``: some items' titles instead of the generated ones
    (``{"i5": "Twin", "i6": "Twin"}``: items sharing a title, as Amazon editions do).
    """
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user,item,timestamp"]
    for user in range(users):
        stride, position = 1 + user % 3, rng.randrange(items)
        times = sorted(rng.randrange(0, 90 * DAY) for _ in range(per_user))
        for t in times:
            lines.append(f"u{user},i{position},{START + t}")
            position = (position + stride) % items
    given = titles or {}
    titles = ["item,title"] + [f"i{k},{given.get(f'i{k}', f'Item {chr(65 + k % 26)}{k}')}"
                               for k in range(items)]
    interactions = folder / "interactions.csv"
    interactions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    catalog = folder / "items.csv"
    catalog.write_text("\n".join(titles) + "\n", encoding="utf-8")
    return interactions, catalog


SYNTHETIC_PROTOCOL = ProtocolConfig(start=None, end=None, train_months=2,
                                    min_item_interactions=1, min_user_interactions=5,
                                    max_history=20, recent_k=3)


def synthetic_dataset(folder: Path, **kwargs: Any) -> PreparedDataset:
    """A prepared dataset (in ``folder/prepared``) from :func:`write_synthetic_csv`."""
    interactions, items = write_synthetic_csv(folder / "raw", **kwargs)
    prepare_csv(interactions, items, folder / "prepared", protocol=SYNTHETIC_PROTOCOL)
    return PreparedDataset.load(folder / "prepared")


def save_tiny_model(folder: Path, arch: str = "llama", num_layers: int = 4) -> Path:
    """A tiny random model of ``arch`` (:data:`~automr.testing.tiny.TINY_ARCHITECTURES`) +
    byte tokenizer saved as a local HF folder (loadable by path)."""
    tiny_model(tiny_config(arch, num_layers)).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
