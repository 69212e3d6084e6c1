"""Data-parallel runs on ``torch.distributed``: the process group's lifecycle and the few
collectives automr uses.

A launcher (``torchrun --nproc-per-node N`` or ``accelerate launch``) starts N copies of a
command and tells each its place through the environment: ``RANK`` (0..N-1), ``WORLD_SIZE``
(N), ``LOCAL_RANK`` (its GPU on this node), ``MASTER_ADDR`` / ``MASTER_PORT``. With no
launcher (or N = 1) there is no process group at all: every helper below answers for a single
process (rank 0 of 1) and the collectives return at once.

The group is started on first use (:func:`init`, idempotent), ``gloo`` on a CPU-only machine
and ``cpu:gloo,cuda:nccl`` where CUDA is present (CPU tensors and Python objects go through
gloo, CUDA tensors through NCCL). Each process then owns ``cuda:LOCAL_RANK``
(:func:`automr.devices.resolve_device` maps ``auto`` and ``cuda`` there).

How the heavy steps use it (one pattern): the main process checks and prepares the output
folder (:func:`on_main`, which hands its result or its error to every process), every process
takes its :func:`share` of the shards still to do (round-robin by shard index) and writes
each shard atomically under its own name, then, after a :func:`barrier` (or a :func:`gather`
of small results), the main process writes the final record.
"""

import atexit
import contextlib
import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from automr.errors import AutomrError

T = TypeVar("T")

TIMEOUT_ENV = "AUTOMR_DIST_TIMEOUT_MINUTES"
"""How long a collective waits for the slowest process (default 120 minutes): a process that
finishes its shards early waits at the barrier for the others."""


def launched() -> bool:
    """Whether a launcher started more than one process (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def local_rank() -> int:
    """This process's index on its node (its GPU), 0 without a launcher."""
    return _env_int("LOCAL_RANK", 0)


def init() -> bool:
    """Join the launcher's process group once; False (and nothing done) without a launcher.

    Binds this process to ``cuda:LOCAL_RANK`` when CUDA is present and destroys the group at
    exit. Without a launcher, torch is not even imported."""
    if not launched():
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    if not dist.is_available():
        raise AutomrError("this torch build has no torch.distributed; run a single process")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise AutomrError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} "
                          f"unset: start the command with `torchrun --nproc-per-node N` or "
                          f"`accelerate launch`")
    backend = "gloo"
    if torch.cuda.is_available():  # every process alike: a gloo-only one meets NCCL ones at
        # the first CUDA all-reduce (DDP) on another backend, and each waits for the other
        if local_rank() < torch.cuda.device_count():  # else shown its own GPU alone (cuda:0)
            torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    minutes = _timeout_minutes()
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=minutes))
    except dist.DistStoreError as error:  # the others never came (or another address)
        first = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise AutomrError(
            f"not every one of the {os.environ['WORLD_SIZE']} processes joined within "
            f"{minutes} min ({first}): start all of them, with the same MASTER_ADDR:MASTER_PORT "
            f"({os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}); {TIMEOUT_ENV} sets "
            f"the wait") from None
    except dist.DistNetworkError as error:  # process 0 could not listen, or not be reached
        first = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise AutomrError(
            f"process {os.environ['RANK']} of {os.environ['WORLD_SIZE']} could not join the "
            f"others through {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
            f"({first}): process 0 listens there, so give every process process 0's address "
            f"and a port free on its machine, and start them all within {minutes} min "
            f"({TIMEOUT_ENV} sets the wait)") from None
    atexit.register(_shutdown)
    return True


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 for a single process)."""
    if not init():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def world_size() -> int:
    """How many processes take part (1 for a single process)."""
    if not init():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def is_main() -> bool:
    """Whether this is the process that writes final records and prints (rank 0)."""
    return rank() == 0


@contextlib.contextmanager
def _together(what: str) -> Iterator[None]:
    """A collective's failure (another process stopped, or stalled past the timeout) as one
    line that says so, instead of the backend's traceback."""
    try:
        yield
    except RuntimeError as error:  # gloo and nccl raise RuntimeError subclasses
        first = (str(error).strip() or type(error).__name__).splitlines()[0][:200]
        raise AutomrError(
            f"process {rank()} of {world_size()} stopped waiting for the others at {what} "
            f"({first}): another process stopped (its own message says why) or stalled past "
            f"{_timeout_minutes()} min ({TIMEOUT_ENV}); run the same command again, "
            f"it resumes from what is written") from None


def barrier() -> None:
    """Wait until every process gets here (nothing for a single process)."""
    if init():
        import torch.distributed as dist

        with _together("a barrier"):
            dist.barrier()


def share(count: int) -> list[int]:
    """This process's shard indices among ``range(count)``: ``rank, rank + N, ...``."""
    return list(range(rank(), count, world_size()))


def mine(items: Sequence[T]) -> list[T]:
    """This process's round-robin share of ``items``."""
    return [items[i] for i in share(len(items))]


def gather(value: T) -> list[T]:
    """Every process's ``value`` (picklable), in rank order, on every process."""
    if not init():
        return [value]
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    with _together("a gather"):
        dist.all_gather_object(out, value)
    return out


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums of ``values`` over the processes (float64)."""
    if not init():
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    with _together("a sum"):
        dist.all_reduce(tensor)
    return tensor.tolist()


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on the main process only and return its result on every process.

    The main process's error is raised on every process (a :class:`MainProcessError` with the
    same message elsewhere, holding the main process's error as ``cause``, so the CLI words a
    refused path or a full disk as the main process does), so a refused folder stops all of
    them with one clear line instead of leaving the others waiting. Also a barrier: nothing after
    it starts before ``fn`` has finished."""
    if not init():
        return fn()
    import torch.distributed as dist

    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as error:
            message = (f"{error}" if isinstance(error, AutomrError)
                       else f"the main process failed: {type(error).__name__}: {error}")
            box[0] = ("error", (message, error if _picklable(error) else None))
            with _together("the main process's step"):
                dist.broadcast_object_list(box, src=0)
            raise
    with _together("the main process's step"):
        dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise MainProcessError(*value)
    return value


class MainProcessError(AutomrError):
    """The main process's error in :func:`on_main`, raised on the others; ``cause``: that
    error itself (None where it could not be sent)."""

    def __init__(self, message: str, cause: Exception | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def _picklable(error: Exception) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return False
    return True


def _timeout_minutes() -> int:
    """``$AUTOMR_DIST_TIMEOUT_MINUTES`` (default 120); below 1 is refused: torch took 0 or a
    negative wait for a failed connection, and the line blamed the address and port."""
    minutes = _env_int(TIMEOUT_ENV, 120)
    if minutes < 1:
        raise AutomrError(f"{TIMEOUT_ENV}={minutes}: give the minutes a process waits for the "
                          f"others, at least 1 (default 120)")
    return minutes


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise AutomrError(f"{name}={value!r} is not an integer") from None
