"""Per-user memory: pooling, window/item encoders, views vs samples, storage, resume, append."""

import hashlib
import json
import random
import shutil
from pathlib import Path

import attrs
import pytest
import torch
from hypothesis import example, given, settings, strategies as st
from safetensors.torch import load_file

from automr.data import (
    Catalog,
    Interaction,
    Item,
    PreparedDataset,
    ProtocolConfig,
    Sample,
    SourceData,
    format_prompt,
    prepare_dataset,
    sample_texts,
    tokenize_example,
)
from automr.devices import resolve_device
from automr.errors import AutomrError
from automr.interfaces import Encoder, Memory
from automr.llm import HFSplitLLM
from automr.memory import (
    Backbone,
    ItemEncoder,
    LayerEncoder,
    MemoryConfig,
    MemoryStore,
    Pooling,
    append_memory,
    build_memory,
    mean_pool,
    memory_encoder,
)
from automr.memory.encoders import WindowEncoder, common_prefix, pad_right
from automr.memory.shards import INDEX_FILE, MemoryIndex, shard_name
from automr.testing.tiny import TINY_VOCAB, tiny_config, tiny_model

LAYER = 2
DAY = 86_400
START = 1_577_836_800  # 2020-01-01 UTC
TITLES = ["Alien (1979)", "Heat (1995)", "Up (2009)", "Jaws (1975)", "Rocky (1976)",
          "Big (1988)", "Fargo (1996)", "Se7en (1995)", "Ran (1985)", "Tron (1982)"]


def synthetic_dataset(users: int = 5, seed: int = 0) -> PreparedDataset:
    """Users with 6-14 interactions spread over a year, with same-second ties."""
    rng = random.Random(seed)
    items = [Item(str(i), title) for i, title in enumerate(TITLES)]
    interactions = []
    for u in range(users):
        t = START + rng.randrange(20) * DAY
        for _ in range(rng.randrange(6, 15)):
            t += rng.choice([0, DAY, 9 * DAY, 30 * DAY])  # 0: a tie with the previous one
            interactions.append(Interaction(f"u{u}", rng.choice(items).id, t))
    source = SourceData(kind="csv", domain="movies", catalog=Catalog(items),
                        interactions=tuple(interactions), raw_users=users,
                        raw_items=len(items), raw_interactions=len(interactions))
    protocol = ProtocolConfig(start=None, end=None, train_months=3, min_item_interactions=0,
                              min_user_interactions=0, max_history=5, recent_k=2)
    return prepare_dataset(source, protocol)


@pytest.fixture(scope="module")
def backbone(tokenizer) -> Backbone:
    return Backbone.from_model(tiny_model(tiny_config(num_layers=3), seed=0), tokenizer,
                               "tiny-llama")


@pytest.fixture(scope="module")
def dataset() -> PreparedDataset:
    return synthetic_dataset()


@pytest.fixture(scope="module")
def built(backbone, dataset, tmp_path_factory) -> MemoryStore:
    out = tmp_path_factory.mktemp("mem") / "window"
    config = MemoryConfig(shard_elements=12, store_token_states=True)
    return build_memory(backbone, dataset, LAYER, config, out, batch_size=5, progress=False)


def samples_of(dataset: PreparedDataset):
    return [s for split in ("train", "valid", "test") for s in dataset.samples(split)]


def pooled_alone(backbone: Backbone, text: str, skip_first: int = 1) -> torch.Tensor:
    """The plain computation: one unpadded prompt through layers 0..L-1, mean after skipping."""
    ids = torch.tensor([backbone.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        hidden = backbone.llm.lower(ids, torch.ones_like(ids), LAYER).hidden[0]
    return hidden[skip_first:].mean(0)


# -- pooling and batching ----------------------------------------------------------------------
token = st.integers(min_value=3, max_value=TINY_VOCAB - 1)
sequences = st.lists(st.lists(token, min_size=1, max_size=12), min_size=1, max_size=3)


@settings(max_examples=15)
@given(seqs=sequences, kind=st.sampled_from(["mean", "last"]), skip=st.integers(0, 3),
       side=st.sampled_from(["left", "right"]))
def test_batched_encoding_equals_one_at_a_time(backbone, seqs, kind, skip, side):
    encoder = LayerEncoder(backbone, LAYER, Pooling(kind, skip))
    ids, mask = pad_right(seqs, pad_id=2)
    if side == "left":
        ids, mask = pad_left(seqs)
    batched = encoder.encode(ids, mask)
    for row, seq in enumerate(seqs):
        alone = encoder.encode(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))
        torch.testing.assert_close(batched[row], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoder.encode_tokens(seqs).keys,
                               encoder.encode(*pad_right(seqs, 2)), rtol=1e-5, atol=1e-5)


@given(prefix=st.lists(token, min_size=0, max_size=10), tails=sequences,
       kind=st.sampled_from(["mean", "last"]), skip=st.integers(0, 3), layer=st.integers(0, 3))
def test_shared_prefix_encoding_equals_plain(backbone, prefix, tails, kind, skip, layer):
    seqs = [prefix + tail for tail in tails]
    shared = LayerEncoder(backbone, layer, Pooling(kind, skip), share_prefix=True, min_shared=1)
    plain = LayerEncoder(backbone, layer, Pooling(kind, skip), share_prefix=False)
    shortest = min(map(len, seqs))
    assert min(len(prefix), shortest - 1) <= common_prefix(seqs) <= shortest - 1
    got, want = shared.encode_tokens(seqs, True), plain.encode_tokens(seqs, True)
    torch.testing.assert_close(got.keys, want.keys, rtol=1e-5, atol=1e-5)
    assert got.states is not None and want.states is not None and got.tokens == want.tokens
    for a, b in zip(got.states, want.states, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@settings(max_examples=15)
@given(prefixes=st.lists(st.lists(token, min_size=2, max_size=6), min_size=1, max_size=3),
       batches=st.lists(st.tuples(st.integers(0, 2), sequences), min_size=2, max_size=5),
       layer=st.integers(1, 3))
@example(prefixes=[[5, 6, 7], [8, 9, 10]], batches=[(0, [[11], [12, 13]]), (1, [[11], [14]]),
                                                    (0, [[15], [16]])], layer=2)
def test_a_reused_encoder_equals_plain_across_batches(backbone, prefixes, batches, layer):
    """The memoised prefix states: one encoder over several batches (the same prefix again,
    other prefixes of the same length, more batches than it remembers) = plain encoding."""
    shared = LayerEncoder(backbone, layer, share_prefix=True, min_shared=1)
    plain = LayerEncoder(backbone, layer, share_prefix=False)
    for pick, tails in batches:
        seqs = [prefixes[pick % len(prefixes)] + tail for tail in tails]
        got, want = shared.encode_tokens(seqs, True), plain.encode_tokens(seqs, True)
        torch.testing.assert_close(got.keys, want.keys, rtol=1e-5, atol=1e-5)
        assert got.states is not None and want.states is not None
        for a, b in zip(got.states, want.states, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opening", [10, 16])  # 16: the opening fills the original context
def test_a_shared_opening_does_not_split_an_element_across_the_longrope_switch(backbone,
                                                                             opening):
    """Elements past longrope's switch (Phi-3 128k, Phi-3.5 / Phi-4 mini) continued a
    short-factor cache of their shared opening: `memory build` refused every such window
    prompt, which the docs say is supported (the lengths review). They run whole, as prefill
    runs them."""
    model = tiny_model(tiny_config(
        "phi3", num_layers=2, original_max_position_embeddings=16, max_position_embeddings=512,
        rope_scaling=dict(type="longrope", short_factor=[1.0, 1.5], long_factor=[4.0, 40.0])))
    longrope = Backbone(HFSplitLLM(model), backbone.tokenizer, "phi3")
    head = list(range(40, 40 + opening))
    seqs = [head + list(range(20, 28)), head + list(range(30, 37))]
    for layer in (1, 2):
        shared = LayerEncoder(longrope, layer, share_prefix=True, min_shared=1)
        plain = LayerEncoder(longrope, layer, share_prefix=False)
        torch.testing.assert_close(shared.encode_tokens(seqs).keys,
                                   plain.encode_tokens(seqs).keys)


def pad_left(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), 2, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return ids, mask


def test_mean_pool_leaves_out_first_positions():
    hidden = torch.tensor([[[1000.0], [1.0], [3.0], [0.0]],
                           [[0.0], [500.0], [2.0], [4.0]]])
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    torch.testing.assert_close(mean_pool(hidden, mask, 1), torch.tensor([[2.0], [3.0]]))
    torch.testing.assert_close(mean_pool(hidden, mask, 0), torch.tensor([[1004 / 3], [506 / 3]]))
    # Too short to skip anything: falls back to all real tokens.
    torch.testing.assert_close(mean_pool(hidden, mask, 5), torch.tensor([[1004 / 3], [506 / 3]]))
    torch.testing.assert_close(Pooling("last")(hidden, mask), torch.tensor([[3.0], [4.0]]))
    with pytest.raises(ValueError, match="unknown pooling"):
        Pooling("max")


def test_protocols(backbone, built):
    assert isinstance(built, Memory)
    assert isinstance(LayerEncoder(backbone, LAYER), Encoder)
    assert isinstance(built.recompute.base, Encoder)
    assert built.layer == LAYER


# -- what an element encodes ------------------------------------------------------------------
def test_window_key_is_the_prompt_up_to_and_including_the_item(backbone, dataset, built):
    k = dataset.protocol.recent_k
    for user in built.users()[:2]:
        entry = built.index.users[user]
        keys = built.view(user, built.count(user)).keys
        for m in range(len(entry.items)):
            window = entry.items[max(0, m + 1 - k): m + 1]
            text = format_prompt(dataset.catalog.titles(window), dataset.prompt_config)
            torch.testing.assert_close(keys[m], pooled_alone(backbone, text),
                                       rtol=1e-5, atol=1e-5)


def test_window_without_item_equals_the_query_of_a_sample_at_that_time(
        backbone, dataset, tmp_path):
    config = MemoryConfig(window_includes_item=False, shard_elements=1000)
    memory = build_memory(backbone, dataset, LAYER, config, tmp_path / "m", progress=False)
    checked = 0
    for sample in samples_of(dataset)[::3]:
        entry = memory.index.users[sample.user]
        m = next(i for i, t in enumerate(entry.timestamps) if t == sample.timestamp)
        prompt, target = sample_texts(sample, dataset.catalog, dataset.prompt_config)
        ids = torch.tensor([tokenize_example(backbone.tokenizer, prompt, target).prompt_ids])
        query = memory.recompute.base.encode(ids, torch.ones_like(ids))[0]
        torch.testing.assert_close(memory.view(sample.user, m + 1).keys[m], query,
                                   rtol=1e-5, atol=1e-5)
        checked += 1
    assert checked > 5
    # A user's first element has no predecessor: the prompt with no item at all.
    first = memory.view(memory.users()[0], 1).keys[0]
    empty = pooled_alone(backbone, format_prompt([], dataset.prompt_config))
    torch.testing.assert_close(first, empty, rtol=1e-5, atol=1e-5)


def test_window_without_item_leaves_out_the_items_sharing_its_timestamp():
    """Without the item, element m's window ends before the first interaction at m's time
    (as a sample's prompt at that time does), not just before m."""
    times = [1, 2, 2, 2, 3]
    without = WindowEncoder(None, None, None, window=2, includes_item=False)
    assert [list(without.positions(times, m)) for m in range(5)] == [
        [], [0], [0], [0], [2, 3]]
    including = WindowEncoder(None, None, None, window=2)
    assert [list(including.positions(times, m)) for m in range(5)] == [
        [0], [0, 1], [1, 2], [2, 3], [3, 4]]


def test_item_encoder_shares_one_key_per_item(backbone, dataset, tmp_path):
    config = MemoryConfig(encoder="item", shard_elements=7)
    memory = build_memory(backbone, dataset, LAYER, config, tmp_path / "m", progress=True)
    keys_by_item: dict[str, torch.Tensor] = {}
    for user in memory.users():
        view = memory.view(user, memory.count(user))
        for item, key in zip(view.item_ids, view.keys, strict=True):
            expected = keys_by_item.setdefault(item, key)
            assert torch.equal(key, expected)
    for item, key in keys_by_item.items():
        text = '"' + dataset.catalog.title(item) + '"'
        torch.testing.assert_close(key, pooled_alone(backbone, text), rtol=1e-5, atol=1e-5)


def test_build_progress_counts_and_rates_elements(backbone, dataset, tmp_path, monkeypatch,
                                                 capsys):
    """The bar counted elements but its rate was encoded tokens/s."""
    monkeypatch.setenv("AUTOMR_PROGRESS_EVERY", "0")  # captured output: one plain line a batch
    memory = build_memory(backbone, dataset, LAYER, MemoryConfig(encoder="item"),
                          tmp_path / "m", progress=True)
    lines = capsys.readouterr().err.splitlines()
    total = sum(memory.count(user) for user in memory.users())
    assert lines[-1].startswith(f"memory elements: {total:,}/{total:,} (100%)")
    assert all(line.endswith(" elements/s") for line in lines), lines


def test_item_memory_stores_each_item_once_and_reads_like_one_row_per_element(
        backbone, dataset, tmp_path, monkeypatch):
    """A shared (item) memory returns exactly what one row per element returns; a folder of
    the older per-element format still opens, is not built into, and is upgraded by append."""
    config = MemoryConfig(encoder="item", shard_elements=12, store_token_states=True)
    # batch_size=1: every text is encoded alone in both builds, so the floats are identical
    shared = build_memory(backbone, dataset, LAYER, config, tmp_path / "shared", batch_size=1,
                          progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(ItemEncoder, "reuses_texts", False)  # the per-element layout
        flat = build_memory(backbone, dataset, LAYER, config, tmp_path / "flat", batch_size=1,
                            progress=False)
    assert len(shared.index.shards) > 1 and shared.record.format == "automr.memory/2"
    for entry, tensors in zip(shared.index.shards, shard_tensors(shared), strict=True):
        users = [shared.index.users[u] for u in entry.users]
        items = list(dict.fromkeys(i for user in users for i in user.items))
        assert entry.distinct == len(items) < entry.elements
        assert tensors["keys"].shape[0] == len(items) and tensors["rows"].shape == (
            entry.elements,)
        assert tensors["states"].shape[0] == entry.tokens == tensors["offsets"][-1]
    assert all("rows" not in t and s.distinct is None
               for s, t in zip(flat.index.shards, shard_tensors(flat), strict=True))
    assert _folder_bytes(shared.folder) < _folder_bytes(flat.folder)

    old = tmp_path / "old"  # what automr.memory/1 wrote: one row per element, no row map
    shutil.copytree(flat.folder, old)
    record = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**record, "format": "automr.memory/1"}))
    by_runs = MemoryStore.open(shared.folder)
    by_runs.shared_keys_in_ram = 0  # read the stored rows run by run, as for a large catalog
    opened = [by_runs, MemoryStore.open(shared.folder, preload=True), MemoryStore.open(old),
              MemoryStore.open(old, preload=True)]
    assert opened[2].record.format == "automr.memory/1"
    requests = []
    for user in flat.users():
        n = flat.count(user)
        want = flat.view(user, n)
        for store in (shared, *opened):
            assert torch.equal(store.view(user, n).keys, want.keys)
            assert store.view(user, n).item_ids == want.item_ids
        for index in range(n):
            key = flat.view(user, 1, index).keys
            states = flat.token_states(user, index)
            for store in (shared, *opened):
                assert torch.equal(store.view(user, 1, index).keys, key)
                assert torch.equal(store.token_states(user, index), states)
        requests += [(user, n), (user, max(n - 3, 0), 2 if n > 4 else 0)]
    for store in (shared, *opened):
        keys, mask = store.padded_keys(requests)
        want_keys, want_mask = flat.padded_keys(requests)
        assert torch.equal(keys, want_keys) and torch.equal(mask, want_mask)
    assert not by_runs._preloaded and shared._preloaded  # each way was taken
    for sample in samples_of(dataset):
        assert torch.equal(shared.view_sample(sample).keys, flat.view_sample(sample).keys)

    with pytest.raises(AutomrError, match=r"older format 'automr.memory/1'.*Delete it"):
        build_memory(backbone, dataset, LAYER, config, old, progress=False)
    newcomer = [Interaction("zz", item, START + n) for n, item in enumerate("3131")]
    grown = append_memory(old, backbone, newcomer, dataset.catalog, progress=False)
    assert grown.record.format == "automr.memory/2" and grown.index.shards[-1].distinct == 2
    assert grown.record.dataset_fingerprint is None  # no longer the dataset it was built from
    assert grown.view("zz", 4).item_ids == ("3", "1", "3", "1")
    for user in flat.users():
        assert torch.equal(grown.view(user, flat.count(user)).keys,
                           flat.view(user, flat.count(user)).keys)
    torch.testing.assert_close(grown.view("zz", 4).keys[:2], grown.view("zz", 2, 2).keys,
                               rtol=0, atol=0)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir())


# -- views vs samples -------------------------------------------------------------------------
def test_views_are_exactly_the_samples_memories(dataset, built):
    capped = 0
    all_samples = samples_of(dataset)
    for sample in all_samples:
        view = built.view_sample(sample)
        assert view.item_ids == sample.memory
        assert view.timestamps == sample.memory_timestamps
        assert view.keys.shape == (len(sample.memory), built.hidden_size)
        # Nothing at or after the recent items: the elements end right where they start.
        user, count, start = built.request_for(sample)
        entry = built.index.users[user]
        assert tuple(entry.items[start + count:][: len(sample.recent)]) == sample.recent
        assert all(t <= sample.recent_timestamps[0] for t in view.timestamps)
        assert all(t < sample.timestamp for t in view.timestamps)
        if start == 0:  # the Memory protocol's view(user, count): the count oldest elements
            assert built.view(user, count).item_ids == sample.memory
        capped += start > 0
    assert capped > 0, "the synthetic data should exercise the max_history cap"
    assert sum(bool(s.memory) for s in all_samples) > 10
    # Every user's elements are its whole timeline, in time order.
    timeline: dict[str, list[tuple[str, int]]] = {}
    for inter in dataset.interactions:
        timeline.setdefault(inter.user, []).append((inter.item, inter.timestamp))
    assert list(built.users()) == sorted(timeline)
    for user, rows in timeline.items():
        view = built.view(user, len(rows))
        assert list(zip(view.item_ids, view.timestamps, strict=True)) == rows


def test_a_sample_whose_memory_the_store_does_not_hold_is_refused(dataset, built):
    """Same user, same times, other items (a memory built from other data): refused, not read
    as that sample's memory."""
    sample = next(s for s in samples_of(dataset) if s.memory)
    other = Sample(user=sample.user, target=sample.target, timestamp=sample.timestamp,
                   recent=sample.recent, recent_timestamps=sample.recent_timestamps,
                   memory=("not-in-the-memory", *sample.memory[1:]),
                   memory_timestamps=sample.memory_timestamps)
    with pytest.raises(AutomrError, match="built from other data"):
        built.request_for(other)


def test_padded_keys_and_bad_requests(built):
    users = built.users()
    requests = [(users[0], 3), (users[1], 0), (users[2], 2, 1)]
    keys, mask = built.padded_keys(requests)
    assert keys.shape == (3, 3, built.hidden_size) and mask.sum(1).tolist() == [3, 0, 2]
    assert torch.equal(keys[2, :2], built.view(users[2], 2, 1).keys)
    assert torch.equal(keys[1], torch.zeros(3, built.hidden_size))
    assert built.view("nobody", 0).keys.shape == (0, built.hidden_size)
    with pytest.raises(AutomrError, match="has 0 memory elements"):
        built.view("nobody", 1)
    with pytest.raises(AutomrError, match="memory elements") as too_many:
        built.view(users[0], built.count(users[0]) + 1)
    assert "other data" not in str(too_many.value)  # the request, not the memory, is wrong


# -- storage ----------------------------------------------------------------------------------
def test_round_trip_and_fp16(backbone, dataset, built, tmp_path):
    again = MemoryStore.open(built.folder)
    preloaded = MemoryStore.open(built.folder, preload=True)
    half = build_memory(backbone, dataset, LAYER, MemoryConfig(storage_dtype="float16"),
                        tmp_path / "half", batch_size=5, progress=False)
    assert half.record.storage_dtype == "float16" and half.record.dtype == "float32"
    assert len(built.index.shards) > 1
    for user in built.users():
        n = built.count(user)
        keys = built.view(user, n).keys
        assert torch.equal(again.view(user, n).keys, keys)
        assert torch.equal(preloaded.view(user, n).keys, keys)
        half_keys = half.view(user, n).keys
        assert half_keys.dtype == torch.float32
        torch.testing.assert_close(half_keys, keys, rtol=2e-3, atol=2e-3)
    shard = load_file(built.folder / built.index.shards[0].file)
    assert set(shard) == {"keys", "states", "offsets"}
    assert set(load_file(half.folder / half.index.shards[0].file)) == {"keys"}
    assert load_file(half.folder / half.index.shards[0].file)["keys"].dtype == torch.float16


def test_wrong_model_or_layer_is_refused(backbone, dataset, built, tokenizer, tmp_path):
    with pytest.raises(AutomrError, match=r"built with model 'tiny-llama'.*fingerprint"):
        MemoryStore.open(built.folder, expect_fingerprint="0" * 64)
    with pytest.raises(AutomrError, match=r"layer-2 states.*layer 1 was asked"):
        MemoryStore.open(built.folder, expect_layer=1)
    MemoryStore.open(built.folder, expect_fingerprint=backbone.fingerprint, expect_layer=LAYER)
    other = Backbone.from_model(tiny_model(tiny_config(num_layers=3), seed=7), tokenizer,
                                "tiny-llama")
    with pytest.raises(AutomrError, match="built with model"):
        memory_encoder(built.folder, other, dataset.catalog)
    with pytest.raises(AutomrError, match="other settings"):
        build_memory(backbone, dataset, 1, MemoryConfig(shard_elements=12,
                     store_token_states=True), built.folder, progress=False)
    with pytest.raises(AutomrError, match="not a memory folder"):
        MemoryStore.open(tmp_path)
    for wrong in (backbone, backbone.llm):  # was AttributeError: ... no attribute 'base'
        with pytest.raises(AutomrError, match=f"not a {type(wrong).__name__}: make it with "
                                              f"automr.memory.memory_encoder"):
            MemoryStore.open(built.folder, recompute=wrong)


def test_token_states_recomputed_equal_stored(backbone, dataset, built, tmp_path):
    lean = build_memory(backbone, dataset, LAYER, MemoryConfig(shard_elements=12),
                        tmp_path / "lean", batch_size=5, progress=False)
    assert not lean.record.store_token_states
    for user in lean.users()[:3]:
        assert torch.equal(lean.view(user, 4).keys, built.view(user, 4).keys)
        for index in range(0, lean.count(user), 3):
            stored = built.token_states(user, index)
            recomputed = lean.token_states(user, index)
            assert stored.shape == recomputed.shape
            torch.testing.assert_close(recomputed, stored, rtol=1e-5, atol=1e-5)
            key = built.view(user, 1, index).keys[0]
            torch.testing.assert_close(stored[1:].mean(0), key, rtol=1e-5, atol=1e-5)
    with pytest.raises(AutomrError, match="stores no token states"):
        MemoryStore.open(lean.folder).token_states(lean.users()[0], 0)


def test_a_recompute_encoder_of_the_model_in_another_dtype_is_refused(backbone, dataset, built):
    """A float32 memory took an encoder of its model loaded in bfloat16 (one fingerprint in
    every dtype): the states it recomputed were not the build's (eq. 5's gains moved by 5%),
    as an append in another dtype is refused for its keys."""
    import copy

    halved = copy.deepcopy(backbone.llm.model).to(torch.bfloat16)
    other = Backbone(HFSplitLLM(halved), backbone.tokenizer, backbone.name, backbone.fingerprint)
    with pytest.raises(AutomrError, match=r"built in float32, but the encoder's model is "
                                          r"loaded in bfloat16: .* Load the model in float32 "
                                          r"\(load_model\(\.\.\., dtype='float32'\)\)"):
        MemoryStore.open(built.folder, recompute=memory_encoder(built.folder, other,
                                                                 dataset.catalog))


def test_a_recompute_encoder_of_another_catalog_or_without_a_model_fingerprint_is_refused(
        backbone, dataset, built):
    """Both passed before: another catalog's titles gave token states of other texts, and a
    Backbone made without a fingerprint skipped the model check (another model's states)."""
    retitled = Catalog([Item(item.id, f"{item.title} (retitled)") for item in dataset.catalog])
    with pytest.raises(AutomrError, match="other titles than the ones it was built with"):
        MemoryStore.open(built.folder, recompute=memory_encoder(built.folder, backbone,
                                                                 retitled))
    grown = Catalog([*dataset.catalog, Item("new", "A New Film (2001)")])  # only adds: fine
    for catalog in (dataset.catalog, grown):
        MemoryStore.open(built.folder, recompute=memory_encoder(built.folder, backbone,
                                                                catalog))
    anonymous = Backbone(backbone.llm, backbone.tokenizer, backbone.name)
    with pytest.raises(AutomrError, match=r"has none to compare .*: make it with Backbone\.of\("
                                          r"load_model\('tiny-llama'\)\), the model the memory"):
        memory_encoder(built.folder, anonymous, dataset.catalog)
    encoder = memory_encoder(built.folder, backbone, dataset.catalog)
    encoder.base = LayerEncoder(anonymous, LAYER, encoder.base.pooling, encoder.base.share_prefix)
    with pytest.raises(AutomrError, match="has none to compare"):
        MemoryStore.open(built.folder, recompute=encoder)


def test_an_append_retitling_held_items_is_refused_and_one_of_nothing_changes_nothing(
        backbone, dataset, built, tmp_path):
    """An append took any catalog and recorded it: old elements' states were then recomputed
    from the new titles beside keys of the old ones; appending nothing rewrote the record."""
    folder = tmp_path / "copy"
    shutil.copytree(built.folder, folder)
    retitled = Catalog([Item(item.id, f"{item.title} (retitled)") for item in dataset.catalog])
    later = Interaction("u0", dataset.catalog.items[0].id, 10**10)
    with pytest.raises(AutomrError, match="other titles than the ones it was built with"):
        append_memory(folder, backbone, [later], retitled, progress=False)
    before = (folder / "config.json").read_bytes()
    grown = Catalog([*dataset.catalog, Item("new", "A New Film (2001)")])
    append_memory(folder, backbone, [], grown, progress=False)
    assert (folder / "config.json").read_bytes() == before
    store = append_memory(folder, backbone, [Interaction("u0", "new", 10**10)], grown,
                          progress=False)
    assert store.record.titles_fingerprint != built.record.titles_fingerprint is not None
    MemoryStore.open(folder, recompute=memory_encoder(folder, backbone, grown))
    with pytest.raises(AutomrError, match="or lacks some"):  # the new item is held now
        MemoryStore.open(folder, recompute=memory_encoder(folder, backbone, dataset.catalog))


def test_a_memory_recorded_before_its_titles_were_kept_resumes_and_is_not_title_checked(
        backbone, dataset, built, tmp_path):
    folder = tmp_path / "older"
    shutil.copytree(built.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["titles_fingerprint"]
    (folder / "config.json").write_text(json.dumps(config))
    store = build_memory(backbone, dataset, LAYER, MemoryConfig(shard_elements=12,
                         store_token_states=True), folder, batch_size=5, progress=False)
    assert store.record.titles_fingerprint is None  # its folder kept as it was
    retitled = Catalog([Item(item.id, f"{item.title} (retitled)") for item in dataset.catalog])
    MemoryStore.open(folder, recompute=memory_encoder(folder, backbone, retitled))


def test_datasets_built_in_python_with_other_interactions_have_other_fingerprints():
    """A source read from no file has no file hashes: its interactions are hashed (two
    datasets with one catalog and count but other items had one fingerprint)."""
    from automr.data.fingerprint import dataset_fingerprint

    first = synthetic_dataset()
    rows = list(first.interactions)
    rows[0] = attrs.evolve(rows[0], item=next(item.id for item in first.catalog
                                              if item.id != rows[0].item))
    source = SourceData(kind="csv", domain="movies", catalog=first.catalog,
                        interactions=tuple(rows), raw_users=5, raw_items=len(first.catalog),
                        raw_interactions=len(rows))
    other = prepare_dataset(source, first.protocol)
    assert len(other.interactions) == len(first.interactions)
    assert dataset_fingerprint(synthetic_dataset()) == dataset_fingerprint(first)
    assert dataset_fingerprint(other) != dataset_fingerprint(first)


# -- resume and append ------------------------------------------------------------------------
def shard_tensors(store: MemoryStore) -> list[dict[str, torch.Tensor]]:
    return [load_file(store.folder / s.file) for s in store.index.shards]


def test_resume_after_interruption_equals_full_build(backbone, dataset, built, tmp_path):
    config = MemoryConfig(shard_elements=12, store_token_states=True)
    out = tmp_path / "resumed"

    def interrupt(number: int, total: int) -> None:
        assert total > 2
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_memory(backbone, dataset, LAYER, config, out, batch_size=5, progress=False,
                     on_shard=interrupt)
    assert (out / shard_name(0)).is_file() and not (out / shard_name(1)).exists()
    assert MemoryIndex.read(out).shards == []  # written once, when the build is done
    with pytest.raises(AutomrError, match="incomplete"):
        MemoryStore.open(out)
    seen = []
    resumed = build_memory(backbone, dataset, LAYER, config, out, batch_size=5, progress=False,
                           on_shard=lambda number, total: seen.append(number))
    assert seen[0] == 1  # shard 0 was kept, not recomputed
    # the same index, byte for byte (no timings in it), so the same digest: annotations and
    # evaluations made with the first build take the second as the same memory
    assert (out / INDEX_FILE).read_bytes() == (built.folder / INDEX_FILE).read_bytes()
    assert MemoryStore.digest(out) == MemoryStore.digest(built.folder)
    for got, want in zip(shard_tensors(resumed), shard_tensors(built), strict=True):
        assert got.keys() == want.keys()
        assert all(torch.equal(got[name], want[name]) for name in want)
    for shard in built.folder.glob("shard-*.safetensors"):  # no timings in the metadata either
        assert (out / shard.name).read_bytes() == shard.read_bytes(), shard.name


def test_a_second_build_into_a_folder_in_use_is_refused(backbone, dataset, tmp_path,
                                                        monkeypatch):
    """A build of other settings (another layer) started while the first had finished no
    shard took the folder over (a folder of no finished shard is started over) and finished:
    then the first went on writing its layer-2 shards over the second's, under the second's
    config.json (layer 1), and ended refusing the folder it had built ("holds layer-1
    states")."""
    import automr.memory.build as build

    write, refusals = build._write_shard, []

    def second_build_starts(*args, **kwargs):  # as the first build writes its first shard
        if not refusals:
            refusals.append("started")
            try:
                build_memory(backbone, dataset, 1, MemoryConfig(shard_elements=12),
                             tmp_path / "m", batch_size=5, progress=False)
                refusals.append("none")
            except AutomrError as error:
                refusals.append(str(error))
        return write(*args, **kwargs)

    monkeypatch.setattr(build, "_write_shard", second_build_starts)
    memory = build_memory(backbone, dataset, LAYER, MemoryConfig(shard_elements=12),
                          tmp_path / "m", batch_size=5, progress=False)
    assert "is in use by another automr command (process" in refusals[1]
    assert memory.layer == LAYER and MemoryStore.open(tmp_path / "m").layer == LAYER
    monkeypatch.setattr(build, "_write_shard", write)  # the lock went with the first build
    with pytest.raises(AutomrError, match="built with other settings"):
        build_memory(backbone, dataset, 1, MemoryConfig(shard_elements=12), tmp_path / "m",
                     batch_size=5, progress=False)


@pytest.mark.parametrize("cut", [3, 100])
def test_a_resumed_build_redoes_a_damaged_shard(backbone, dataset, built, tmp_path, cut):
    """A finished shard cut short (in its data, or in its header) is built again by the rerun,
    not taken as finished: the folder equals an uninterrupted build's, byte for byte."""
    config = MemoryConfig(shard_elements=12, store_token_states=True)
    out = tmp_path / "damaged"

    def interrupt(number: int, total: int) -> None:
        if number == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_memory(backbone, dataset, LAYER, config, out, batch_size=5, progress=False,
                     on_shard=interrupt)
    shard = out / shard_name(1)
    shard.write_bytes(shard.read_bytes()[:-cut] if cut < 10 else shard.read_bytes()[:cut])
    seen = []
    build_memory(backbone, dataset, LAYER, config, out, batch_size=5, progress=False,
                 on_shard=lambda number, total: seen.append(number))
    assert seen == [1, *range(3, len(built.index.shards))]  # shards 0 and 2 kept
    assert (out / INDEX_FILE).read_bytes() == (built.folder / INDEX_FILE).read_bytes()
    for path in built.folder.glob("shard-*.safetensors"):
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_shard_of_other_users_under_a_shards_name_is_refused_at_open(built, tmp_path):
    """A shard file of the same shape holding other users' elements (two shards of one
    shape swapped by hand): the index checks passed and other users' keys were read, so
    eq. 5's likelihoods moved without a word (the damaged-artifacts review). Each shard's
    metadata names its users: checked against the index."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out = tmp_path / "swapped"
    shutil.copytree(built.folder, out)
    path = out / shard_name(1)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    metadata["users"] = json.dumps(list(built.index.shards[0].users))  # shard 0's users
    save_file(load_file(path), path, metadata=metadata)
    with pytest.raises(AutomrError, match="holds the elements of other users than the index"):
        MemoryStore.open(out)
    MemoryStore.open(built.folder)  # the intact one opens


def test_a_build_resumes_with_its_model_folder_named_otherwise(dataset, tmp_path, monkeypatch):
    """One model folder typed as an absolute path, then relative to the working folder: the
    rerun resumes (the record keeps the name as typed; the two name one model)."""
    from automr.llm.loading import load_model
    from automr.testing.synthetic import save_tiny_model

    folder = save_tiny_model(tmp_path / "model", num_layers=3)
    config, out = MemoryConfig(shard_elements=12), tmp_path / "m"

    def interrupt(number: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_memory(load_model(str(folder.resolve()), device="cpu", dtype="float32"), dataset,
                     LAYER, config, out, progress=False, on_shard=interrupt)
    monkeypatch.chdir(tmp_path)
    seen = []
    build_memory(load_model("model", device="cpu", dtype="float32"), dataset, LAYER, config,
                 out, progress=False, on_shard=lambda number, total: seen.append(number))
    assert seen and seen[0] == 1  # shard 0 kept


def test_a_memory_is_the_same_however_its_model_folder_was_typed(dataset, tmp_path,
                                                                  monkeypatch):
    """The record kept the model folder as typed: built with `model`, then again with
    `./model/`, the memory's digest differed (its annotations were refused, evaluate ranked
    its methods again), and from another working folder a resume was refused (model_name
    differ; the determinism review)."""
    import json

    from automr.llm.loading import load_model
    from automr.testing.synthetic import save_tiny_model

    save_tiny_model(tmp_path / "model", num_layers=3)
    config = MemoryConfig(shard_elements=12)
    monkeypatch.chdir(tmp_path)
    for name, out in (("model", "a"), ("./model/", "b")):
        build_memory(load_model(name, device="cpu", dtype="float32"), dataset, LAYER, config,
                     tmp_path / out, progress=False)
    assert MemoryStore.digest(tmp_path / "a") == MemoryStore.digest(tmp_path / "b")
    record = json.loads((tmp_path / "a" / "config.json").read_text())
    assert record["model_name"] == str((tmp_path / "model").resolve())
    (tmp_path / "elsewhere").mkdir()  # the model typed from another working folder
    monkeypatch.chdir(tmp_path / "elsewhere")
    seen = []
    build_memory(load_model(str(tmp_path / "model"), device="cpu", dtype="float32"), dataset,
                 LAYER, config, tmp_path / "a", progress=False,
                 on_shard=lambda number, total: seen.append(number))
    assert not seen  # finished: nothing built again

@pytest.mark.parametrize("cut", ["config", "index"])
def test_a_build_cut_while_starting_its_folder_resumes(backbone, dataset, built, tmp_path,
                                                       monkeypatch, cut):
    """A build killed after writing its empty index and before its config.json left a folder
    holding only index.json, which the rerun refused as 'not a memory folder' until deleted by
    hand. The config is now written first, and a folder cut before its index resumes."""
    from automr.memory.config import MemoryRecord

    config = MemoryConfig(shard_elements=12, store_token_states=True)
    out = tmp_path / "cut"
    cls, name = (MemoryRecord, "write") if cut == "config" else (MemoryIndex, "write")
    original = getattr(cls, name)

    def killed(self, folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(cls, name, killed)
    with pytest.raises(KeyboardInterrupt):
        build_memory(backbone, dataset, LAYER, config, out, batch_size=5, progress=False)
    monkeypatch.setattr(cls, name, original)
    resumed = build_memory(backbone, dataset, LAYER, config, out, batch_size=5, progress=False)
    assert MemoryStore.digest(resumed.folder) == MemoryStore.digest(built.folder)


def test_a_build_killed_while_writing_its_config_resumes(backbone, dataset, built, tmp_path,
                                                        left_by_a_killed_write):
    """SIGKILLed between writing its config's temporary file and renaming it, a build left a
    folder holding only ``.config.json.partial-HOST-PID``: the rerun refused it as "not a
    memory folder" until it was deleted by hand."""
    out = left_by_a_killed_write(tmp_path / "killed", "config.json", '{"format": "automr.mem')
    config = MemoryConfig(shard_elements=12, store_token_states=True)
    resumed = build_memory(backbone, dataset, LAYER, config, out, batch_size=5, progress=False)
    assert MemoryStore.digest(resumed.folder) == MemoryStore.digest(built.folder)
    assert not list(out.glob(".config.json.partial-*"))  # the killed write's file is gone
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(AutomrError, match="is not a memory folder"):  # a stranger's still
        build_memory(backbone, dataset, LAYER, config, tmp_path / "other", progress=False)


def test_append_keeps_old_rows_and_adds_new_elements(backbone, dataset, tmp_path):
    # Hold back the last 2 interactions of every user and all of one user, then append them.
    by_user: dict[str, list[Interaction]] = {}
    for inter in dataset.interactions:
        by_user.setdefault(inter.user, []).append(inter)
    late_user = sorted(by_user)[1]
    old, new = [], []
    for user, rows in by_user.items():
        cut = 0 if user == late_user else len(rows) - 2
        old += rows[:cut]
        new += rows[cut:]
    partial = PreparedDataset(catalog=dataset.catalog, interactions=tuple(old),
                              protocol=dataset.protocol, boundaries=dataset.boundaries,
                              stats=dataset.stats, source=dataset.source)
    config = MemoryConfig(shard_elements=12)
    first = build_memory(backbone, partial, LAYER, config, tmp_path / "m", progress=False)
    before = {s.file: _sha(first.folder / s.file) for s in first.index.shards}
    old_keys = {u: first.view(u, first.count(u)).keys for u in first.users()}
    assert late_user not in old_keys
    shuffled = sorted(new, key=lambda i: i.user, reverse=True)  # users mixed, ties in order
    grown = append_memory(first.folder, backbone, shuffled, dataset.catalog,
                          progress=False, dataset=dataset)
    grown.check_dataset(dataset)  # it holds the whole dataset now, not the part it was built on
    with pytest.raises(AutomrError, match="built from another dataset"):
        grown.check_dataset(partial)
    assert {s.file: _sha(grown.folder / s.file) for s in grown.index.shards[:len(before)]} \
        == before
    assert len(grown.index.shards) > len(before)
    full = build_memory(backbone, dataset, LAYER, config, tmp_path / "full", progress=False)
    assert grown.users() == full.users()
    for user in full.users():
        n = full.count(user)
        view, want = grown.view(user, n), full.view(user, n)
        assert (view.item_ids, view.timestamps) == (want.item_ids, want.timestamps)
        if user in old_keys:
            assert torch.equal(view.keys[: len(old_keys[user])], old_keys[user])
        # New elements' windows reach back into the stored items: same keys as a full build.
        torch.testing.assert_close(view.keys, want.keys, rtol=1e-5, atol=1e-5)
    for sample in samples_of(dataset):
        assert grown.view_sample(sample).item_ids == sample.memory
    with pytest.raises(AutomrError, match="older than the last one"):
        append_memory(grown.folder, backbone, [Interaction(late_user, "0", START)],
                      dataset.catalog, progress=False)


def test_append_with_the_model_in_another_dtype_is_refused(dataset, tmp_path):
    """A model read from files has one fingerprint in every dtype, so appending with it
    loaded in bfloat16 to a float32 memory wrote bfloat16-precision keys (0.4% off a float32
    build's) under a record that says float32; a resumed build refuses the same change."""
    from automr.llm.loading import load_model
    from automr.testing.synthetic import save_tiny_model

    folder = str(save_tiny_model(tmp_path / "model", num_layers=3))
    memory = build_memory(load_model(folder, device="cpu", dtype="float32"), dataset, LAYER,
                          MemoryConfig(), tmp_path / "m", progress=False)
    user = sorted(memory.users())[0]
    late = [Interaction(user, "0", memory.view(user, memory.count(user)).timestamps[-1] + 1)]
    before = {p.name: _sha(p) for p in memory.folder.iterdir()}
    with pytest.raises(AutomrError, match=r"built in float32.*bfloat16 here"):
        append_memory(memory.folder, load_model(folder, device="cpu", dtype="bfloat16"), late,
                      dataset.catalog, progress=False)
    assert {p.name: _sha(p) for p in memory.folder.iterdir()} == before
    grown = append_memory(memory.folder, load_model(folder, device="cpu", dtype="float32"),
                          late, dataset.catalog, progress=False)
    assert grown.count(user) == memory.count(user) + 1


def test_keys_that_overflow_the_storage_dtype_are_refused_not_stored(dataset, tokenizer,
                                                                      tmp_path):
    """float16 holds at most 65504: larger layer states were stored as inf, silently."""
    model = tiny_model(tiny_config(num_layers=3), seed=0)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1e7)
    loud = Backbone.from_model(model, tokenizer, "tiny-llama-loud")
    with pytest.raises(AutomrError, match=r"not finite in float16.*--storage-dtype"):
        build_memory(loud, dataset, LAYER, MemoryConfig(storage_dtype="float16"),
                     tmp_path / "m16", progress=False)
    assert not list((tmp_path / "m16").glob("shard-*"))
    build_memory(loud, dataset, LAYER, MemoryConfig(), tmp_path / "m32", progress=False)


def test_a_second_append_while_one_runs_is_refused(backbone, dataset, built, tmp_path,
                                                    monkeypatch):
    """Two appends at once read the same index and both wrote shard N: the one that ended last
    wrote its shard over the other's and an index without the other's users, whose new
    interactions were lost though its append had returned."""
    import automr.memory.build as build

    folder = tmp_path / "m"
    shutil.copytree(built.folder, folder)
    users = sorted(built.users())[:2]
    late = {u: [Interaction(u, "0", built.view(u, built.count(u)).timestamps[-1] + 1)]
            for u in users}
    write, refusals = build._write_shard, []

    def second_append_starts(*args, **kwargs):  # as the first one writes its shard
        if not refusals:
            refusals.append("started")
            try:
                append_memory(folder, backbone, late[users[1]], dataset.catalog, progress=False)
                refusals.append("none")
            except AutomrError as error:
                refusals.append(str(error))
        return write(*args, **kwargs)

    monkeypatch.setattr(build, "_write_shard", second_append_starts)
    append_memory(folder, backbone, late[users[0]], dataset.catalog, progress=False)
    assert "is in use by another automr command (process" in refusals[1]
    grown = MemoryStore.open(folder)
    assert [grown.count(u) for u in users] == [built.count(users[0]) + 1, built.count(users[1])]


def test_append_under_a_launcher_is_refused_before_any_work(backbone, dataset, built,
                                                             tmp_path, monkeypatch):
    """Under torchrun every process appended the same interactions; one that read the index
    after another had appended added them a second time (a user's items doubled)."""
    folder = tmp_path / "m"
    shutil.copytree(built.folder, folder)
    before = {p.name: _sha(p) for p in folder.iterdir()}
    user = sorted(built.users())[0]
    late = [Interaction(user, "0", built.view(user, built.count(user)).timestamps[-1] + 1)]
    monkeypatch.setenv("WORLD_SIZE", "2")  # no group is joined: refused before that
    with pytest.raises(AutomrError, match="append_memory runs in one process"):
        append_memory(folder, backbone, late, dataset.catalog, progress=False)
    assert {p.name: _sha(p) for p in folder.iterdir()} == before


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shard_size_defaults_depend_on_the_encoder():
    assert MemoryConfig(encoder="item").shard_elements == 200_000  # the catalog once per shard
    assert MemoryConfig(encoder="window").shard_elements == 2048
    assert MemoryConfig(encoder="item", shard_elements=7).shard_elements == 7


def test_an_element_encoder_of_ones_own_builds_and_reads_a_memory(backbone, dataset, tmp_path,
                                                                   monkeypatch):
    """The documented way to change what a memory holds: an EncoderKind in ENCODERS."""
    import automr.memory as memory

    class Shouted:
        kind, reuses_texts = "shouted", True

        def __init__(self, base, catalog):
            self.base, self.catalog = base, catalog

        def text(self, items, timestamps, index):
            return self.catalog.title(items[index]).upper()

        def settings(self):
            return {"kind": self.kind, "window": None, "includes_item": True}

    monkeypatch.setitem(memory.ENCODERS, "shouted", memory.EncoderKind(
        "the item's title in capitals", lambda base, catalog, prompt, window, includes:
        Shouted(base, catalog)))
    store = build_memory(backbone, dataset, LAYER, MemoryConfig(encoder="shouted"),
                         tmp_path / "m", progress=False)
    sample = next(s for s in samples_of(dataset) if s.memory)
    view = memory.MemoryStore.open(tmp_path / "m").view_sample(sample)
    first = dataset.catalog.title(sample.memory[0]).upper()
    expected = memory.LayerEncoder(backbone, LAYER).encode_texts([first]).keys[0]
    torch.testing.assert_close(view.keys[0], expected, rtol=1e-5, atol=1e-5)
    assert store.record.encoder == "shouted"
    monkeypatch.delitem(memory.ENCODERS, "shouted")  # a new process that did not register it
    with pytest.raises(AutomrError, match="'shouted', which automr\\.memory\\.ENCODERS lacks"):
        memory.memory_encoder(tmp_path / "m", backbone, dataset.catalog)  # was KeyError
    with pytest.raises(AutomrError, match="register that kind again"):
        memory.append_memory(tmp_path / "m", backbone, [], dataset.catalog, progress=False)


def test_an_index_of_an_older_version_with_timings_reads(built, tmp_path):
    """Older builds kept each shard's seconds in index.json; it still opens, and its digest
    (of the files as they are) is unchanged by reading it."""
    import json
    import shutil

    folder = tmp_path / "older"
    shutil.copytree(built.folder, folder)
    data = json.loads((folder / INDEX_FILE).read_text())
    for shard in data["shards"]:
        shard["seconds"] = 1.25
    (folder / INDEX_FILE).write_text(json.dumps(data))
    digest = MemoryStore.digest(folder)
    store = MemoryStore.open(folder)
    assert [s.file for s in store.index.shards] == [s.file for s in built.index.shards]
    assert MemoryStore.digest(folder) == digest


@pytest.mark.parametrize(("field", "value"), [("complete", "false"),
                                              ("timestamp", float("inf"))])
def test_an_index_with_a_hand_written_value_is_damaged_not_misread(built, tmp_path, field,
                                                                  value):
    """"complete": "false" was read as complete (bool("false")), and a timestamp written
    Infinity was a raw OverflowError (the damaged-artifacts review)."""
    import shutil

    folder = tmp_path / "edited"
    shutil.copytree(built.folder, folder)
    data = json.loads((folder / INDEX_FILE).read_text())
    if field == "complete":
        data["complete"] = value
    else:
        next(iter(data["users"].values()))["timestamps"][0] = value
    (folder / INDEX_FILE).write_text(json.dumps(data))
    with pytest.raises(AutomrError, match=r"index\.json is damaged"):
        MemoryStore.open(folder)


def test_the_digest_of_a_folder_without_a_memory_is_refused(tmp_path):
    """A mistyped folder gave the digest of two missing files (the same for every such
    folder), a dataset's folder one of its config.json: a method's settings recorded it."""
    with pytest.raises(AutomrError, match="not a memory folder"):
        MemoryStore.digest(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text('{"format": "automr.prepared-dataset/1"}')
    with pytest.raises(AutomrError, match="is not a memory config"):
        MemoryStore.digest(tmp_path)


@pytest.mark.parametrize(("shards", "segment", "distinct", "ok"), [
    (1, (0, 0, 3), 3, True),  # a shared shard whose items are all distinct: one row each
    (1, (0, 1, 2), 0, True),
    (1, (0, 1, 3), None, False),  # one row past its shard
    (1, (1, 0, 1), None, False),  # the shard just past the listed ones
    (1, (0, 0, 3), 4, False),  # more distinct rows than elements
    (2, (1, 0, 3), None, True),
])
def test_an_index_check_takes_segments_and_distinct_rows_to_their_bounds(shards, segment,
                                                                          distinct, ok):
    """``MemoryIndex.check`` at the edges: what it passes reads, what it refuses would read
    another user's rows or none (a shard index one past the list was a raw IndexError)."""
    from automr.memory.shards import ShardEntry, UserEntry

    index = MemoryIndex(
        shards=[ShardEntry(shard_name(n), 3, 5, ["u"], distinct) for n in range(shards)],
        users={"u": UserEntry(["a"] * segment[2], [0] * segment[2], [segment])})
    if ok:
        index.check()
    else:
        with pytest.raises(ValueError):
            index.check()


def test_shard_file_names_with_a_folder_part_are_not_plain():
    from automr.memory.shards import is_plain_name

    assert is_plain_name("shard-00000.safetensors")
    for name in ("", ".", "..", "a/b", "..\\shard", "/abs", "a\x00b", 3):
        assert not is_plain_name(name)


def test_token_states_of_appended_elements_are_their_own(backbone, dataset, built, tmp_path):
    """A user's elements span two segments once appended to: the token states of each one
    (the first of the new segment included) are those a full build stores for it."""
    by_user: dict[str, list[Interaction]] = {}
    for inter in dataset.interactions:
        by_user.setdefault(inter.user, []).append(inter)
    old = [i for rows in by_user.values() for i in rows[:-2]]
    new = [i for rows in by_user.values() for i in rows[-2:]]
    partial = PreparedDataset(catalog=dataset.catalog, interactions=tuple(old),
                              protocol=dataset.protocol, boundaries=dataset.boundaries,
                              stats=dataset.stats, source=dataset.source)
    config = MemoryConfig(shard_elements=12, store_token_states=True)
    build_memory(backbone, partial, LAYER, config, tmp_path / "m", batch_size=5,
                 progress=False)
    grown = append_memory(tmp_path / "m", backbone, new, dataset.catalog, batch_size=5,
                          progress=False)
    checked = 0
    for user in grown.users():
        assert len(grown.index.users[user].segments) == 2
        for index in range(grown.count(user)):
            torch.testing.assert_close(grown.token_states(user, index),
                                       built.token_states(user, index), rtol=1e-5, atol=1e-5)
            checked += 1
    assert checked == sum(built.count(u) for u in built.users())


def test_a_shard_missing_once_every_process_is_done_is_an_error(backbone, dataset, tmp_path,
                                                               monkeypatch):
    """A process that reached the end without writing its shards (here: this one skips its
    last) must not leave an index that calls the memory complete without them."""
    from automr import distributed

    monkeypatch.setattr(distributed, "mine", lambda todo: list(todo)[:-1])
    config = MemoryConfig(shard_elements=12)
    with pytest.raises(AutomrError, match=r"shard \d+ of .* is missing after every process "
                                          r"finished; rerun the same command"):
        build_memory(backbone, dataset, LAYER, config, tmp_path / "m", progress=False)
    assert not MemoryIndex.read(tmp_path / "m").complete
    monkeypatch.undo()
    build_memory(backbone, dataset, LAYER, config, tmp_path / "m", progress=False)


def test_a_shard_closes_once_it_holds_its_elements():
    """Whole users in order; a shard closes as soon as it reaches ``limit`` elements (not
    only once past it); users without elements are left out."""
    from automr.memory.build import plan_shards

    sizes = {"a": 2, "b": 1, "c": 1, "d": 0, "e": 3, "f": 1}
    assert plan_shards(list(sizes), sizes, 2) == [["a"], ["b", "c"], ["e"], ["f"]]
    assert plan_shards(list(sizes), sizes, 100) == [["a", "b", "c", "e", "f"]]
    assert plan_shards(["d"], sizes, 2) == []


def test_a_finished_shard_without_its_entry_is_built_again(backbone, dataset, built, tmp_path):
    """A cut build's shard written before shards carried their index entry (no ``users`` in
    its metadata) cannot be recorded from its file: the resumed build makes it again."""
    from safetensors.torch import save_file

    config = MemoryConfig(shard_elements=12, store_token_states=True)
    out = tmp_path / "older"

    def interrupt(number: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_memory(backbone, dataset, LAYER, config, out, batch_size=5, progress=False,
                     on_shard=interrupt)
    save_file(load_file(out / shard_name(0)), out / shard_name(0),
              metadata={"format": "automr.memory/1"})
    seen = []
    build_memory(backbone, dataset, LAYER, config, out, batch_size=5, progress=False,
                 on_shard=lambda number, total: seen.append(number))
    assert seen[0] == 0
    assert MemoryStore.digest(out) == MemoryStore.digest(built.folder)


def test_a_memory_out_that_is_a_file_is_one_line(backbone, dataset, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(AutomrError, match="exists and is not a memory folder"):
        build_memory(backbone, dataset, LAYER, MemoryConfig(shard_elements=12),
                     tmp_path / "file", progress=False)


def test_append_takes_an_interaction_tied_with_the_last_stored_one(backbone, dataset, built,
                                                                   tmp_path):
    """Ties with a user's last stored interaction are fine (only older ones are refused), and
    new interactions are taken in time order whatever their order in the input."""
    folder = tmp_path / "m"
    shutil.copytree(built.folder, folder)
    user = built.users()[0]
    last = built.index.users[user].timestamps[-1]
    first, second = (item.id for item, _ in zip(dataset.catalog, range(2), strict=False))
    grown = append_memory(folder, backbone, [Interaction(user, first, last + 10),
                                             Interaction(user, second, last)],
                          dataset.catalog, progress=False)
    assert grown.count(user) == built.count(user) + 2
    entry = grown.index.users[user]
    assert entry.timestamps[-3:] == [last, last, last + 10]
    assert entry.items[-2:] == [second, first]


def test_append_takes_a_repeat_of_a_stored_or_new_interaction_once(backbone, dataset,
                                                                     tmp_path):
    """Appending "every interaction since the last stored time" sends that time's stored
    interactions again: stored twice (a prepared dataset holds them once), they shifted every
    later sample's memory by one, and where the items repeated, the wrong elements came back
    without an error."""
    by_user: dict[str, list[Interaction]] = {}
    for inter in dataset.interactions:
        by_user.setdefault(inter.user, []).append(inter)
    old = [i for rows in by_user.values() for i in rows[:-2]]
    new = [i for rows in by_user.values() for i in rows[-2:]]
    partial = attrs.evolve(dataset, interactions=tuple(old))
    config = MemoryConfig(shard_elements=12)
    first = build_memory(backbone, partial, LAYER, config, tmp_path / "m", progress=False)
    resent = [i for i in old if i.timestamp == first.index.users[i.user].timestamps[-1]]
    assert resent
    grown = append_memory(first.folder, backbone, resent + new + new[:3], dataset.catalog,
                          progress=False, dataset=dataset)
    full = build_memory(backbone, dataset, LAYER, config, tmp_path / "full", progress=False)
    for user in full.users():
        view, want = grown.view(user, grown.count(user)), full.view(user, full.count(user))
        assert (view.item_ids, view.timestamps) == (want.item_ids, want.timestamps)
    for sample in samples_of(dataset):
        view = grown.view_sample(sample)
        assert (view.item_ids, view.timestamps) == (sample.memory, sample.memory_timestamps)


def test_a_sample_whose_history_the_memory_holds_at_other_times_is_refused(built, dataset):
    """The memory's slice was checked by its items alone: a user's items at other times (a
    memory of other data, or one shifted by a repeat) passed for the sample's."""
    sample = next(s for s in samples_of(dataset) if s.memory)
    assert built.view_sample(sample).item_ids == sample.memory
    moved = attrs.evolve(sample, memory_timestamps=tuple(t - 1 for t in
                                                         sample.memory_timestamps))
    with pytest.raises(AutomrError, match="does not hold this sample's history"):
        built.view_sample(moved)


@pytest.mark.parametrize("cut", ["config", "index"])
@pytest.mark.parametrize("items", ["held", "new"])
def test_an_append_cut_while_writing_its_record_or_index_is_appended_again_once(
        backbone, dataset, built, tmp_path, monkeypatch, cut, items):
    """The index was written before the record: cut between the two, the folder held the new
    elements under the old record, and appending again added each of them a second time (ties
    with the last stored interaction are taken). The record goes first now: a cut leaves the
    old index, which the rerun grows once. With an item the memory did not hold, the rerun
    was refused (the record's titles named it, the old index not) and the folder stuck (the
    append review)."""
    from automr.data import Catalog
    from automr.data.records import Item
    from automr.memory.config import MemoryRecord

    user = built.users()[0]
    last = built.index.users[user].timestamps[-1]
    catalog = (dataset.catalog if items == "held" else
               Catalog((*dataset.catalog, Item("brand-new", "Brand New (2000)"))))
    ids = [item.id for item, _ in zip(dataset.catalog, range(2), strict=False)]
    new = [Interaction(user, item, last + 10)
           for item in (ids if items == "held" else [ids[0], "brand-new"])]
    recorded = {"dataset": dataset} if items == "held" else {}  # its fingerprint recorded
    whole = append_memory(shutil.copytree(built.folder, tmp_path / "whole"), backbone, new,
                          catalog, progress=False, **recorded)
    folder = shutil.copytree(built.folder, tmp_path / "cut")
    cls = MemoryRecord if cut == "config" else MemoryIndex
    original = cls.write

    def killed(self, where):
        raise KeyboardInterrupt

    monkeypatch.setattr(cls, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        append_memory(folder, backbone, new, catalog, progress=False, **recorded)
    monkeypatch.setattr(cls, "write", original)
    again = append_memory(folder, backbone, new, catalog, progress=False, **recorded)
    assert again.count(user) == whole.count(user) == built.count(user) + 2
    assert again.index.users[user].items == whole.index.users[user].items
    assert again.record == whole.record


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_a_bfloat16_model_with_a_float32_residual_builds_its_memory_in_bfloat16(dataset, tmp_path,
                                                                               arch):
    """Mamba's and Mamba2's residual stream stays float32 in a bfloat16 model: the build wrote
    its float32 states into bfloat16 keys and stopped (an index put of mismatched dtypes). Keys
    and token states are the model's dtype, the layer's states rounded to it."""
    from automr.llm.loading import load_model
    from automr.testing.synthetic import save_tiny_model

    loaded = load_model(str(save_tiny_model(tmp_path / "model", arch, num_layers=3)),
                        device="cpu", dtype="bfloat16")
    config = MemoryConfig(store_token_states=True)
    memory = build_memory(loaded, dataset, LAYER, config, tmp_path / "m", progress=False)
    user = sorted(memory.users())[0]
    keys = memory.view(user, memory.count(user)).keys
    assert keys.dtype == memory.token_states(user, 0).dtype == torch.bfloat16
    states = memory.token_states(user, 0)
    assert keys.dtype == states.dtype == torch.bfloat16
    encoded = LayerEncoder(Backbone.of(loaded), LAYER).encode_texts(["Alien (1979)"], True)
    assert encoded.keys.dtype == torch.float32  # the layer's states: float32
    torch.testing.assert_close(states[1:].float().mean(0), keys[0].float(), rtol=0.02, atol=0.02)


def test_a_memory_opens_on_a_device_named_as_a_model_loads(built):
    """device="auto" (load_model's and FinetunedRun.load's default) was a bare RuntimeError
    from torch, and "cuda" on a machine without CUDA was taken and failed at the first view
    with an AssertionError ('Torch not compiled with CUDA enabled')."""
    store = MemoryStore.open(built.folder, device="auto")
    assert store.device == resolve_device("auto")
    user = store.users()[0]
    assert store.view(user, 1).keys.device.type == store.device.type
    assert MemoryStore.open(built.folder, device=torch.device("cpu")).device.type == "cpu"
    with pytest.raises(AutomrError, match="unknown device 'gpu'"):
        MemoryStore.open(built.folder, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(AutomrError, match="CUDA is not available"):
            MemoryStore.open(built.folder, device="cuda")


def test_an_element_encoder_of_ones_own_gets_the_configs_window(backbone, dataset, tmp_path,
                                                                monkeypatch):
    """A kind of one's own taking a window was built with window 1 and includes_item True
    whatever MemoryConfig said (only the "window" kind was given them): the build encoded
    1-item windows, then refused its own encoder ('window': 1 vs None) once it was done."""
    import automr.memory as memory

    class Titles:
        kind, reuses_texts = "titles", False

        def __init__(self, base, catalog, window, includes):
            self.base, self.catalog, self.window, self.includes = base, catalog, window, includes

        def text(self, items, timestamps, index):
            end = index + 1 if self.includes else index
            return ", ".join(map(self.catalog.title, items[max(0, end - self.window):end])) or "-"

        def settings(self):
            return {"kind": self.kind, "window": self.window, "includes_item": self.includes}

    monkeypatch.setitem(memory.ENCODERS, "titles", memory.EncoderKind(
        "the titles of a window", lambda base, catalog, prompt, window, includes:
        Titles(base, catalog, window, includes)))
    config = MemoryConfig(encoder="titles", window=2, window_includes_item=False)
    store = build_memory(backbone, dataset, LAYER, config, tmp_path / "m", progress=False)
    assert store.record.encoder_settings() == {"kind": "titles", "window": 2,
                                               "includes_item": False}
    user = sorted(store.users())[0]
    items = store.view(user, 4).item_ids
    text = ", ".join(map(dataset.catalog.title, items[1:3]))  # element 3: items 1 and 2
    expected = memory.LayerEncoder(backbone, LAYER).encode_texts([text]).keys[0]
    torch.testing.assert_close(store.view(user, 4).keys[3], expected, rtol=1e-5, atol=1e-5)
    Titles.kind = "other"  # its settings name another kind than its ENCODERS key
    with pytest.raises(AutomrError, match="settings\\(\\) gave"):
        build_memory(backbone, dataset, LAYER, config, tmp_path / "n", progress=False)
    assert not (tmp_path / "n").exists()  # refused before anything is written


def test_appended_interactions_that_are_not_interactions_are_one_line(backbone, dataset, built,
                                                                      tmp_path):
    """A tuple for an Interaction was a raw AttributeError from the sort (the append review)."""
    folder = shutil.copytree(built.folder, tmp_path / "m")
    with pytest.raises(AutomrError, match="interactions' item argument is of type tuple"):
        append_memory(folder, backbone, [("u0", "1", 10**9)], dataset.catalog, progress=False)
