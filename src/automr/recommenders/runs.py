"""A finished fine-tune (``automr finetune``'s run folder) as one object.

Opening, the record it wrote, loading the tuned model and every compatibility check against
it (memory built with its base model and below its LoRA layers) live here, once.
"""

import hashlib
from pathlib import Path
from typing import Any

import attrs
from beartype.roar import BeartypeCallHintViolation

from automr.contexts.spec import ContextSpec
from automr.devices import keeping_rng
from automr.errors import AutomrError
from automr.llm.loading import (
    FINGERPRINT_CHANGE,
    LoadedModel,
    files_fingerprint,
    load_model,
    weight_files,
    without_peft_deprecation,
)
from automr.memory import MemoryStore
from automr.paths import home_path
from automr.storage import read_json, read_safetensors

RESULT_FILE = "finetune.json"
"""Written by a fine-tune when it finishes; its presence marks a usable run folder."""
ADAPTER_DIR = "best"
"""The adapter with the best validation loss (peft's folder layout)."""
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@attrs.frozen
class FinetunedRun:
    """A finished fine-tune folder: ``finetune.json`` + ``best/`` (the LoRA adapter)."""

    path: Path
    record: dict[str, Any] = attrs.field(repr=False)

    @classmethod
    def open(cls, path: Path | str) -> "FinetunedRun":
        """The finished fine-tune in ``path`` (``automr finetune --out``): its
        ``finetune.json`` read and checked; a folder without one (unfinished, or not a
        fine-tune) is an :class:`~automr.errors.AutomrError`. Nothing is loaded yet
        (:meth:`load`)."""
        path = home_path(path)
        if not (path / RESULT_FILE).exists():
            raise AutomrError(f"{path} is not a finished fine-tune (no {RESULT_FILE}); run "
                              f"`automr finetune` first")
        record = read_json(path / RESULT_FILE, "`automr finetune`")
        if not isinstance(record, dict) or not {"model", "model_fingerprint", "config"} <= set(
                record) or not isinstance(record["config"], dict):
            raise AutomrError(f"{path / RESULT_FILE} is not a fine-tune record; run "
                              f"`automr finetune` again")
        wrong = [key for key in ("model", "model_fingerprint")
                 if not isinstance(record[key], str)]
        if wrong:  # edited by hand: raw TypeErrors where the base model is looked up
            raise AutomrError(f"{path / RESULT_FILE} is damaged ({wrong[0]} is "
                              f"{record[wrong[0]]!r}, not a string); run `automr finetune` "
                              f"again")
        run = cls(path, record)
        run.context  # noqa: B018  read here: a damaged one is refused with the record
        return run

    @property
    def base_model(self) -> str:
        """The base model's hub id or folder's absolute path (runs of older automr versions
        recorded a folder as typed to ``automr finetune --model``)."""
        return self.record["model"]

    @property
    def base_fingerprint(self) -> str:
        """Fingerprint of the base model the adapter was trained on."""
        return self.record["model_fingerprint"]

    @property
    def lora_from_layer(self) -> int:
        """The lowest layer the adapter changes: layers below it equal the base model's."""
        return int(self.record["config"]["lora_from_layer"])

    @property
    def context(self) -> ContextSpec | None:
        """The prompt context it was trained with (None: the plain BIGRec prompt)."""
        data = self.record["config"].get("context")
        if data is None:
            return None
        try:
            if not isinstance(data, dict):
                raise TypeError(f"not a dict: {data!r}")
            return ContextSpec.from_json(data)
        except (TypeError, ValueError, AutomrError, BeartypeCallHintViolation) as error:
            reason = error.args[0] if error.args else error
            raise AutomrError(f"{self.path / RESULT_FILE} records a context automr cannot read "
                              f"({reason}); run `automr finetune` again") from None

    def load(self, device: str = "auto", dtype: str = "auto",
             cache_dir: Path | str | None = None) -> LoadedModel:
        """The base model with the best adapter attached (eval mode)."""
        from peft import PeftModel

        folder = home_path(self.base_model)
        if folder.is_absolute() and not folder.is_dir():
            raise AutomrError(f"the base model folder {folder} recorded in "
                              f"{self.path / RESULT_FILE} is missing; put the model back there")
        base = load_model(self.base_model, device=device, dtype=dtype, cache_dir=cache_dir)
        self._refuse_other_base(base.fingerprint())  # the same whatever dtype is used
        fingerprint = self.fingerprint()  # a missing or damaged adapter is one line first
        damaged = (f"the adapter of {self.path} is damaged: fine-tune again into a new "
                   f"--out")
        read_json(self.path / ADAPTER_DIR / ADAPTER_CONFIG, f"`automr finetune` ({damaged})")
        try:
            with without_peft_deprecation(), keeping_rng():  # peft draws the
                model = PeftModel.from_pretrained(  # adapter's initial weights first
                    base.model, self.path / ADAPTER_DIR).eval()
        except (KeyError, TypeError, ValueError, RuntimeError) as error:  # JSON, not peft's
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise AutomrError(f"{self.path / ADAPTER_DIR / ADAPTER_CONFIG} or its weights do "
                              f"not make a LoRA adapter of this model ({reason}); "
                              f"{damaged}") from None
        return LoadedModel(model=model, tokenizer=base.tokenizer, name=f"{base.name}+lora",
                           fingerprint=fingerprint, base_fingerprint=self.base_fingerprint,
                           tuned_from_layer=self.lora_from_layer)

    def check_base(self, cache_dir: Path | str | None = None) -> None:
        """Refuse a base model folder whose files are no longer the ones the adapter was tuned
        on, from their digests (no weight is loaded): results of this run saved before must
        not be read back beside another model's. A hub id or the embedded default is checked
        when loaded."""
        folder = home_path(self.base_model)
        files = weight_files(folder) if folder.is_dir() else ()
        if files and all(file.is_file() for file in files):
            self._refuse_other_base(files_fingerprint(folder, files, cache_dir))

    def _refuse_other_base(self, found: str) -> None:
        if found != self.base_fingerprint:
            raise AutomrError(f"the base model {self.base_model!r} found here (fingerprint "
                              f"{found[:12]}) differs from the one {self.path} was tuned on "
                              f"({self.base_fingerprint[:12]}). {FINGERPRINT_CHANGE}")

    def fingerprint(self) -> str:
        """The tuned model's fingerprint: its base model's and its adapter's bytes (read from
        disk each time, so a fine-tune made again in this folder has another)."""
        from automr.cache import sha256_of

        weights = self.path / ADAPTER_DIR / ADAPTER_WEIGHTS
        read_safetensors(weights, f"`automr finetune` (the adapter of {self.path} is damaged: "
                                  f"fine-tune again into a new --out)")
        adapter = sha256_of(weights)
        return hashlib.sha256(f"{self.base_fingerprint}+{adapter}".encode()).hexdigest()

    def check_dataset(self, dataset: Any, fingerprint: str | None = None) -> None:
        """Refuse ``dataset`` (a :class:`~automr.data.PreparedDataset`; ``fingerprint``: its
        fingerprint, when already computed) if this run was tuned on another one."""
        tuned_on = self.record.get("data_fingerprint")
        if tuned_on is None:  # a record of an automr version that did not write it
            return
        if fingerprint is None:
            from automr.data.fingerprint import dataset_fingerprint

            fingerprint = dataset_fingerprint(dataset)
        if tuned_on != fingerprint:
            data = dataset.path or "this one"
            raise AutomrError(f"the fine-tune in {self.path} was tuned on another dataset than "
                              f"{data} (other data, prompt domain, protocol or catalog); "
                              f"fine-tune on this dataset with `automr finetune`")

    def check_plain(self) -> None:
        """Refuse a ReLLa/TRSR baseline's fine-tune where AutoMR's plain BIGRec prompt is
        used (annotation): it was tuned on prompts that carry a context."""
        if self.context is not None:
            raise AutomrError(f"{self.path} was fine-tuned with a {self.context.kind} context "
                              f"(a baseline's); AutoMR uses the plain BIGRec prompt: give "
                              f"--finetuned a fine-tune without --context")

    def check_memory(self, memory_fingerprint: str | None, layer: int) -> None:
        """Refuse layer-``layer`` keys the tuned model's lower half would not reproduce.

        The memory must be built with this run's base model, and the adapter must only touch
        layers >= L (``--lora-from-layer L``), so the tuned lower half equals the base one.
        """
        if memory_fingerprint != self.base_fingerprint:
            raise AutomrError(
                f"the memory was built with another model (fingerprint "
                f"{str(memory_fingerprint)[:12]}) than the base of the fine-tune in {self.path} "
                f"({self.base_fingerprint[:12]}); build it with --model {self.base_model}. "
                f"{FINGERPRINT_CHANGE}")
        if self.lora_from_layer < layer:
            raise AutomrError(
                f"the memory holds layer-{layer} keys of the base model, but the fine-tune in "
                f"{self.path} changes layers {self.lora_from_layer}..{layer - 1} below it; "
                f"fine-tune with --lora-from-layer {layer} or build the memory at layer "
                f"{self.lora_from_layer}")

    def open_memory(self, memory: Path | str, device: str = "cpu") -> MemoryStore:
        """The memory folder ``memory``, checked to be usable with this fine-tune
        (:meth:`check_memory`), its keys returned on ``device`` (``auto``, ``cpu``, ``mps``,
        ``cuda[:N]``, as :meth:`load` takes it). Opened without an encoder:
        token states it does not store are not recomputed (see
        :class:`~automr.memory.MemoryConfig`)."""
        store = MemoryStore.open(memory, device=device)
        self.check_memory(store.record.model_fingerprint, store.layer)
        return store
