"""The LoRA adapter a fine-tune trains (BIGRec's: peft's LoRA on the layers from
``lora_from_layer`` up): attaching it to a loaded model, finding where peft put it, and taking
it off again so the caller's model is as it was."""

import re

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from automr.errors import AutomrError
from automr.llm.loading import LoadedModel, one_line, without_peft_deprecation
from automr.llm.split import decoder_layers_name, layer_linear_modules, text_config
from automr.recommenders.finetune_config import FinetuneConfig


def lora_model(loaded: LoadedModel, config: FinetuneConfig) -> PeftModel:
    """``loaded.model`` with LoRA attached as ``config`` says, in eval mode (peft leaves the new
    modules in train mode, so LoRA dropout would draw from the RNG in a validation). Changes the
    model in place; the adapter's initial weights come from torch's global RNG."""
    n_layers = check_lora_layers(loaded, config)
    linear = layer_linear_modules(loaded.model, config.lora_from_layer)
    if unknown := sorted(set(config.target_modules) - set(linear)):
        raise AutomrError(f"LoRA target {', '.join(unknown)} is not a linear module of this "
                          f"model's layers; they have {', '.join(linear)}: name those to tune "
                          f"with --lora-targets (FinetuneConfig.target_modules)")
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules), task_type="CAUSAL_LM",
        layers_to_transform=list(range(config.lora_from_layer, n_layers)),
        # the decoder's layers only: a vision tower beside them (Gemma 3 4B) has layers and
        # q_proj ... of its own, which layers_to_transform's indexes also match
        exclude_modules=rf"(?!{re.escape(decoder_layers_name(loaded.model))}\.).*",
    )
    targets = ", ".join(config.target_modules)
    trainable = [parameter.requires_grad for parameter in loaded.model.parameters()]
    try:
        with without_peft_deprecation():
            model = get_peft_model(loaded.model, lora).eval()
    except ValueError as error:  # e.g. an experts' projection name (their weights are fused)
        take_lora_off(loaded.model, trainable)  # peft refuses part-way: the model as it was
        kind = text_config(loaded.model).model_type
        raise AutomrError(f"peft refused LoRA target(s) {targets} on this {kind} model: "
                          f"{one_line(error)}") from error
    if below := lora_below(model, config.lora_from_layer):
        # peft takes a mixture of experts' projection names (gate_proj, ...) as its experts'
        # fused weights too: those targets leave its target modules (peft 0.21) or join its
        # target parameters (0.22)
        chosen = model.peft_config["default"]
        experts = [name for name in config.target_modules if name not in chosen.target_modules
                   or name in (getattr(chosen, "target_parameters", None) or ())]
        advice = (f"Leave {', '.join(experts)} out of --lora-targets (peft takes "
                  f"{'it' if len(experts) == 1 else 'them'} for the experts' weights too)"
                  if experts else f"Name linear modules only with --lora-targets "
                                  f"({', '.join(linear)})")
        take_lora_off(loaded.model, trainable)  # the caller's model as it was, to try again
        raise AutomrError(
            f"LoRA target(s) {targets} put adapters below layer {config.lora_from_layer} "
            f"({', '.join(below[:3])}{', ...' if len(below) > 3 else ''}): peft adapts a "
            f"mixture of experts' weights in every layer, whatever the layers asked, and the "
            f"layers under the split must stay the base model's. {advice}")
    return model


def lora_below(model: torch.nn.Module, first_layer: int) -> list[str]:
    """The modules ``model`` holds LoRA weights in that lie below decoder layer
    ``first_layer`` or outside the layers."""
    found = set()
    inside = re.compile(rf"{re.escape(decoder_layers_name(model))}\.(\d+)\.")
    for name, _ in model.named_parameters():
        if ".lora_" in name:
            module = name.split(".lora_")[0].removeprefix("base_model.model.")
            layer = inside.match(module)
            if layer is None or int(layer.group(1)) < first_layer:
                found.add(module)
    return sorted(found)


def lora_layers(model: torch.nn.Module) -> list[int]:
    """The decoder layers ``model`` holds LoRA weights in. Fewer than were tuned where the
    targets are missing from some layers (Qwen 3.5's linear-attention layers have no
    ``q_proj``/``v_proj``: BIGRec's default targets tune one layer in four there)."""
    inside = re.compile(rf"(?:base_model\.model\.)?{re.escape(decoder_layers_name(model))}"
                        rf"\.(\d+)\..*\.lora_")
    return sorted({int(found.group(1)) for name, _ in model.named_parameters()
                   if (found := inside.match(name))})


def has_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds an adapter layer of peft's (a fine-tune's LoRA)."""
    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def take_lora_off(model: torch.nn.Module, trainable: list[bool]) -> None:
    """``model`` as it was before :func:`lora_model` injected LoRA into it, also after peft
    refused part-way: each adapted layer back to its base layer, no peft config, each weight's
    ``requires_grad`` as in ``trainable``, eval mode (its fingerprint names its base weights,
    which a grounding or another fine-tune of it then reads)."""
    while adapted := next((name for name, module in model.named_modules()
                           if isinstance(module, BaseTunerLayer)), None):
        parent, _, child = adapted.rpartition(".")
        layer = model.get_submodule(adapted)
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    vars(model).pop("peft_config", None)
    for parameter, flag in zip(model.parameters(), trainable, strict=True):
        parameter.requires_grad_(flag)
    model.eval()


def check_lora_layers(loaded: LoadedModel, config: FinetuneConfig) -> int:
    """The model's number of decoder layers, once ``config.lora_from_layer`` leaves one to tune."""
    n_layers = text_config(loaded.model).num_hidden_layers
    if config.lora_from_layer >= n_layers:
        raise AutomrError(f"lora_from_layer={config.lora_from_layer} leaves no layer to tune "
                          f"(the model has {n_layers})")
    return n_layers
