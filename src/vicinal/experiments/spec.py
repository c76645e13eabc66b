"""The harness's option vocabulary: one place for choices, method defaults and checks.

Choice lists are derived from ``Literal`` types, so the CLI, the configs and the
validation can't drift apart. :data:`METHOD_DEFAULTS` says which mixing options each
method uses and their defaults; :func:`resolve_mixing` applies it once, and the
resolved values are what a run records in ``config.json``/``cell.json``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from vicinal._checks import check_choice, check_int
from vicinal.sampling import GRANULARITIES, METHODS, PAIRINGS

Precision = Literal["fp32", "bf16"]
Schedule = Literal["constant", "cosine"]
MixPolicy = Literal["independent", "shared", "global"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
MIX_POLICIES: tuple[str, ...] = get_args(MixPolicy)
#: Harness methods: the library's, plus "none" (plain batches) and "manifold" (MixUp of
#: the hidden states at one of ``mix_layers`` per step: vicinal.manifold.ManifoldMixup).
#: "augmix" is AugMix per image without mixing between images (AugMix on top of a mixing
#: method: the ``augmix`` option).
RUN_METHODS: tuple[str, ...] = ("none", *METHODS, "manifold", "augmix")
#: The weight of the Jensen-Shannon consistency loss with ``jsd`` (the AugMix paper's).
JSD_WEIGHT = 12.0

MAX_SEED = 2**63 - 1

#: The mixing options each method uses, with the harness's defaults. ``pairing="stream"``
#: is the keras.io reference's second shuffled stream; k-way needs in-batch partners.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "mixup": {"alpha": 0.2, "granularity": "elem", "pairing": "stream"},
    "cutmix": {"cutmix_alpha": 1.0, "granularity": "elem", "pairing": "stream"},
    "switch": {"alpha": 0.2, "cutmix_alpha": 1.0, "switch_prob": 0.5, "granularity": "elem", "pairing": "stream"},
    "kway": {"alpha": 0.2, "k": 3, "granularity": "elem", "pairing": "permute"},
    # Verma et al. (2019) train Manifold Mixup with alpha = 2; the layers are the model's.
    "manifold": {"alpha": 2.0, "granularity": "elem", "pairing": "permute", "mix_layers": None},
    "augmix": {},
}
#: Every option that some method uses; ``None`` in a config means "the method's default"
#: before resolution and "not used" after.
MIX_OPTIONS: tuple[str, ...] = ("alpha", "cutmix_alpha", "switch_prob", "k", "granularity", "pairing", "mix_layers")
assert {k for d in METHOD_DEFAULTS.values() for k in d} == set(MIX_OPTIONS)
assert set(PAIRINGS) >= {"stream", "permute"} and "elem" in GRANULARITIES


def resolve_mixing(method: str, values: dict[str, Any], *, inherited: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The mixing options of ``method``: given values, else the method's defaults.

    Args:
        method: one of :data:`RUN_METHODS`.
        values: option -> value (``None``: not given), for the keys of :data:`MIX_OPTIONS`.
        inherited: options whose values were inherited (a study's ``[defaults]``) rather
            than asked for: they are dropped silently where the method doesn't use them.

    Returns:
        All of :data:`MIX_OPTIONS`, ``None`` where the method doesn't use an option.

    Raises:
        ValueError: an option the method doesn't use was given (e.g. ``alpha`` with
            ``method="cutmix"``, whose area is drawn with ``cutmix_alpha``).
    """
    check_choice("method", method, RUN_METHODS)
    used = METHOD_DEFAULTS[method]
    out: dict[str, Any] = {}
    for name in MIX_OPTIONS:
        value = values.get(name)
        if name in used:
            out[name] = used[name] if value is None else value
            if name == "mix_layers":
                out[name] = _check_layers(value)
        elif value is not None and name not in inherited:
            uses = ", ".join(sorted(used)) or "no mixing options"
            raise ValueError(f"{name}={value!r} is not used by method={method!r} (it uses {uses})")
        else:
            out[name] = None
    return out


def check_seed(name: str, value: Any) -> int:
    """A seed: an int in [0, 2**63)."""
    return check_int(name, value, minimum=0, maximum=MAX_SEED)


def _check_layers(value: Any) -> tuple[str, ...]:
    if value is None:
        raise ValueError(
            "method='manifold' needs mix_layers: the modules whose outputs may be mixed, and/or 'input' "
            "(e.g. --mix-layers input,blocks.0,blocks.1,blocks.2 for preact-resnet-small)"
        )
    layers = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
    if not layers or not all(isinstance(v, str) and v for v in layers):
        raise ValueError(f"mix_layers must be a non-empty list of module names, got {value!r}")
    return layers
