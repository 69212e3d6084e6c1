"""Where tensors go: a device named as every automr command and loader takes it (``auto``,
``cpu``, ``mps``, ``cuda[:N]``), checked to exist here. Light (torch alone), so memories,
retrievers and SASRec resolve devices without loading transformers."""

import contextlib
import re
from collections.abc import Iterator

import torch

from automr.errors import AutomrError

DEVICE_CHOICES = "auto, cpu, mps or cuda[:N]"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``mps`` or ``cuda[:N]`` as given,
    once checked to exist here; a ``torch.device`` as it is. Anything else is refused with the
    choices. Under a launcher (``torchrun``), ``auto`` and ``cuda`` are this process's GPU,
    ``cuda:LOCAL_RANK``; a GPU named by its index is the one every process takes (a scheduler
    that shows each process its own GPU alone, as SLURM's ``--gpus-per-task`` does, wants
    ``cuda:0``)."""
    from automr import distributed

    if isinstance(device, torch.device):
        return device
    if device in ("auto", "cuda") and torch.cuda.is_available() and distributed.launched():
        if distributed.local_rank() >= torch.cuda.device_count():
            raise AutomrError(f"process LOCAL_RANK={distributed.local_rank()} has no GPU of its "
                              f"own (it sees {torch.cuda.device_count()}): start at most one "
                              f"process per GPU, give --device cuda:0 where each process is "
                              f"shown its own GPU alone (SLURM --gpus-per-task), or use "
                              f"--device cpu")
        return torch.device(f"cuda:{distributed.local_rank()}")
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


@contextlib.contextmanager
def keeping_rng() -> Iterator[None]:
    """torch's global RNGs (the CPU's, every GPU's in use, MPS's) given back as the caller left
    them after the block: ``torch.manual_seed`` in it, which seeds every device, does not
    move the caller's draws."""
    cpu = torch.get_rng_state()
    cuda = (torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and torch.cuda.is_initialized() else None)
    mps = torch.mps.get_rng_state() if torch.backends.mps.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if mps is not None:
            torch.mps.set_rng_state(mps)
