"""The fine-tune's optimizer step on one process or data-parallel (DDP), with mixed precision.

:class:`StepRunner` runs one optimizer step over this process's micro-batches. Under a launcher
(:mod:`automr.distributed`) the trainable model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`, through a module whose ``forward`` is the
batch's summed NLL (the split runs inside it, so DDP sees every forward): each process scores
its share of the effective batch, divides by the token count of the *whole* effective batch
and scales by the number of processes (DDP averages gradients), so the step is the one a
single process takes on the whole batch. Micro-batches before a process's last one run under
``no_sync`` (gradients are reduced once per step). Only the adapter's parameters are trainable
and every one of them is used by every forward (LoRA sits on the upper layers the loss runs
through), so ``find_unused_parameters`` stays off.

``autocast``: ``bf16`` or ``fp16`` runs the forward under :func:`torch.autocast` (weights and
optimizer stay in their dtype); ``fp16`` scales the loss with a
:class:`torch.amp.GradScaler` (its state is part of a checkpoint).
"""

from collections.abc import Sequence
from contextlib import nullcontext

import attrs
import torch

from automr import distributed
from automr.llm.split import HFSplitLLM
from automr.recommenders.finetune_config import AUTOCAST_KINDS
from automr.state import LayerState

AUTOCAST = dict(zip(AUTOCAST_KINDS, (torch.bfloat16, torch.float16), strict=True))
"""The dtype of each ``FinetuneConfig.autocast`` choice."""


class NLLModule(torch.nn.Module):
    """``forward(batch, state)``: the summed NLL of a batch's scored tokens through the split
    (what DDP wraps)."""

    def __init__(self, model: torch.nn.Module, layer: int) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.llm = HFSplitLLM(model)

    def forward(self, batch, state: LayerState | None) -> torch.Tensor:
        from automr.recommenders.finetune import batch_nll

        nll, _ = batch_nll(self.llm, batch, self.layer, state)
        return nll


@attrs.define(eq=False)
class StepRunner:
    """Runs optimizer steps of ``module`` (an :class:`NLLModule`, DDP-wrapped when several
    processes take part)."""

    module: torch.nn.Module
    device: torch.device
    autocast: str | None = None
    scaler: "torch.amp.GradScaler | None" = None

    @classmethod
    def build(cls, model: torch.nn.Module, layer: int, autocast: str | None = None
              ) -> "StepRunner":
        """The runner of ``model`` (its trainable parameters are the ones stepped)."""
        device = next(model.parameters()).device
        module: torch.nn.Module = NLLModule(model, layer)
        if distributed.init():
            import inspect

            from torch.nn.parallel import DistributedDataParallel

            # no buffer is synced in forward (rotary tables, equal in every process); torch
            # 2.13 renamed the flag and warns in every process on the old name
            sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
                DistributedDataParallel).parameters else "broadcast_buffers")
            module = DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=False, **{sync: False})
        scaler = torch.amp.GradScaler(device.type) if autocast == "fp16" else None
        return cls(module, device, autocast, scaler)

    @property
    def parallel(self) -> bool:
        return isinstance(self.module, torch.nn.parallel.DistributedDataParallel)

    def precision(self):
        """The autocast context of a forward (none without ``autocast``)."""
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST[self.autocast])

    def step(self, micro_batches: Sequence[tuple[object, LayerState | None]], count: int,
             optimizer: torch.optim.Optimizer, lr: float, max_grad_norm: float | None = None,
             weight: float = 1.0) -> float:
        """Accumulate the gradient of ``sum(NLL) / count`` over ``micro_batches`` (this
        process's share; ``count``: scored tokens of the whole effective batch; ``weight`` 0
        for a process with no share, which still takes part in the reduction), clip, step.
        Returns the whole effective batch's mean NLL."""
        scale = weight * distributed.world_size()
        total = 0.0
        for position, (batch, state) in enumerate(micro_batches):
            last = position == len(micro_batches) - 1
            sync = nullcontext() if last or not self.parallel else self.module.no_sync()
            with sync:
                with self.precision():
                    nll = self.module(batch, state)
                loss = nll.float() / count * scale
                (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            total += weight * float(nll.detach())
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        (total,) = distributed.all_sum([total])
        return total / count
