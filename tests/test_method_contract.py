"""Every method kind the CLI builds passes :class:`MethodContract` on a tiny model: the same
ranks whatever else is in the call (evaluate ranks in shards, the LM methods in padded
batches of 3 here), in any order, on a repeat."""

import attrs
import pytest

import automr
from automr.memory import MemoryConfig, build_memory
from automr.methods import Artifacts, MethodOptions, Workspace, build_method
from automr.recommenders.finetune import FinetuneConfig, finetune
from automr.retrievers import build_retriever
from automr.testing.contracts import MethodContract
from automr.testing.synthetic import synthetic_dataset

KINDS = ["pop", "cooc", "sasrec", "base:l2", "bigrec:constrained", "bigrec:l2",
         "bigrec:l2-pop", "automr:constrained", "random:l2", "semantic:constrained"]


@pytest.fixture(scope="module")
def space(tmp_path_factory, writing_model) -> Workspace:
    root = tmp_path_factory.mktemp("contract")
    dataset = synthetic_dataset(root)
    model = str(writing_model(root / "model"))  # its L2 texts differ per sample
    finetune(automr.load_model(model, device="cpu"), dataset, root / "ft",
             FinetuneConfig(max_train_samples=8, max_valid_samples=4, batch_size=4,
                            lora_from_layer=2), progress=False)
    store = build_memory(automr.load_model(model, device="cpu"), dataset, 2,
                         MemoryConfig(encoder="item", store_token_states=True), root / "mem",
                         progress=False)
    build_retriever("mlp", store.hidden_size, seed=0).save(root / "ret")
    artifacts = Artifacts(model=model, finetuned=root / "ft", memory=root / "mem",
                          retriever=root / "ret")
    options = MethodOptions(batch_size=3, num_beams=3, layer=2, tune_samples=4)
    return Workspace(dataset=dataset, artifacts=artifacts, options=options, device="cpu",
                     progress=False)


@pytest.mark.parametrize("kind", KINDS)
class TestEveryMethodKind(MethodContract):
    @pytest.fixture
    def method(self, space, kind):
        self.n_items = len(space.dataset.catalog)
        return build_method(kind, space)

    @pytest.fixture
    def samples(self, space):
        return space.dataset.samples("test")[:7]


def test_a_method_without_a_dataset_is_told_to_set_n_items():
    """The Method Protocol does not require ``dataset``; the contract says what to set."""
    from automr.testing.contracts import MethodContract

    class Bare:
        @property
        def settings(self) -> dict:
            return {}

        def rank(self, samples):
            return [0 for _ in samples]

    with pytest.raises(AssertionError, match="set n_items"):
        MethodContract()._catalog_size(Bare())


@pytest.mark.parametrize("kind", ["bigrec:l2", "random:l2"])
def test_l2_texts_do_not_depend_on_the_batch_they_were_generated_in(space, kind):
    """The contract's repeats of an L2 method measure the texts its first call generated
    (kept per sample): here each call is a fresh workspace's method, which generates again,
    in other padded batches."""
    samples = space.dataset.samples("test")[:7]

    def fresh(chunk):
        method = build_method(kind, attrs.evolve(space))
        ranks = method.rank(chunk)
        generated = method.details()["generated"]
        return ranks, [generated[s.id] for s in chunk]

    whole, texts = fresh(samples)
    assert len(set(texts)) > len(samples) // 2  # else whose text is whose shows little
    assert fresh(samples[::-1]) == (whole[::-1], texts[::-1])
    assert fresh(samples[1:5]) == (whole[1:5], texts[1:5])
