"""The layout of vicinal's random streams: one Philox counter, named purposes.

Every random draw of the library comes from a counter-based Philox generator whose key
is ``(seed, a constant word)`` and whose 4-word counter says what the draws are for:

======  ==================================================================
word    meaning
======  ==================================================================
0       0 (Philox advances it while a generator is consumed)
1       the step; for AugMix ``TAG << 48 | view << 40 | step``
2       the epoch
3       ``purpose << 32 | rank`` (orders: ``purpose << 32 | stream``)
======  ==================================================================

A purpose is asked for by name (:data:`PURPOSES`), so two uses of the same
``(seed, epoch, step, rank)`` (a batch's plan, its Manifold Mixup layer choice, its
AugMix chains, the epoch's data order) are independent streams, and no module encodes
the layout itself. The values are part of vicinal's reproducibility promise: changing
one changes every draw of that purpose.
"""

from __future__ import annotations

import threading

import numpy as np

from vicinal._checks import check_int

__all__ = ["MAX_SEED", "PURPOSES", "generator"]

MAX_SEED = 2**63 - 1
"""The largest seed (the Philox key word is an unsigned 64-bit integer; seeds stay
within int64 so that they survive JSON and NumPy int64 round trips)."""

PURPOSES: dict[str, int] = {
    "plan": 0,  # a batch's mixing plan (sample_plan)
    "order": 1,  # an epoch's data order (epoch_order); the rank word holds the stream number
    "choice": 2,  # a per-step choice (Manifold Mixup's layer)
    "augmix": 0,  # AugMix chains: word 3 as for plans, word 1 tagged (see below)
    "mit": 3,  # mixup inference in training: a step's (λ1, λ2) draws (vicinal.torch.mit)
    "crop": 4,  # the harness's random crops and flips of a batch (vicinal.experiments.augment)
}
"""Word 3's upper half for each purpose."""

# AugMix's streams share word 3 with plans and are told apart by word 1, which no
# mixing plan reaches: TAG << 48 | view << 40 | step.
_AUGMIX_TAG = 0x4158  # "AX"
_STEP_BITS = 40
_VIEW_BITS = 8
_KEY_WORD_1 = 0x76696369

_local = threading.local()


def _positioned(seed: int, counter: tuple[int, int, int, int]) -> np.random.Generator:
    """A Philox generator positioned at ``counter`` under key ``seed``.

    Resetting the state of a per-thread generator (reusing its state dict) gives the
    same generator as building a new ``Philox`` for a fraction of the cost; the draws of
    one call are consumed before the next call resets it.
    """
    state = getattr(_local, "state", None)
    if state is None:
        _local.bitgen = np.random.Philox(key=0)
        _local.gen = np.random.Generator(_local.bitgen)
        state = _local.state = {
            "bit_generator": "Philox",
            "state": {"counter": np.zeros(4, dtype=np.uint64), "key": np.zeros(2, dtype=np.uint64)},
            "buffer": np.zeros(4, dtype=np.uint64),
            "buffer_pos": 4,
            "has_uint32": 0,
            "uinteger": 0,
        }
        state["state"]["key"][1] = _KEY_WORD_1
    inner = state["state"]
    inner["counter"][:] = counter
    inner["key"][0] = seed
    _local.bitgen.state = state
    gen: np.random.Generator = _local.gen
    return gen


def generator(
    seed: int, purpose: str, *, epoch: int = 0, step: int = 0, rank: int = 0, view: int = 0
) -> np.random.Generator:
    """The generator of ``purpose`` for ``(seed, epoch, step, rank)``.

    Args:
        seed: 0 <= seed <= :data:`MAX_SEED`.
        purpose: a key of :data:`PURPOSES`.
        epoch, step: >= 0 (AugMix: step < 2**40).
        rank: the process (for ``"order"``: the stream number), < 2**32.
        view: AugMix's view number, < 2**8; 0 for other purposes.

    Returns:
        A generator shared by the calling thread and reset by its next call: draw from
        it at once.
    """
    check_int("seed", seed, minimum=0, maximum=MAX_SEED)
    check_int("epoch", epoch, minimum=0)
    check_int("step", step, minimum=0)
    check_int("rank", rank, minimum=0, maximum=(1 << 32) - 1)
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {sorted(PURPOSES)}, got {purpose!r}")
    word1 = step
    if purpose == "augmix":
        check_int("step", step, minimum=0, maximum=(1 << _STEP_BITS) - 1)
        check_int("view", view, minimum=0, maximum=(1 << _VIEW_BITS) - 1)
        word1 = (_AUGMIX_TAG << (_STEP_BITS + _VIEW_BITS)) | (view << _STEP_BITS) | step
    elif view != 0:
        raise ValueError(f"view is only used by purpose='augmix', got view={view} with purpose={purpose!r}")
    return _positioned(seed, (0, word1, epoch, (PURPOSES[purpose] << 32) | rank))
