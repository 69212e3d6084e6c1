"""The configs' int fields take whole numbers and their float fields real numbers, never a
bool (``automr.checks``): ``SASRecConfig(max_epochs=True)`` trained for one epoch."""

import json
import math
import typing

import attrs
import numpy as np
import pytest

from automr.annotation import AnnotateConfig, UpperAnnotator
from automr.contexts.rella import ReLLaContext
from automr.contexts.spec import ContextSpec
from automr.data import PreparedDataset
from automr.data.prompts import PromptConfig
from automr.data.protocol import ProtocolConfig
from automr.errors import AutomrError, WrongTypeError
from automr.experiments.ablation import AblationConfig
from automr.experiments.demo import DemoConfig
from automr.experiments.eval_config import EvalConfig
from automr.grounding import ConstrainedGrounder, L2Grounder, LikelihoodGrounder
from automr.memory import MemoryConfig, Pooling
from automr.memory.config import MemoryRecord
from automr.methods import CooccurrenceMethod, GenerativeMethod, MethodOptions, PriorWeightedMethod
from automr.recommenders.finetune_config import FinetuneConfig, MemoryTraining
from automr.recommenders.sasrec import SASRec, SASRecConfig
from automr.retrievers import MLPRetriever, MLPRetrieverConfig
from automr.retrievers.training import RetrieverTrainingConfig
from automr.testing.synthetic import synthetic_dataset

# Configs built for real (beartype's check and the validators), with what they require.
CONFIGS = {AnnotateConfig: {}, ContextSpec: {"kind": "trsr"}, ProtocolConfig: {},
           AblationConfig: {}, DemoConfig: {}, EvalConfig: {}, MemoryConfig: {}, Pooling: {},
           MethodOptions: {}, FinetuneConfig: {}, MemoryTraining: {}, SASRecConfig: {},
           MLPRetrieverConfig: {"hidden_size": 8}, RetrieverTrainingConfig: {}}
# Components that need a model or a dataset to build: their fields' validators are called.
COMPONENTS = (UpperAnnotator, ReLLaContext, ConstrainedGrounder, L2Grounder, LikelihoodGrounder,
              CooccurrenceMethod, GenerativeMethod, PriorWeightedMethod)


def numeric_fields(cls: type) -> list[tuple[str, type]]:
    """``(name, int or float)`` of each init field typed int, float or either ``| None``."""
    hints = typing.get_type_hints(cls)
    return [(f.name, kind) for f in attrs.fields(cls) if f.init for kind in (int, float)
            if hints[f.name] in (kind, kind | None)]


def cases(classes, values: dict[type, tuple]) -> list:
    return [pytest.param(cls, name, value, id=f"{cls.__name__}.{name}={value!r}")
            for cls in classes for name, kind in numeric_fields(cls) for value in values[kind]]


def test_every_config_has_numeric_fields_to_check():
    assert all(numeric_fields(cls) for cls in (*CONFIGS, *COMPONENTS))


@pytest.mark.parametrize("cls, name, value", cases(CONFIGS, {int: (True, False), float: ()}))
def test_a_config_refuses_a_bool_for_an_int(cls, name, value):
    with pytest.raises(AutomrError, match=f"^{cls.__name__}: {name} must be an int, not "
                                          f"{value}$"):
        cls(**{**CONFIGS[cls], name: value})


@pytest.mark.parametrize("cls, name, value", cases(
    CONFIGS, {int: (2.0, 2.5, "3"), float: (True, "0.5")}))
def test_a_config_refuses_another_type_for_a_number(cls, name, value):
    """beartype's check of the type hints comes first where the configs have it; either way
    the refusal is automr's WrongTypeError."""
    with pytest.raises(WrongTypeError, match=name):
        cls(**{**CONFIGS[cls], name: value})


def flag_and_name_fields(cls: type) -> list[tuple[str, object]]:
    """``(name, a value of the wrong type)`` of each init field typed bool or str."""
    hints = typing.get_type_hints(cls)
    wrong = {bool: "false", str: 3}
    return [(f.name, wrong[hints[f.name]]) for f in attrs.fields(cls)
            if f.init and hints[f.name] in wrong]


@pytest.mark.parametrize("cls, name, value", [
    pytest.param(cls, name, value, id=f"{cls.__name__}.{name}={value!r}")
    for cls in CONFIGS for name, value in flag_and_name_fields(cls)])
def test_a_config_refuses_another_type_for_a_flag_or_a_name(cls, name, value):
    """``"false"`` for a flag would be taken as True by its truth value; all refusals of a
    wrong type are automr's (beartype's was its own exception, not an AutomrError; the
    public-API review)."""
    with pytest.raises(WrongTypeError, match=name):
        cls(**{**CONFIGS[cls], name: value})


@pytest.mark.parametrize("cls, name, value", cases(
    CONFIGS, {int: (), float: (0, 1, np.float32(0.5))}))
def test_a_config_takes_an_int_or_numpy_float_for_a_float_and_stores_a_float(cls, name, value):
    """As Python's typing rules allow (``weight_decay=0`` was beartype's violation); stored as
    a float, so the config saves as a float-valued one does."""
    try:
        config = cls(**{**CONFIGS[cls], name: value})
    except ValueError as error:  # a value outside the field's range, named by attrs
        assert f"'{name}' must be" in str(error)
        return
    assert type(getattr(config, name)) is float and getattr(config, name) == float(value)


@pytest.mark.parametrize("cls, name, numpy_int", cases(CONFIGS, {int: (np.int64, np.uint16),
                                                                  float: ()}))
def test_a_config_takes_a_numpy_int_for_an_int_and_stores_an_int(cls, name, numpy_int):
    """A whole number from a user's arrays (``SASRecConfig(max_epochs=np.int64(3))`` was
    beartype's violation), here the field's default or 3; stored as a Python int, so the
    config saves as JSON."""
    default = getattr(attrs.fields(cls), name).default
    whole = default if isinstance(default, int) and default >= 0 else 3
    config = cls(**{**CONFIGS[cls], name: numpy_int(whole)})
    assert type(getattr(config, name)) is int and getattr(config, name) == whole
    json.dumps(attrs.asdict(config), default=str)


def test_a_float_parameter_takes_an_int():
    """Every module's beartype takes an int for a float hint (``automr.checks.beartype``)."""
    import torch

    from automr.annotation.labels import labels

    base, with_element = -3.0, torch.tensor([-2.0, -4.0])
    assert torch.equal(labels(base, with_element, "log", temperature=1),
                       labels(base, with_element, "log", temperature=1.0))


def check(cls: type, name: str, value: object) -> None:
    """Run the field's validators as its constructor does (on an instance never initialised)."""
    field = getattr(attrs.fields(cls), name)
    field.validator(cls.__new__(cls), field, value)


@pytest.mark.parametrize("cls, name, value", cases(
    COMPONENTS, {int: (True, 2.5, "3"), float: (True, "0.5")}))
def test_a_component_refuses_a_bool_or_another_type_for_a_number(cls, name, value):
    kind = "an int" if dict(numeric_fields(cls))[name] is int else "a number"
    with pytest.raises(AutomrError, match=f"^{cls.__name__}: {name} must be {kind}, not "
                                          f"{value!r}$"):
        check(cls, name, value)


@pytest.mark.parametrize("cls", COMPONENTS)
def test_a_component_takes_numpy_numbers_and_stores_python_ones(cls):
    for name, kind in numeric_fields(cls):
        field = getattr(attrs.fields(cls), name)
        value = field.converter(np.int64(3) if kind is int else np.float32(0.5))
        assert type(value) is kind
        check(cls, name, value)


@pytest.mark.parametrize("cls", COMPONENTS)
def test_a_components_flags_refuse_another_type(cls):
    """``GenerativeMethod(exclude_seen="false")`` ranked as with True (the public-API
    review): a flag's validator, or beartype's check of the constructor, refuses it."""
    for name, value in flag_and_name_fields(cls):
        if value == "false" and not hasattr(cls.__init__, "__beartype_wrapper"):
            with pytest.raises(WrongTypeError, match=f"{name} must be a bool, not 'false'"):
                check(cls, name, value)


def tuple_fields(cls: type) -> list[tuple[str, type]]:
    """``(name, int or str)`` of each init field typed ``tuple[int, ...]`` or
    ``tuple[str, ...]``."""
    hints = typing.get_type_hints(cls)
    return [(f.name, kind) for f in attrs.fields(cls) if f.init for kind in (int, str)
            if hints[f.name] == tuple[kind, ...]]


TUPLE_FIELDS = [pytest.param(cls, name, kind, id=f"{cls.__name__}.{name}")
                for cls in CONFIGS for name, kind in tuple_fields(cls)]


def test_the_tuple_fields_are_found():
    assert {(p.values[0], p.values[1]) for p in TUPLE_FIELDS} >= {
        (EvalConfig, "ks"), (EvalConfig, "measures"), (AblationConfig, "layers"),
        (AblationConfig, "combiners"), (FinetuneConfig, "target_modules"),
        (DemoConfig, "lora_targets")}


@pytest.mark.parametrize("cls, name, kind", TUPLE_FIELDS)
def test_a_tuple_field_takes_a_list_or_a_numpy_array_and_stores_a_tuple(cls, name, kind):
    """``EvalConfig(ks=[1, 5, 10])`` and ``FinetuneConfig(target_modules=["q_proj"])`` were
    beartype's violations (a list is not a tuple), as was a numpy array of layers; the field's
    default, given as a list and as a numpy array, is stored as the tuple of Python values."""
    default = getattr(attrs.fields(cls), name).default
    for value in (list(default), np.array(default)):
        config = cls(**{**CONFIGS[cls], name: value})
        stored = getattr(config, name)
        assert type(stored) is tuple and stored == default
        assert all(type(v) is kind for v in stored)
        json.dumps(attrs.asdict(config), default=str)


@pytest.mark.parametrize("cls, name, kind", TUPLE_FIELDS)
def test_a_tuple_field_refuses_a_bare_value(cls, name, kind):
    """A string is one name, not a sequence of them (``target_modules="q_proj"`` would be six
    one-letter modules); one int is no sequence either."""
    value = getattr(attrs.fields(cls), name).default[0]
    plural = {int: "ints", str: "strings"}[kind]
    with pytest.raises(AutomrError, match=f"^{cls.__name__}: {name} must be a sequence of "
                                          f"{plural}, not {value!r}$"):
        cls(**{**CONFIGS[cls], name: value})


@pytest.mark.parametrize("cls, name, kind", TUPLE_FIELDS)
def test_a_tuple_field_refuses_a_wrong_element(cls, name, kind):
    wrong = True if kind is int else 3
    with pytest.raises(AutomrError, match=f"^{cls.__name__}: {name} must be a sequence of .*; "
                                          f"{wrong!r} is not an? (int|string)$"):
        cls(**{**CONFIGS[cls], name: (*getattr(attrs.fields(cls), name).default, wrong)})


def test_a_nan_float_is_left_to_the_fields_range():
    with pytest.raises(ValueError, match="'lr' must be > 0"):
        SASRecConfig(lr=math.nan)


def edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_saved_model_whose_config_holds_a_bool_is_named_damaged(tmp_path):
    """Its config's refusal escaped the loader's, so the message named no folder."""
    SASRec(SASRecConfig(hidden=8), n_items=5).save(tmp_path / "sasrec")
    MLPRetriever(MLPRetrieverConfig(hidden_size=8)).save(tmp_path / "mlp")
    edit_json(tmp_path / "sasrec" / "config.json", lambda d: d["config"].update(seed=True))
    edit_json(tmp_path / "mlp" / "config.json", lambda d: d["settings"].update(mlp_hidden=True))
    with pytest.raises(AutomrError, match=r"sasrec holds a damaged SASRec model \(SASRecConfig: "
                                          r"seed must be an int, not True\)"):
        SASRec.load(tmp_path / "sasrec")
    with pytest.raises(AutomrError, match=r"mlp holds a damaged .*mlp_hidden must be an int"):
        MLPRetriever.load(tmp_path / "mlp")


def memory_record(**fields) -> MemoryRecord:
    return MemoryRecord(**{
        "model_name": "m", "model_fingerprint": None, "layer": 1, "hidden_size": 8,
        "num_layers": 2, "dtype": "float32", "encoder": "item", "window": None,
        "window_includes_item": True, "pooling": Pooling(), "store_token_states": False,
        "storage_dtype": "float32", "shard_elements": 4, "share_prefix": True,
        "prompt_config": PromptConfig(), **fields})


def test_a_memory_or_dataset_config_holding_a_bool_is_named_damaged(tmp_path):
    memory_record().write(tmp_path)
    edit_json(tmp_path / "config.json", lambda d: d["pooling"].update(skip_first=True))
    with pytest.raises(AutomrError, match=r"config.json is damaged \(Pooling: skip_first must "
                                          r"be an int, not True\)"):
        MemoryRecord.read(tmp_path)
    synthetic_dataset(tmp_path)
    edit_json(tmp_path / "prepared" / "config.json",
              lambda d: d["protocol"].update(min_item_interactions=False))
    with pytest.raises(AutomrError, match=r"holds a damaged prepared dataset \(ProtocolConfig: "
                                          r"min_item_interactions must be an int, not False\)"):
        PreparedDataset.load(tmp_path / "prepared")


@pytest.mark.parametrize("cls, name, value", [
    (LikelihoodGrounder, "chunk_size", 0), (LikelihoodGrounder, "chunk_size", -1),
    (L2Grounder, "max_new_tokens", 0), (ConstrainedGrounder, "gamma", math.nan),
    (ConstrainedGrounder, "gamma", math.inf), (DemoConfig, "lr", math.nan),
    (DemoConfig, "lr", math.inf), (DemoConfig, "lr", 0.0), (DemoConfig, "layer", -1),
    (FinetuneConfig, "max_grad_norm", math.inf)])
def test_a_value_out_of_its_range_is_refused_at_construction(cls, name, value):
    """They were taken: chunk_size 0 or -1 failed in range() or torch.cat once ranking, after
    the prompts' prefill; max_new_tokens=0 ranked every prompt by the distance to " "; a NaN
    gamma made every distance NaN; DemoConfig's lr and layer were refused by FinetuneConfig
    only after the demo had prepared ML-100K and loaded the model; max_grad_norm=inf wrote
    "Infinity" into finetune.json and the run record, which strict JSON parsers refuse."""
    with pytest.raises(ValueError, match=f"'{name}' must be"):
        if cls in (DemoConfig, FinetuneConfig):
            cls(**{name: value})
        else:
            check(cls, name, value)


@pytest.mark.parametrize("name", ["layer", "hidden_size", "num_layers", "window",
                                  "shard_elements"])
def test_a_memory_record_refuses_a_bool_for_an_int(tmp_path, name):
    """build_memory(loaded, dataset, True, config) built a layer-1 memory recorded as
    "layer": true, and a config.json edited to hold true was read as 1."""
    with pytest.raises(AutomrError, match=f"^MemoryRecord: {name} must be an int, not True$"):
        memory_record(**{name: True})
    memory_record().write(tmp_path)
    edit_json(tmp_path / "config.json", lambda d: d.update({name: True}))
    with pytest.raises(AutomrError, match=f"is damaged .*{name} must be an int, not True"):
        MemoryRecord.read(tmp_path)
