"""Multi-process training on ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

vicinal does not launch processes itself: run it under ``torchrun``, which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``::

    torchrun --standalone --nproc-per-node 2 -m vicinal compare --mix-policy global

:func:`init_from_env` joins the process group those variables describe; every
collective then fails after ``timeout`` seconds instead of hanging when a peer dies.

Cross-rank mixing policies (the libraries disagree silently, so vicinal makes it an
explicit choice):

* ``independent`` — each rank draws its own plans from ``(seed, epoch, step, rank)`` and
  mixes within its local batch (as timm does);
* ``shared`` — every rank uses the plan of rank 0: the same λ and partner positions
  (and, with ``pairing="stream"``, the same partner samples) on every rank;
* ``global`` — one plan for the whole global batch from ``(seed, epoch, step)``;
  partners come from any rank's part of it. Every rank holds the dataset in memory,
  so it rebuilds the global batch itself instead of all-gathering it; the mixed global
  batch is then identical whatever the world size (bit for bit on CPU).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vicinal.experiments.errors import RunFailed

__all__ = [
    "SINGLE",
    "DistContext",
    "RankFailure",
    "all_reduce_sum",
    "barrier",
    "collective_errors",
    "init_from_env",
    "is_collective_error",
    "launched_by_torchrun",
    "shard_positions",
    "shutdown",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu", timeout_s: float = 300.0) -> DistContext:
    """Join the process group described by torchrun's environment variables.

    Args:
        device: ``"cpu"`` uses gloo; ``"cuda"`` uses NCCL and binds this process to
            GPU ``LOCAL_RANK``.
        timeout_s: how long a collective may wait for a peer before failing.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world, local_rank=local_rank)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


class RankFailure(RunFailed):
    """A collective failed: another rank died or did not answer within the timeout.

    Its message is one line (``rank R/W: WHAT failed: another rank died ...``); the
    command line prints it without a traceback and leaves with ``os._exit``: at a normal
    exit, the C++ destructors of a process group whose peer is gone may abort the process
    (``terminate called without an active exception``, SIGABRT), after the message.
    """

    exit_at_once = True


#: Messages of the errors gloo and NCCL raise when a peer is gone or silent.
_PEER_ERROR = re.compile(
    r"gloo|nccl|connection (reset|closed|refused)|broken pipe|timed out|timeout|socket|peer",
    re.IGNORECASE,
)


def _cause(exc: BaseException) -> str:
    """The useful start of a backend's message: no source location, no advice, one line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", text)  # "[.../pair.cc:537] "
    text = re.split(r"(?<=[a-z0-9)])\. ", text, maxsplit=1)[0].rstrip(".")  # the first sentence
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _collective_failed(ctx: DistContext, what: str, exc: BaseException) -> RankFailure:
    return RankFailure(
        f"rank {ctx.rank}/{ctx.world_size}: {what} failed: another rank died or did not answer within the "
        f"process group's timeout ({_cause(exc)}); see the other ranks' output, then restart every rank with --resume"
    )


def is_collective_error(exc: BaseException) -> bool:
    """Whether ``exc`` is how torch.distributed reports a dead or silent peer."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and bool(_PEER_ERROR.search(str(exc)))


@contextlib.contextmanager
def collective_errors(ctx: DistContext, what: str) -> Iterator[None]:
    """Report a failed collective inside the block (e.g. DDP's gradient all-reduce in
    ``loss.backward()``) as a one-line :class:`RankFailure`; other errors pass unchanged."""
    try:
        yield
    except RankFailure:
        raise
    except (RuntimeError, dist.DistBackendError) as exc:
        if not ctx.enabled or not is_collective_error(exc):
            raise
        raise _collective_failed(ctx, what, exc) from exc


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op for one process)."""
    if ctx.enabled:
        try:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        except (RuntimeError, dist.DistBackendError) as exc:
            raise _collective_failed(ctx, "all_reduce", exc) from exc
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        try:
            dist.barrier()
        except (RuntimeError, dist.DistBackendError) as exc:
            raise _collective_failed(ctx, "barrier", exc) from exc


def shard_positions(n_global: int, ctx: DistContext) -> slice:
    """This rank's rows of a global batch of ``n_global`` rows (a multiple of world size)."""
    per = n_global // ctx.world_size
    return slice(ctx.rank * per, (ctx.rank + 1) * per)
