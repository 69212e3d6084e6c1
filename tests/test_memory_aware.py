"""Memory-aware fine-tuning: the training loss with a memory element is exactly the target
log-likelihood inference computes with that element, rows without one keep the plain loss,
draws are fixed by (seed, epoch, sample), and a run trains, records and resumes."""

import json

import attrs
import pytest
import torch

from automr.combiners import COMBINERS
from automr.data import tokenize_sample
from automr.errors import AutomrError
from automr.grounding.likelihood import target_log_likelihoods
from automr.llm import HFSplitLLM
from automr.llm.loading import load_model
from automr.memory import MemoryConfig, Pooling, build_memory
from automr.methods.generative import left_padded_prompts
from automr.recommenders.finetune import FinetuneConfig, batch_nll, collate, finetune
from automr.recommenders.memory_aware import MemoryInserts, MemoryTraining
from automr.retrievers import SemanticRetriever
from automr.testing.synthetic import save_tiny_model, synthetic_dataset

LAYER = 2


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory-aware")
    dataset = synthetic_dataset(root)
    loaded = load_model(str(save_tiny_model(root / "model")), device="cpu")
    memory, last = (build_memory(loaded, dataset, LAYER, MemoryConfig(
        encoder="item", store_token_states=True, pooling=Pooling(kind)), root / f"memory-{kind}",
        progress=False) for kind in ("mean", "last"))
    with_memory = [s for s in dataset.samples("train") if s.memory]
    samples = with_memory[:6]
    longest = sorted(with_memory, key=lambda s: -len(s.memory))[:6]  # the most to choose from

    def tokenize(chosen):
        return [tokenize_sample(loaded.tokenizer, s, dataset.catalog, dataset.prompt_config)
                for s in chosen]

    return {"root": root, "dataset": dataset, "loaded": loaded, "memory": memory,
            "last": last, "samples": samples, "examples": tokenize(samples),
            "longest": longest, "longest_examples": tokenize(longest)}


def inserts(space, store=None, samples=None, examples=None, **spec) -> MemoryInserts:
    return MemoryInserts(store or space["memory"], MemoryTraining(**spec),
                         samples or space["samples"],
                         [len(ex.prompt_ids) for ex in examples or space["examples"]], seed=3)


def closest_elements(llm, store, samples, examples, whole: bool = False) -> list[int]:
    """Computed plainly: each prompt alone (``whole``: with its target) through the lower
    half, pooled as the memory's record says, and the element of its memory with the highest
    (uncentred) cosine."""
    chosen = []
    for sample, example in zip(samples, examples, strict=True):
        ids = torch.tensor([example.input_ids if whole else example.prompt_ids])
        with torch.no_grad():
            state = llm.lower(ids, torch.ones_like(ids), LAYER)
        query = store.record.pooling(state.hidden, torch.ones_like(ids, dtype=torch.bool))
        keys, mask = store.padded_keys([store.request_for(sample)])
        scores = SemanticRetriever().scores(query.to(keys.dtype), keys, mask)
        chosen.append(int(scores[0].argmax()))
    return chosen


@pytest.mark.parametrize("combiner", ["concat", "prepend-token"])
@pytest.mark.parametrize(("retrieval", "pooling"),
                         [("random", "mean"), ("semantic", "mean"), ("semantic", "last")])
def test_training_loss_is_the_inference_likelihood_with_the_same_element(space, combiner,
                                                                         retrieval, pooling):
    store = space["memory"] if pooling == "mean" else space["last"]
    samples, examples = space["samples"], space["examples"]
    if retrieval == "semantic":
        samples, examples = space["longest"], space["longest_examples"]
    memory = inserts(space, store, samples, examples, share=1.0, retrieval=retrieval,
                     combiner=combiner)
    loaded = space["loaded"]
    llm = HFSplitLLM(loaded.model)
    indices = list(range(len(examples)))
    batch = attrs.evolve(collate(examples, loaded.tokenizer.pad_token_id),
                         insert=memory.insert(indices, epoch=0))
    with torch.no_grad():
        nll, _ = batch_nll(llm, batch, LAYER)
    # inference: the prompt alone through the lower half, the same element joined before it
    # (chosen from the prompt's own states for semantic), the target teacher-forced after both
    requests = [store.request_for(s) for s in samples]
    elements = [memory.drawn(i, 0)[1] for i in indices]
    if retrieval == "semantic":
        elements = closest_elements(llm, store, samples, examples)
        if pooling == "last":  # seeing the target would change some pick: the check has teeth
            assert closest_elements(llm, store, samples, examples, whole=True) != elements
        with torch.no_grad():
            state = llm.lower(batch.input_ids, batch.mask, LAYER)
        assert memory._elements(state, requests, [(True, 0)] * len(indices),
                                [len(ex.prompt_ids) for ex in examples]) == elements
    ids, mask = left_padded_prompts(loaded, space["dataset"], samples)
    targets = [ex.input_ids[len(ex.prompt_ids):] for ex in examples]

    def inference_nll(elements):
        tokens = memory._tokens(requests, elements, COMBINERS[combiner]())
        return -float(target_log_likelihoods(
            llm, ids, mask, LAYER, targets,
            insert=lambda state: COMBINERS[combiner]().combine(state, tokens)).sum())

    # the tiny model's summed NLL (~350) moves by ~1e-3 with memory, so a relative tolerance
    # would let any element pass: an absolute one, which another element or none misses
    assert float(nll) == pytest.approx(inference_nll(elements), rel=0, abs=1.5e-4)
    others = [(e + 1) % len(s.memory) for e, s in zip(elements, samples, strict=True)]
    assert others != elements
    for wrong in (others, [-1] * len(elements)):
        assert abs(float(nll) - inference_nll(wrong)) > 2.5e-4


def test_rows_without_an_element_keep_the_plain_loss(space):
    loaded, examples = space["loaded"], space["examples"]
    llm = HFSplitLLM(loaded.model)
    memory = inserts(space, share=0.5)
    draws = [memory.drawn(i, 0)[0] for i in range(len(examples))]
    assert any(draws) and not all(draws)  # this seed mixes both kinds of rows
    plain = collate(examples, loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        with_memory = [float(batch_nll(llm, attrs.evolve(collate([ex], 0), insert=memory.insert(
            [i], 0)), LAYER)[0]) for i, ex in enumerate(examples)]
        without = [float(batch_nll(llm, collate([ex], 0), LAYER)[0]) for ex in examples]
        batched = float(batch_nll(llm, attrs.evolve(plain, insert=memory.insert(
            range(len(examples)), 0)), LAYER)[0])
    for drawn, a, b in zip(draws, with_memory, without, strict=True):
        assert (a != pytest.approx(b, abs=1e-6)) if drawn else a == pytest.approx(b, abs=1e-5)
    assert batched == pytest.approx(sum(with_memory), rel=1e-4)


def test_draws_depend_on_seed_epoch_and_sample_only(space):
    memory = inserts(space, share=0.5)
    again = inserts(space, share=0.5)
    assert [memory.drawn(i, 1) for i in range(6)] == [again.drawn(i, 1) for i in range(6)]
    epochs = {tuple(memory.drawn(i, epoch) for i in range(6)) for epoch in range(4)}
    assert len(epochs) > 1


def test_append_token_cannot_be_trained():
    with pytest.raises(ValueError):
        MemoryTraining(combiner="append-token")


@pytest.mark.parametrize("kind", ["rella", "trsr"])
def test_a_prompt_context_and_memory_are_not_trained_together(kind, tmp_path):
    """`finetune --context rella --memory M` trained with memory a run that is only ever
    evaluated as rella:*, whose methods read no memory (taken without a word)."""
    from typer.testing import CliRunner

    from automr.cli.main import app
    from automr.contexts.spec import ContextSpec

    with pytest.raises(ValueError, match=f"--memory with --context {kind}: .* read no memory"):
        FinetuneConfig(context=ContextSpec(kind=kind), memory=MemoryTraining())
    result = CliRunner().invoke(app, [
        "finetune", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out"),
        "--context", kind, "--memory", str(tmp_path / "memory"), "--lora-from-layer", "1"])
    assert result.exit_code == 2 and "read no memory" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_memory_aware_finetune_trains_records_and_checks_its_memory(space):
    config = FinetuneConfig(max_train_samples=16, max_valid_samples=4, batch_size=4, epochs=1,
                            eval_every=2, lora_from_layer=LAYER,
                            memory=MemoryTraining(share=0.5))
    out = space["root"] / "run"
    record = finetune(space["loaded"], space["dataset"], out, config, progress=False,
                      memory=space["memory"])
    assert record["config"]["memory"] == {"share": 0.5, "retrieval": "random",
                                          "combiner": "concat"}
    assert record["memory"]["layer"] == LAYER
    assert json.loads((out / "finetune.json").read_text())["step"] == 4
    loaded = load_model(str(space["root"] / "model"), device="cpu")
    with pytest.raises(AutomrError, match="--lora-from-layer 2"):
        finetune(loaded, space["dataset"], space["root"] / "other",
                 attrs.evolve(config, lora_from_layer=1), progress=False, memory=space["memory"])
    with pytest.raises(AutomrError, match="--memory"):
        finetune(loaded, space["dataset"], space["root"] / "other", config, progress=False)



@pytest.mark.parametrize("retrieval", ["random", "semantic"])
def test_only_the_rows_drawn_are_given_an_element(space, retrieval):
    loaded, examples = space["loaded"], space["examples"]
    memory = inserts(space, share=0.5, retrieval=retrieval)
    draws = [memory.drawn(i, 0) for i in range(len(examples))]
    assert any(chosen for chosen, _ in draws) and not all(chosen for chosen, _ in draws)
    batch = collate(examples, loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        state = HFSplitLLM(loaded.model).lower(batch.input_ids, batch.mask, LAYER)
    requests = [space["memory"].request_for(s) for s in space["samples"]]
    elements = memory._elements(state, requests, draws, [len(ex.prompt_ids) for ex in examples])
    assert [element >= 0 for element in elements] == [chosen for chosen, _ in draws]


def test_random_draws_reach_every_element_of_the_memory(space):
    memory = inserts(space, share=1.0)
    for index, sample in enumerate(space["samples"]):
        drawn = {memory.drawn(index, epoch)[1] for epoch in range(300)}
        assert drawn == set(range(len(sample.memory)))


def test_concat_training_is_refused_a_memory_without_token_states_at_once(space, tmp_path):
    store = build_memory(space["loaded"], space["dataset"], LAYER, MemoryConfig(
        encoder="item", store_token_states=False), tmp_path / "mem", progress=False)
    with pytest.raises(AutomrError, match="--store-token-states"):
        inserts(space, store, share=1.0, combiner="concat")
    inserts(space, store, share=1.0, combiner="prepend-token")  # pooled keys: no token states


def test_a_row_not_drawn_gets_no_element_beside_one_drawn(space):
    """In a batch mixing both kinds of rows, a row not drawn keeps its plain loss exactly
    (its memory row masked), the drawn one gets its element: the pair's loss is the sum."""
    loaded, examples = space["loaded"], space["examples"]
    llm = HFSplitLLM(loaded.model)
    memory = inserts(space, share=0.5)
    draws = [memory.drawn(i, 0)[0] for i in range(len(examples))]
    drawn, missed = draws.index(True), draws.index(False)
    with torch.no_grad():
        alone = float(batch_nll(llm, attrs.evolve(collate([examples[drawn]], 0),
                                                  insert=memory.insert([drawn], 0)), LAYER)[0])
        plain = float(batch_nll(llm, collate([examples[missed]], 0), LAYER)[0])
        pair = float(batch_nll(llm, attrs.evolve(
            collate([examples[drawn], examples[missed]], loaded.tokenizer.pad_token_id),
            insert=memory.insert([drawn, missed], 0)), LAYER)[0])
    assert pair == pytest.approx(alone + plain, abs=2e-4)


@pytest.mark.parametrize("share", [0.2, 1.0])
def test_the_share_is_the_fraction_of_examples_drawn(space, share):
    memory = inserts(space, share=share)
    draws = [memory.drawn(i, epoch)[0] for i in range(6) for epoch in range(50)]
    assert sum(draws) / len(draws) == pytest.approx(share, abs=0.08)


def test_inserted_token_states_are_the_drawn_element_of_the_samples_own_memory(space):
    """``concat`` inserts the token states of the element drawn from the sample's memory,
    which starts past the user's first interaction once the history outgrows max_history:
    pooled as the memory pools them, they are that element's key."""
    store = space["memory"]
    samples = [s for s in space["dataset"].samples("test") if store.request_for(s)[2] > 0][:4]
    assert samples  # the check needs memories that do not start at the timeline's start
    memory = MemoryInserts(store, MemoryTraining(share=1.0, combiner="concat"), samples,
                           [1] * len(samples), seed=3)
    requests = [store.request_for(s) for s in samples]
    elements = [memory.drawn(i, 0)[1] for i in range(len(samples))]
    tokens = memory._tokens(requests, elements, COMBINERS["concat"]())
    keys, _ = store.padded_keys(requests)
    torch.testing.assert_close(store.record.pooling(tokens.hidden, tokens.mask),
                               keys[torch.arange(len(samples)), torch.tensor(elements)])


def test_memory_aware_finetune_refuses_a_memory_of_another_dataset(space):
    """The same interactions in another prompt domain: every history matches, so only the
    memory's recorded dataset tells them apart (its window elements are other prompts)."""
    from automr.data import PreparedDataset, prepare_csv
    from automr.testing.synthetic import SYNTHETIC_PROTOCOL

    raw, other = space["root"] / "raw", space["root"] / "movies"
    if not other.exists():
        prepare_csv(raw / "interactions.csv", raw / "items.csv", other,
                    protocol=SYNTHETIC_PROTOCOL, domain="movies")
    config = FinetuneConfig(max_train_samples=4, max_valid_samples=2, batch_size=4,
                            eval_every=1, lora_from_layer=LAYER, memory=MemoryTraining())
    out = space["root"] / "other-dataset"
    with pytest.raises(AutomrError, match="built from another dataset"):
        finetune(load_model(str(space["root"] / "model"), device="cpu"),
                 PreparedDataset.load(other), out, config, progress=False,
                 memory=space["memory"])
    assert not out.exists()


def test_a_memory_aware_run_resumes_only_with_the_memory_it_began_with(
        space, cut_at_first_checkpoint):
    """Cut after its first checkpoint, the run goes on with its own memory (also from a
    checkpoint of a version that recorded no digest), never with another one of the same
    model, layer and encoder (here pooled otherwise: other semantic picks)."""
    config = FinetuneConfig(max_train_samples=8, max_valid_samples=2, batch_size=4,
                            eval_every=1, lora_from_layer=LAYER,
                            memory=MemoryTraining(retrieval="semantic"))
    out = space["root"] / "resumed-memory"
    model = str(space["root"] / "model")
    with cut_at_first_checkpoint():
        finetune(load_model(model, device="cpu"), space["dataset"], out, config, progress=False,
                 memory=space["memory"])
    with pytest.raises(AutomrError, match=r"other settings \(memory\.digest was"):
        finetune(load_model(model, device="cpu"), space["dataset"], out, config,
                 progress=False, memory=space["last"])
    state_file = out / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    del state["memory"]["digest"]
    state_file.write_text(json.dumps(state))
    record = finetune(load_model(model, device="cpu"), space["dataset"], out, config,
                      progress=False, memory=space["memory"])
    assert record["step"] == 2


def test_validation_joins_memory_at_layer_l_with_or_without_the_lower_cache(space):
    """Without the lower cache the validation NLL is the cached one: the element joins the
    layer-L states, not the embeddings (which moved every validation NLL and best/)."""
    config = FinetuneConfig(max_train_samples=8, max_valid_samples=4, batch_size=4,
                            eval_every=1, lora_from_layer=LAYER,
                            memory=MemoryTraining(share=1.0))
    model = str(space["root"] / "model")
    records = [finetune(load_model(model, device="cpu"), space["dataset"],
                        space["root"] / f"cache-{cache}", attrs.evolve(config, cache_lower=cache),
                        progress=False, memory=space["memory"]) for cache in (True, False)]
    cached, plain = ([r["initial_valid_nll"], *(e["valid_nll"] for e in r["evaluations"])]
                     for r in records)
    assert plain == pytest.approx(cached, abs=1e-5)


@pytest.mark.parametrize("combiner", ["concat", "prepend-token"])
@pytest.mark.parametrize("retrieval", ["random", "semantic"])
def test_the_joined_memory_is_visible_exactly_in_the_rows_drawn(space, combiner, retrieval):
    """In a batch mixing both kinds of rows, the insert joins unmasked memory to each drawn
    row (its element's tokens for concat, one key for prepend-token) and only masked slots to
    the others: checked on the states themselves, as the tiny model's loss barely moves."""
    loaded, examples, store = space["loaded"], space["examples"], space["memory"]
    memory = inserts(space, share=0.5, retrieval=retrieval, combiner=combiner)
    draws = [memory.drawn(i, 0)[0] for i in range(len(examples))]
    assert any(draws) and not all(draws)
    batch = collate(examples, loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        state = HFSplitLLM(loaded.model).lower(batch.input_ids, batch.mask, LAYER)
    insert = memory.insert(range(len(examples)), 0)
    assert insert is not None
    joined = insert(state)
    added = (joined.mask.sum(1) - state.mask.sum(1)).tolist()
    requests = [store.request_for(s) for s in space["samples"]]
    every = [(True, memory.drawn(i, 0)[1]) for i in range(len(examples))]  # each row's pick
    elements = memory._elements(state, requests, every, [len(ex.prompt_ids) for ex in examples])
    sizes = [len(store.token_states(user, start + element)) if combiner == "concat" else 1
             for (user, _, start), element in zip(requests, elements, strict=True)]
    assert added == [size if drawn else 0 for drawn, size in zip(draws, sizes, strict=True)]


def test_memory_aware_finetune_joins_each_batch_its_own_draw(space, monkeypatch):
    """Every training batch is joined the draw of its own examples with the run's seed and
    the step's epoch, every validation batch the validation examples' draw of epoch 0 (the
    tiny model's losses barely tell: each call is checked instead)."""
    import automr.recommenders.finetune as finetune_module

    calls = []
    plain = finetune_module.with_memory

    def spy(batch, memory, indices, epoch):
        calls.append((batch, memory, list(indices), epoch))
        return plain(batch, memory, indices, epoch)

    monkeypatch.setattr(finetune_module, "with_memory", spy)
    config = FinetuneConfig(max_train_samples=4, max_valid_samples=4, batch_size=2, epochs=2,
                            eval_every=2, lora_from_layer=LAYER, seed=5,
                            memory=MemoryTraining(share=0.5))
    finetune(load_model(str(space["root"] / "model"), device="cpu"), space["dataset"],
             space["root"] / "wired", config, progress=False, memory=space["memory"])
    dataset, tokenizer = space["dataset"], space["loaded"].tokenizer
    valid = {s.id for s in dataset.samples("valid")}
    train_epochs, valid_calls = [], 0
    for batch, memory, indices, epoch in calls:
        assert memory is not None and memory.seed == 5
        for row, index in enumerate(indices):  # the draw is the batch's own examples'
            ids = tokenize_sample(tokenizer, memory.samples[index], dataset.catalog,
                                  dataset.prompt_config).input_ids
            assert batch.input_ids[row, : len(ids)].tolist() == list(ids)
        if memory.samples[0].id in valid:
            valid_calls += 1
            assert epoch == 0
        else:
            train_epochs.append(epoch)
    assert train_epochs == [0, 0, 1, 1]  # 2 steps of one batch per epoch
    assert valid_calls == 6  # 2 batches, before training and after steps 2 and 4


def test_a_bfloat16_memory_trains_with_rows_without_an_element(tmp_path):
    """An example drawn no element got a float32 [0, hidden] row beside the memory's bfloat16
    token states: pad_memory refused the batch (and, such a row first, made it float32)."""
    dataset = synthetic_dataset(tmp_path / "data")
    loaded = load_model(str(save_tiny_model(tmp_path / "model")), device="cpu",
                        dtype="bfloat16")
    store = build_memory(loaded, dataset, 2, MemoryConfig(encoder="item", store_token_states=True),
                         tmp_path / "memory", progress=False)
    record = finetune(loaded, dataset, tmp_path / "ft", FinetuneConfig(
        max_train_samples=16, max_valid_samples=4, batch_size=4, lora_from_layer=2,
        memory=MemoryTraining(share=0.5, combiner="concat")), progress=False, memory=store)
    assert record["step"] == 4
