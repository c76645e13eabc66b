"""What a run is: the specifications of runs, study cells and studies, and every check and default, once.

* The option vocabulary: choices (derived from ``Literal`` types), :data:`METHOD_DEFAULTS`
  (which mixing options each method uses, with their defaults) and
  :func:`resolve_mixing`, which applies them; the resolved values are what a run records
  in ``config.json`` / ``cell.json``.
* The training recipe's vocabulary: :data:`OPTIM_DEFAULTS` and :data:`SCHEDULE_DEFAULTS`
  (which optimizer and schedule options each choice uses, with their defaults), applied
  by :func:`resolve_optim` as the mixing options are by :func:`resolve_mixing`.
* The checks shared by every entry point: :func:`check_seed`, :func:`check_device`,
  :func:`check_class_ids`, :func:`check_mix_layers`.
* The specifications: :class:`RunSpec` (what a comparison run and a study cell share),
  :class:`CompareConfig` (``vicinal compare``), :class:`CellSpec` (one cell of a study),
  :class:`StudySpec` (a grid of arms × seeds, parsed from TOML by :func:`parse_study`),
  :class:`OptimConfig` (the optimizer and its learning-rate schedule).
* The command line is generated from these dataclasses: every field a user can set
  carries a :class:`CliOption` (its help text and flag) in its metadata, and its
  default is the field's default (:func:`cli_options`).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import Field, asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import numpy as np
import torch

from vicinal import MixConfig
from vicinal._checks import check_choice, check_int, check_probability, check_real_range
from vicinal.experiments.atomic import check_arms, check_fields, check_type, read_json
from vicinal.experiments.augment import CropFlip
from vicinal.experiments.errors import FAILED, CellFailure
from vicinal.experiments.models import available_models, check_model_name, model_for_data, model_mix_layers
from vicinal.experiments.presets import PRESETS
from vicinal.sampling import GRANULARITIES, METHODS, PAIRINGS
from vicinal.torch.augmix import AugMixConfig
from vicinal.torch.mit import MIT_ALPHA, MIT_MARGIN, MixupInferenceTraining
from vicinal.torch.regmixup import REGMIXUP_ALPHA, RegMixup
from vicinal.transforms import Mixer

if TYPE_CHECKING:
    from typing_extensions import Self

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ARMS",
    "CELL_RECORD_EXTRA",
    "JSD_WEIGHT",
    "MAX_SEED",
    "METHOD_DEFAULTS",
    "MIX_OPTIONS",
    "MIX_POLICIES",
    "OPTIMIZERS",
    "OPTIM_DEFAULTS",
    "OPTIM_OPTIONS",
    "PRECISIONS",
    "RUN_METHODS",
    "SCHEDULES",
    "SCHEDULE_DEFAULTS",
    "STEP_LOSS_METHODS",
    "STUDY_OVERRIDES",
    "STUDY_REMEDY",
    "CellSpec",
    "CliOption",
    "CompareConfig",
    "MixPolicy",
    "OptimConfig",
    "OptimizerName",
    "Precision",
    "RunSpec",
    "Schedule",
    "StepLoss",
    "StudySpec",
    "autocast_dtype",
    "cell_dir",
    "check_class_ids",
    "check_device",
    "check_lr_milestones",
    "check_mix_layers",
    "check_seed",
    "check_study_record",
    "cli_options",
    "load_study",
    "parse_study",
    "read_cell_record",
    "read_failure",
    "read_study",
    "resolve_mixing",
    "resolve_optim",
]

# --------------------------------------------------------------------------- vocabulary

#: ``auto``: bfloat16 autocast on a CUDA device that supports it, float32 elsewhere (on a
#: CPU bf16 pays only with AMX: see docs/results.md).
Precision = Literal["fp32", "bf16", "auto"]
Schedule = Literal["constant", "cosine", "step"]
OptimizerName = Literal["adam", "sgd"]
MixPolicy = Literal["independent", "shared", "global"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
MIX_POLICIES: tuple[str, ...] = get_args(MixPolicy)
#: Harness methods: the library's, plus "none" (plain batches) and "manifold" (MixUp of
#: the hidden states at one of ``mix_layers`` per step: vicinal.torch.manifold.ManifoldMixup).
#: "augmix" is AugMix per image without mixing between images (AugMix on top of a mixing
#: method: the ``augmix`` option).
#: "regmixup" and "mit" mix the plain batches inside the training step (:class:`StepLoss`).
#: (The library's ``"choice"`` over several methods is not a harness method: its
#: ``choices`` have no command-line form yet.)
RUN_METHODS: tuple[str, ...] = (
    "none",
    *(m for m in METHODS if m != "choice"),
    "manifold",
    "augmix",
    "regmixup",
    "mit",
)
#: Methods whose training step mixes the plain batches itself: RegMixup (the clean batch and
#: a mixed copy) and mixup inference in training (two mixes of the same pairs).
STEP_LOSS_METHODS: tuple[str, ...] = ("regmixup", "mit")
#: The weight of the Jensen-Shannon consistency loss with ``jsd`` (the AugMix paper's).
JSD_WEIGHT = 12.0
#: The arms of ``vicinal compare``: the mixed one and the plain one.
ARMS = ("mixup", "none")

MAX_SEED = 2**63 - 1

#: The mixing options each method uses, with the harness's defaults. ``pairing="stream"``
#: is the keras.io reference's second shuffled stream; k-way needs in-batch partners.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "mixup": {"alpha": 0.2, "granularity": "elem", "pairing": "stream"},
    "cutmix": {"cutmix_alpha": 1.0, "granularity": "elem", "pairing": "stream"},
    "switch": {"alpha": 0.2, "cutmix_alpha": 1.0, "switch_prob": 0.5, "granularity": "elem", "pairing": "stream"},
    "kway": {"alpha": 0.2, "k": 3, "granularity": "elem", "pairing": "permute"},
    # The mask family at its papers' CIFAR settings (lambda ~ Beta(1, 1) where it has one).
    "fmix": {"mask_alpha": 1.0, "granularity": "elem", "pairing": "stream"},
    "resizemix": {"granularity": "elem", "pairing": "stream"},
    "gridmix": {"mask_alpha": 1.0, "granularity": "elem", "pairing": "stream"},
    "smoothmix": {"granularity": "elem", "pairing": "stream"},
    "saliencymix": {"mask_alpha": 1.0, "granularity": "elem", "pairing": "stream"},
    # Verma et al. (2019) train Manifold Mixup with alpha = 2; the layers are the model's.
    "manifold": {"alpha": 2.0, "granularity": "elem", "pairing": "permute", "mix_layers": None},
    "augmix": {},
    # The official RegMixup commands: one lambda ~ Beta(20, 20) per batch (CIFAR-10; 10 for
    # CIFAR-100), partners a random permutation; eta weighs the mixed term.
    "regmixup": {"alpha": REGMIXUP_ALPHA["cifar10"], "granularity": "batch", "pairing": "permute", "eta": 1.0},
    # The official MIT-L: one (lambda1, lambda2) per batch, alpha of its README's demos, its default margin.
    "mit": {"alpha": MIT_ALPHA, "granularity": "batch", "pairing": "permute", "mit_margin": MIT_MARGIN},
}
#: Every option that some method uses; ``None`` in a config means "the method's default"
#: before resolution and "not used" after.
MIX_OPTIONS: tuple[str, ...] = (
    "alpha",
    "cutmix_alpha",
    "mask_alpha",
    "switch_prob",
    "k",
    "granularity",
    "pairing",
    "mix_layers",
    "eta",
    "mit_margin",
)
#: The options of :data:`MIX_OPTIONS` that are not :class:`MixConfig` fields.
_STEP_OPTIONS = frozenset({"mix_layers", "eta", "mit_margin"})
assert {k for d in METHOD_DEFAULTS.values() for k in d} == set(MIX_OPTIONS)
assert set(PAIRINGS) >= {"stream", "permute"} and "elem" in GRANULARITIES

#: The optimizer options each optimizer uses, with the harness's defaults: Adam as Keras
#: configures it (the keras.io reference), SGD as the CIFAR tables train (momentum 0.9).
OPTIM_DEFAULTS: dict[str, dict[str, Any]] = {
    "adam": {"lr": 1e-3},
    "sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": False},
}
#: The options each learning-rate schedule uses (``None``: required).
SCHEDULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "constant": {},
    "cosine": {},
    "step": {"lr_milestones": None, "lr_factor": 0.1},
}
#: Every option that some optimizer or schedule uses (``None``: as for :data:`MIX_OPTIONS`).
OPTIM_OPTIONS: tuple[str, ...] = ("lr", "momentum", "nesterov", "lr_milestones", "lr_factor")
assert {k for d in (*OPTIM_DEFAULTS.values(), *SCHEDULE_DEFAULTS.values()) for k in d} == set(OPTIM_OPTIONS)


def _resolve_used(
    owner: str, used: dict[str, Any], names: tuple[str, ...], values: dict[str, Any], inherited: frozenset[str]
) -> dict[str, Any]:
    """``names`` resolved for a choice that uses ``used`` (option -> default): the given
    value, else the default; ``None`` for an option it doesn't use, which may be given
    only when inherited (it is dropped then)."""
    out: dict[str, Any] = {}
    for name in names:
        value = values.get(name)
        if name in used:
            out[name] = used[name] if value is None else value
        elif value is not None and name not in inherited:
            uses = ", ".join(sorted(used)) or "none of these options"
            raise ValueError(f"{name}={value!r} is not used by {owner} (it uses {uses})")
        else:
            out[name] = None
    return out


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
    out = _resolve_used(f"method={method!r}", METHOD_DEFAULTS[method], MIX_OPTIONS, values, inherited)
    if "mix_layers" in METHOD_DEFAULTS[method]:
        out["mix_layers"] = check_mix_layers(out["mix_layers"])
    return out


def resolve_optim(
    optimizer: str, schedule: str, values: dict[str, Any], *, inherited: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The optimizer and schedule options of ``optimizer`` and ``schedule``: given values,
    else their defaults (:data:`OPTIM_DEFAULTS`, :data:`SCHEDULE_DEFAULTS`).

    Args:
        values: option -> value (``None``: not given), for the keys of :data:`OPTIM_OPTIONS`.
        inherited: see :func:`resolve_mixing`.

    Returns:
        All of :data:`OPTIM_OPTIONS`, ``None`` where the choice doesn't use an option.

    Raises:
        ValueError: an unknown optimizer or schedule, an option the choice doesn't use
            (``momentum`` with Adam), or ``schedule="step"`` without ``lr_milestones``.
    """
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_choice("schedule", schedule, SCHEDULES)
    out = _resolve_used(
        f"optimizer={optimizer!r}", OPTIM_DEFAULTS[optimizer], ("lr", "momentum", "nesterov"), values, inherited
    )
    out |= _resolve_used(
        f"schedule={schedule!r}", SCHEDULE_DEFAULTS[schedule], ("lr_milestones", "lr_factor"), values, inherited
    )
    if schedule == "step" and out["lr_milestones"] is None:
        raise ValueError(
            "schedule='step' needs lr_milestones: the epochs after which the learning rate is multiplied by "
            "lr_factor (e.g. --lr-milestones 100,150)"
        )
    return out


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``: bfloat16 for ``"bf16"``, and for
    ``"auto"`` on a CUDA device that supports bfloat16; None (float32) otherwise."""
    check_choice("precision", precision, PRECISIONS)
    device = torch.device(device)
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


# --------------------------------------------------------------------------- checks


def check_seed(name: str, value: Any) -> int:
    """A seed: an int in [0, 2**63)."""
    return check_int(name, value, minimum=0, maximum=MAX_SEED)


def check_device(device: str) -> str:
    """``device`` if it names a usable device: ``"cpu"``, or ``"cuda"`` / ``"cuda:N"`` with CUDA present."""
    if not isinstance(device, str) or (device not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device)):
        raise ValueError(f"device (--device) must be 'cpu' or 'cuda[:N]', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but PyTorch sees no CUDA GPU here; use --device cpu")
    return device


def check_class_ids(labels: np.ndarray | torch.Tensor, num_classes: int, *, name: str = "labels") -> None:
    """Refuse class ids (N,) outside ``[0, num_classes)``; an empty array passes.

    One read of the minimum and maximum (a host read for a tensor on a device).
    """
    if labels.shape[0] == 0:
        return
    if isinstance(labels, torch.Tensor):
        lo, hi = (int(v) for v in labels.aminmax())
    else:
        lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} hold class ids in [{lo}, {hi}], expected [0, num_classes={num_classes})")


def check_mix_layers(value: Any) -> tuple[str, ...]:
    """Manifold Mixup's layers: module names (and/or ``"input"``), a comma-separated string or a sequence."""
    if value is None:
        suggested = "; ".join(
            f"--mix-layers {','.join(model_mix_layers(m))} for {m}" for m in available_models() if model_mix_layers(m)
        )
        raise ValueError(
            "method='manifold' needs mix_layers: the modules whose outputs may be mixed, and/or 'input' "
            f"(e.g. {suggested})"
        )
    layers = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
    if not layers or not all(isinstance(v, str) and v for v in layers):
        raise ValueError(f"mix_layers must be a non-empty list of module names, got {value!r}")
    return layers


# --------------------------------------------------------------------------- command-line metadata


@dataclass(frozen=True)
class CliOption:
    """How a specification field appears on the command line.

    Attributes:
        help: the help text (argparse's ``%(default)s`` is the field's default).
        group: the help section: ``"data"``, ``"mixing"`` or ``"run"``.
        flag: the option's name; default ``--`` and the field's name with dashes.
        turns_off: the field is a bool that is on by default and the flag turns it off
            (``--sequential`` sets ``parallel=False``).
        choices: the accepted values, shown in the help and checked by argparse.
        parse: turns the command-line string into the field's value, where the field's
            type is not one argparse converts (a tuple).
    """

    help: str
    group: str
    flag: str | None = None
    turns_off: bool = False
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None


_T = TypeVar("_T")


def _option(default: _T, help: str, group: str, **cli: Any) -> _T:
    """A dataclass field with ``default`` that the command line offers (see :class:`CliOption`)."""
    return field(default=default, metadata={"cli": CliOption(help, group, **cli)})


def cli_options(cls: type[Any], names: tuple[str, ...] | None = None) -> Iterator[tuple[Field[Any], CliOption]]:
    """The fields of specification class ``cls`` that carry a :class:`CliOption`, in declaration order.

    Args:
        names: only these fields (in this order), each of which must carry one.
    """
    by_name = {f.name: f for f in fields(cls) if "cli" in f.metadata}
    for name in by_name if names is None else names:
        f = by_name[name]
        yield f, f.metadata["cli"]


def _method_defaults(option: str) -> str:
    """Help text naming each method's default for ``option``."""
    uses = [f"{m}: {d[option]}" for m, d in METHOD_DEFAULTS.items() if option in d]
    return "default per method: " + ", ".join(uses)


# --------------------------------------------------------------------------- specifications


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer and its learning-rate schedule, validated on construction.

    ``optimizer="adam"``: Adam as Keras configures it by default (``betas``, ``eps``);
    ``"sgd"``: SGD with ``momentum`` (Nesterov's with ``nesterov``), as the CIFAR tables
    train. ``weight_decay`` is the L2 penalty both add to the gradient (PyTorch's
    ``weight_decay``). Schedules, per step: ``"constant"``; ``"cosine"`` anneals from
    ``lr`` to 0 over the whole run; ``"step"`` multiplies the rate by ``lr_factor``
    after each epoch of ``lr_milestones`` (``(100, 150)`` with 0.1: the mixup paper's
    "divided by 10 at epochs 100 and 150"). Options a choice doesn't use are ignored;
    :meth:`RunSpec.optim` builds this from a run's resolved options.
    """

    optimizer: str = "adam"
    lr: float = OPTIM_DEFAULTS["adam"]["lr"]
    momentum: float = OPTIM_DEFAULTS["sgd"]["momentum"]
    nesterov: bool = OPTIM_DEFAULTS["sgd"]["nesterov"]
    weight_decay: float = 0.0
    schedule: str = "constant"
    lr_milestones: tuple[int, ...] = ()
    lr_factor: float = SCHEDULE_DEFAULTS["step"]["lr_factor"]
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_real_range("lr", self.lr, low=0.0, high=None, low_open=True)
        check_real_range("weight_decay", self.weight_decay, low=0.0, high=None)
        if self.optimizer == "sgd":
            check_real_range("momentum", self.momentum, low=0.0, high=1.0)
            if self.momentum >= 1:
                raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
            if not isinstance(self.nesterov, bool):
                raise TypeError(f"nesterov must be a bool, got {type(self.nesterov).__name__}")
            if self.nesterov and self.momentum == 0:
                raise ValueError("nesterov=True needs momentum > 0 (Nesterov momentum without momentum is plain SGD)")
        if self.schedule == "step":
            check_lr_milestones(self.lr_milestones)
            check_real_range("lr_factor", self.lr_factor, low=0.0, high=1.0, low_open=True)


def check_lr_milestones(value: Any) -> tuple[int, ...]:
    """The step schedule's milestones: epochs >= 1, increasing, as a tuple (a comma-separated string or a sequence)."""
    raw = value.split(",") if isinstance(value, str) else value
    try:
        epochs = tuple(int(v) if isinstance(v, str) else v for v in raw)
    except (TypeError, ValueError):
        epochs = ()
    if (
        not epochs
        or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in epochs)
        or list(epochs) != sorted(set(epochs))
    ):
        raise ValueError(f"lr_milestones must be increasing epochs >= 1 (e.g. 100,150), got {value!r}")
    return epochs


@dataclass(frozen=True)
class StepLoss:
    """RegMixup or mixup inference in training: the loader yields plain batches and the
    training step mixes them (:class:`~vicinal.torch.regmixup.RegMixup`,
    :class:`~vicinal.torch.mit.MixupInferenceTraining`). Validated on construction.

    Attributes:
        method: ``"regmixup"`` or ``"mit"``.
        config: the step's MixUp (alpha, granularity, in-batch pairing).
        eta: RegMixup's weight of the mixed term.
        margin: MIT's least λ1 − λ2.
    """

    method: str
    config: MixConfig
    eta: float | None = None
    margin: float | None = None

    def __post_init__(self) -> None:
        check_choice("method", self.method, STEP_LOSS_METHODS)
        if self.config.pairing == "stream":
            raise ValueError(
                f"method={self.method!r} mixes within the batch: pairing must be 'roll', 'flip', 'permute' or "
                "'derange', got 'stream' (a study's [defaults] pairing is inherited: set pairing on the arm)"
            )
        try:
            self.build(seed=0, rank=0, num_classes=None)  # the library's checks of eta, margin and config
        except ValueError as exc:
            raise ValueError(f"method={self.method!r}: {exc}") from None

    def build(self, *, seed: int, rank: int, num_classes: int | None) -> RegMixup | MixupInferenceTraining:
        """The library piece of one run: plans of ``(seed, epoch, step, rank)``.

        Its labels are the loader's soft targets (already smoothed and checked), so it
        smooths nothing and reads no label back to the host. RegMixup runs the clean and
        the mixed halves as one forward pass of 2B (the official code's).
        """
        if self.method == "regmixup":
            mixer = Mixer(self.config, num_classes=num_classes, seed=seed, rank=rank, validate=False)
            return RegMixup(mixer, eta=1.0 if self.eta is None else self.eta)
        margin = MIT_MARGIN if self.margin is None else self.margin
        return MixupInferenceTraining(
            self.config, margin=margin, num_classes=num_classes, seed=seed, rank=rank, validate=False
        )


@dataclass(frozen=True)
class RunSpec:
    """What a comparison run and a study cell share: data, model, length, mixing.

    The mixing options (``alpha`` ... ``pairing``) are ``None`` for "the method's
    default"; :meth:`resolved` fills them in from :data:`METHOD_DEFAULTS` and sets the
    ones the method doesn't use to ``None``. ``model=None`` is the default model for the
    data (:meth:`for_data`). Runs record their resolved spec.
    """

    dataset: str = _option(
        "fashion-mnist",
        "a dataset by name (fashion-mnist, mnist, cifar10, cifar100, cifar100:coarse, svhn, medmnist:<name>, "
        "hf:<path>; docs/datasets.md), a .npz file with x and y arrays, or a folder with one sub-folder of "
        "images per class (default: %(default)s)",
        "data",
    )
    data_dir: str | None = _option(
        None,
        "folder holding the dataset's official files, or a <name>/ sub-folder of them (the only place "
        "searched when given). Searched otherwise, in order: $VICINAL_DATA_DIR, /usr/share/datasets/<name>/ "
        "(Debian's dataset-fashion-mnist), the user cache, then a checksum-verified download from the official "
        "mirror into the cache",
        "data",
    )
    model: str | None = _option(
        None,
        f"a registered model ({', '.join(available_models())}) or your own as package.module:factory, "
        "called as factory(num_classes, input_shape) (default: the one for the data: reference-cnn for images "
        "(N, C, H, W), mlp for features (N, F), gru for sequences (N, T, F))",
        "run",
    )
    epochs: int = _option(10, "epochs per arm (default: %(default)s)", "run")
    batch_size: int = _option(64, "training batch size (default: %(default)s)", "run")
    method: str = _option(
        "mixup",
        "mixup: convex combination; cutmix: paste a box; switch: cutmix with probability "
        "--switch-prob else mixup; kway: Dirichlet mix of --k samples; fmix, resizemix, gridmix, smoothmix, "
        "saliencymix: the mask family (docs/methods.md); manifold: mixup of the hidden "
        "states at one of --mix-layers per step; augmix: AugMix per image, no mixing; regmixup: CE on the clean "
        "batch + --eta x CE on a mixed copy; mit: mixup inference in training, two mixes per step and the raw "
        "samples' logits recovered (--mit-margin) (default: %(default)s)",
        "mixing",
        choices=tuple(m for m in RUN_METHODS if m != "none"),
    )
    alpha: float | None = _option(
        None,
        "Beta(alpha, alpha) concentration of mixup's lambda, or the Dirichlet's for kway; "
        f"0 disables mixing ({_method_defaults('alpha')})",
        "mixing",
    )
    cutmix_alpha: float | None = _option(
        None, f"Beta concentration of CutMix's area ({_method_defaults('cutmix_alpha')})", "mixing"
    )
    mask_alpha: float | None = _option(
        None,
        f"Beta(a, a) concentration of lambda for fmix, gridmix and saliencymix ({_method_defaults('mask_alpha')})",
        "mixing",
    )
    switch_prob: float | None = _option(
        None, f"probability of CutMix under --method switch ({_method_defaults('switch_prob')})", "mixing"
    )
    k: int | None = _option(None, f"samples per mix under --method kway ({_method_defaults('k')})", "mixing")
    granularity: str | None = _option(
        None,
        "one lambda per batch, per sample (elem, the reference) or per pair (default: elem; regmixup, mit: batch)",
        "mixing",
        choices=GRANULARITIES,
    )
    pairing: str | None = _option(
        None,
        "stream: partners from a second, independently shuffled pass (the reference); roll, flip, "
        f"permute, derange: partners within the batch ({_method_defaults('pairing')})",
        "mixing",
        choices=PAIRINGS,
    )
    mix_layers: tuple[str, ...] | None = _option(
        None,
        "under --method manifold: comma-separated module names of the model (and/or 'input'), one chosen "
        "per step, e.g. input,blocks.0,blocks.1,blocks.2 for preact-resnet-small, input,layer1,layer2 for "
        "preact-resnet18 (the error without it lists every model's suggestion)",
        "mixing",
        parse=lambda text: tuple(text.split(",")),
    )
    eta: float | None = _option(
        None,
        f"under --method regmixup: the weight of the mixed term, CE(clean) + eta * CE(mixed) "
        f"({_method_defaults('eta')})",
        "mixing",
    )
    mit_margin: float | None = _option(
        None,
        "under --method mit: the least lambda1 - lambda2 of its two mixes, in (0, 1) "
        f"({_method_defaults('mit_margin')})",
        "mixing",
    )
    augmix: bool = _option(
        False, "AugMix each image before mixing (--method augmix: AugMix alone, no mixing between images)", "mixing"
    )
    jsd: bool = _option(
        False,
        "with --method augmix: train on clean + two AugMix views with the Jensen-Shannon consistency loss "
        f"(weight {JSD_WEIGHT:g}, the AugMix paper's)",
        "mixing",
    )
    label_smoothing: float = _option(0.0, "label smoothing epsilon, both arms (default: %(default)s)", "mixing")
    crop_padding: int = _option(
        0,
        "random crop, every arm: pad each training image with N zero pixels on every side and crop it back to "
        "its size at a random offset (the CIFAR recipe: 4; default: %(default)s, no crop)",
        "data",
    )
    flip: bool = _option(
        False, "flip each training image left to right with probability 1/2, every arm (the CIFAR recipe)", "data"
    )
    normalize: bool = _option(
        False,
        "normalise the model's input per channel, (x - mean) / std, with the training split's statistics "
        "(the CIFAR recipe)",
        "data",
    )
    optimizer: str = _option(
        "adam",
        "adam (Keras' defaults, the keras.io reference) or sgd with momentum (the CIFAR tables) (default: %(default)s)",
        "optim",
        choices=OPTIMIZERS,
    )
    lr: float | None = _option(
        None,
        "learning rate (default per optimizer: "
        + ", ".join(f"{o}: {d['lr']:g}" for o, d in OPTIM_DEFAULTS.items())
        + ")",
        "optim",
    )
    momentum: float | None = _option(
        None, f"SGD momentum (default: {OPTIM_DEFAULTS['sgd']['momentum']:g}; sgd only)", "optim"
    )
    nesterov: bool | None = _option(None, "Nesterov momentum (sgd only)", "optim")
    weight_decay: float = _option(
        0.0,
        "L2 weight decay added to the gradient of every weight (the CIFAR recipe: 1e-4; default: %(default)s)",
        "optim",
    )
    schedule: str = _option(
        "constant",
        "learning-rate schedule, per step: constant; cosine from lr to 0 over the run; step: multiplied by "
        "--lr-factor after each epoch of --lr-milestones (default: %(default)s)",
        "optim",
        choices=SCHEDULES,
    )
    lr_milestones: tuple[int, ...] | None = _option(
        None,
        "with --schedule step: comma-separated epochs after which the learning rate is multiplied by "
        "--lr-factor (the mixup paper: 100,150)",
        "optim",
        parse=lambda text: tuple(text.split(",")),  # checked with the other options: one clear error
    )
    lr_factor: float | None = _option(
        None,
        f"with --schedule step: the factor at each milestone (default: {SCHEDULE_DEFAULTS['step']['lr_factor']:g})",
        "optim",
    )
    precision: str = _option(
        "fp32",
        "fp32; bf16: bfloat16 autocast of the forward pass (GPUs and AMX CPUs; slower on AVX2-only CPUs); "
        "auto: bf16 on a CUDA GPU that supports it, fp32 elsewhere (default: %(default)s)",
        "run",
        choices=PRECISIONS,
    )
    val_size: int = _option(
        2000, "the first N training images are held out for validation (default: %(default)s)", "data"
    )
    train_limit: int | None = _option(None, "use only the first N remaining training images (quick runs)", "data")
    test_limit: int | None = _option(None, "use only the first N test images (quick runs)", "data")
    seed: int = _option(0, "seed of initial weights, shuffling and mixing (default: %(default)s)", "run")
    channels_last: bool = _option(
        True, "keep NCHW memory format (slower on CPU)", "run", flag="--no-channels-last", turns_off=True
    )

    def resolved(self, *, inherited: frozenset[str] = frozenset()) -> Self:
        """This spec with the method's mixing defaults and the optimizer's and schedule's
        defaults applied (see :func:`resolve_mixing`, :func:`resolve_optim`)."""
        values = {name: getattr(self, name) for name in MIX_OPTIONS}
        optim = {name: getattr(self, name) for name in OPTIM_OPTIONS}
        if optim["lr_milestones"] is not None:
            optim["lr_milestones"] = check_lr_milestones(optim["lr_milestones"])
        return replace(
            self,
            **resolve_mixing(self.method, values, inherited=inherited),
            **resolve_optim(self.optimizer, self.schedule, optim, inherited=inherited),
        )

    def optim(self) -> OptimConfig:
        """The optimizer and schedule of the run (validated)."""
        spec = self.resolved()
        given = {name: getattr(spec, name) for name in OPTIM_OPTIONS if getattr(spec, name) is not None}
        return OptimConfig(optimizer=spec.optimizer, weight_decay=spec.weight_decay, schedule=spec.schedule, **given)

    def crop_flip(self) -> CropFlip | None:
        """The random crop and flip of the training images (every arm), or None (validated)."""
        check_int("crop_padding", self.crop_padding, minimum=0)
        if self.crop_padding == 0 and not self.flip:
            return None
        return CropFlip(self.crop_padding, self.flip)

    def for_data(self, input_shape: tuple[int, ...]) -> Self:
        """This spec with ``model`` set: the given one, else :func:`model_for_data` of one sample's shape."""
        return self if self.model is not None else replace(self, model=model_for_data(input_shape))

    def check_common(self) -> None:
        """Checks shared by every run: ranges of the data, length and seed options."""
        check_seed("seed", self.seed)
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        # 0 would leave no validation set: "best epoch" and early stopping need one.
        check_int("val_size", self.val_size, minimum=1)
        for name in ("train_limit", "test_limit"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        check_probability("label_smoothing", self.label_smoothing)
        if self.model is not None:
            check_model_name(self.model)
        check_choice("precision", self.precision, PRECISIONS)
        self.optim()
        self.crop_flip()
        self.check_augmentation()
        self.step_loss()  # RegMixup's eta, MIT's margin and pairing

    def mixing(self) -> MixConfig | None:
        """The :class:`MixConfig` of the resolved spec (validated); None for ``method="none"``.

        For ``method="manifold"`` this is the MixUp applied at the chosen layer."""
        spec = self.resolved()
        if spec.method in ("none", "augmix"):
            return None
        params = {name: getattr(spec, name) for name in METHOD_DEFAULTS[spec.method] if name not in _STEP_OPTIONS}
        method = "mixup" if spec.method in ("manifold", *STEP_LOSS_METHODS) else spec.method
        return MixConfig(method, **params)  # type: ignore[arg-type]

    def augmix_config(self) -> AugMixConfig | None:
        """AugMix per image (``method="augmix"``, or ``augmix`` on top of a mixing method)."""
        if self.method != "augmix" and not self.augmix:
            return None
        return AugMixConfig()

    def check_augmentation(self) -> None:
        """AugMix needs kornia; JSD needs AugMix and no mixing of the inputs."""
        if self.augmix_config() is not None and importlib.util.find_spec("kornia") is None:
            raise ValueError("AugMix needs kornia: pip install 'vicinal[augmix]'")
        if self.jsd and (
            self.augmix_config() is None or self.loader_mixing() is not None or self.method in STEP_LOSS_METHODS
        ):
            raise ValueError(
                "jsd needs AugMix without input mixing (method='augmix'): its views are clean, AugMix 1 and AugMix 2"
            )

    def loader_mixing(self) -> MixConfig | None:
        """What the data loader mixes: nothing for "none", "manifold" (mixed in the model),
        "regmixup" and "mit" (mixed in the step)."""
        return None if self.method in ("manifold", *STEP_LOSS_METHODS) else self.mixing()

    def step_loss(self) -> StepLoss | None:
        """RegMixup or MIT (validated), whose training step mixes the plain batches; else None."""
        if self.method not in STEP_LOSS_METHODS:
            return None
        spec = self.resolved()
        config = spec.mixing()
        assert config is not None
        return StepLoss(spec.method, config, eta=spec.eta, margin=spec.mit_margin)

    def manifold(self) -> tuple[MixConfig, tuple[str, ...]] | None:
        """``(config, layers)`` for ``method="manifold"``, else None."""
        if self.method != "manifold":
            return None
        spec = self.resolved()
        return spec.mixing(), spec.mix_layers  # type: ignore[return-value]

    def jsd_weight(self) -> float:
        """The weight of the JSD consistency loss: :data:`JSD_WEIGHT` with ``jsd``, else 0."""
        return JSD_WEIGHT if self.jsd else 0.0

    def describe_mixing(self) -> str:
        """One line naming the method and the options it uses, e.g. ``cutmix, cutmix_alpha=1``."""
        spec = self.resolved()
        words = [spec.method] + [f"{n}={getattr(spec, n)}" for n in METHOD_DEFAULTS[spec.method]]
        if spec.method == "none":
            words = ["no mixing"]
        if spec.augmix and spec.method != "augmix":
            words.append("AugMix")
        if spec.jsd:
            words.append(f"JSD x{JSD_WEIGHT:g}")
        return ", ".join(words)


@dataclass(frozen=True)
class CompareConfig(RunSpec):
    """Everything that defines a comparison run (saved, resolved, as ``config.json``)."""

    device: str = _option("cpu", "cpu or cuda[:N] (default: %(default)s)", "run")
    threads: int | None = _option(
        None, "CPU threads in all (default: torch's default); split between arms trained in parallel", "run"
    )
    parallel: bool = _option(
        True,
        "train the arms one after another instead of in parallel processes",
        "run",
        flag="--sequential",
        turns_off=True,
    )
    arms: tuple[str, ...] = ARMS
    mix_policy: str = _option(
        "independent",
        "under torchrun: independent plans per rank, the same plans on every rank (shared), or "
        "one plan over the global batch (global: results independent of the world size)",
        "run",
        choices=MIX_POLICIES,
    )
    dist_timeout_s: float = _option(
        300.0,
        "under torchrun: seconds a collective waits for a dead or stuck rank before failing",
        "run",
        flag="--dist-timeout",
    )

    def mix_config(self) -> MixConfig:
        """The mixing of the mixed arm (validated)."""
        config = self.mixing()
        if config is None:
            raise ValueError(f"method={self.method!r} mixes no images: it has no MixConfig")
        return config

    def validate(self) -> CompareConfig:
        """Check every option (before anything is loaded or written); returns the resolved config."""
        self.check_common()
        if self.threads is not None:
            check_int("threads", self.threads, minimum=1)
        check_device(self.device)
        check_choice("mix_policy", self.mix_policy, MIX_POLICIES)
        if not self.dist_timeout_s > 0:
            raise ValueError(f"dist_timeout_s must be > 0, got {self.dist_timeout_s}")
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise ValueError(f"arms must be a non-empty subset of {ARMS}, got {self.arms}")
        resolved = self.resolved()
        if resolved.method == "none":
            raise ValueError("vicinal compare needs a method for its treated arm, got method='none'")
        resolved.mixing()
        return resolved

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompareConfig:
        """A config from its ``config.json`` content; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"config.json has unknown keys {sorted(unknown)}")
        if "arms" in data:
            data = dict(data, arms=tuple(data["arms"]))
        return cls(**data)


@dataclass(frozen=True)
class CellSpec(RunSpec):
    """Everything one training run of a study depends on (``method="none"``: no mixing).

    Unlike a comparison run's, a cell's model defaults to the reference CNN rather than
    following the data: a cell's identity (its initial weights are
    ``<study>/init/<model>-seed<k>.pt``) is fixed by its TOML, before any data is read.
    """

    model: str | None = "reference-cnn"
    arm: str = "mixup"
    noise: float = 0.0
    corruptions: bool = False  # also evaluate on the corrupted test set (vicinal.experiments.corruptions)
    baseline: str | None = None  # arm(s) this one is compared with, comma-separated (default: chosen in the report)

    def mix_config(self) -> MixConfig | None:
        """The arm's mixing, or None for ``method="none"``."""
        return self.mixing()

    def validate(self, *, inherited: frozenset[str] = frozenset()) -> CellSpec:
        """Check every field; returns the resolved spec (see :meth:`RunSpec.resolved`)."""
        if not self.arm or "/" in self.arm or self.arm.startswith("."):
            raise ValueError(f"arm must be a plain folder name, got {self.arm!r}")
        resolved = self.resolved(inherited=inherited)
        resolved.check_common()
        if not 0 <= self.noise < 1:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        resolved.mixing()
        return resolved


def cell_dir(study_dir: Path, cell: CellSpec) -> Path:
    """Where a study's cell runs: ``<study>/cells/<arm>/seed<k>``."""
    return Path(study_dir) / "cells" / cell.arm / f"seed{cell.seed}"


#: The :class:`RunSpec` fields ``vicinal study`` can override in every arm of a study.
STUDY_OVERRIDES: tuple[str, ...] = ("epochs", "data_dir", "train_limit", "test_limit", "val_size", "precision")


@dataclass(frozen=True)
class StudySpec:
    """A study: every arm (a :class:`CellSpec` with its seed unset) for every seed."""

    name: str
    seeds: tuple[int, ...]
    arms: tuple[CellSpec, ...]
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[CellSpec]:
        """One cell per (seed, arm), seed-major."""
        return [replace(arm, seed=s) for s in self.seeds for arm in self.arms]

    def record(self) -> dict[str, Any]:
        """``study.json``'s content, as it reads back from JSON (tuples become lists), so
        that a saved study compares equal to the same spec parsed again."""
        arms: list[dict[str, Any]] = json.loads(json.dumps([asdict(a) for a in self.arms]))
        return {"name": self.name, "description": self.description, "seeds": list(self.seeds), "arms": arms}


def _grid_suffix(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cell_types() -> dict[str, Any]:
    """The type of each :class:`CellSpec` field, as a study's TOML may write it."""
    hints = typing.get_type_hints(CellSpec)
    hints["mix_layers"] = hints["mix_layers"] | str  # also "input,fc1" (check_mix_layers)
    return hints


def _check_cell_values(values: dict[str, Any], where: str) -> None:
    """Refuse a value of the wrong type (``batch_size = "64"``) in a study's TOML, naming where it is."""
    hints = _cell_types()
    for name, value in values.items():
        try:
            check_type(value, hints[name], name)
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}") from None


def parse_study(
    text: str, *, overrides: dict[str, Any] | None = None, seeds: int | None = None, source: str = "study"
) -> StudySpec:
    """A :class:`StudySpec` from TOML text; ``overrides`` replace CellSpec fields in every arm.

    The TOML holds ``name``, ``description``, ``seeds`` (a count or a list), ``[defaults]``
    (CellSpec fields shared by every arm), ``[[arms]]`` (each with a ``name`` and its own
    fields) and an optional ``[grid]``: every arm with ``grid = true`` is expanded over
    the cartesian product of its values.

    Args:
        source: names the study in errors (its file, or the preset).

    Raises:
        ValueError: invalid TOML, an unknown key, a value of the wrong type or out of
            range; the message names ``source`` and, where there is one, the arm.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML: {exc}") from None
    known = {f.name for f in fields(CellSpec)} - {"seed"}
    unknown_top = set(data) - {"name", "description", "seeds", "defaults", "arms", "grid"}
    if unknown_top:
        raise ValueError(f"{source}: unknown top-level keys {sorted(unknown_top)}")
    tables: dict[str, Any] = {
        "name": str,
        "description": str,
        "seeds": int | list[int],
        "defaults": dict[str, Any],
        "arms": list[dict[str, Any]],
        "grid": dict[str, list[Any]],
    }
    for key, hint in tables.items():
        if key in data:
            try:
                check_type(data[key], hint, key)
            except TypeError as exc:
                raise ValueError(f"{source}: {exc}") from None
    defaults = data.get("defaults", {})
    bad = set(defaults) - known
    if bad:
        raise ValueError(f"{source} [defaults]: unknown keys {sorted(bad)}; expected some of {sorted(known)}")
    _check_cell_values(defaults, f"{source} [defaults]")
    raw_seeds = data.get("seeds", 3) if seeds is None else seeds
    seed_list = tuple(range(raw_seeds)) if isinstance(raw_seeds, int) else tuple(int(s) for s in raw_seeds)
    if not seed_list:
        raise ValueError(f"{source}: seeds must name at least one seed")
    for seed in seed_list:
        check_seed("seeds", seed)
    grid = data.get("grid", {})
    bad = set(grid) - known
    if bad:
        raise ValueError(f"{source} [grid]: unknown keys {sorted(bad)}")
    arms: list[CellSpec] = []
    for entry in data.get("arms", []) or [{}]:
        entry = dict(entry)
        expand = entry.pop("grid", False)
        name = entry.pop("name", None) or entry.get("method", "arm")
        where = f"{source} arm {name!r}"
        bad = set(entry) - known
        if bad:
            raise ValueError(f"{where}: unknown keys {sorted(bad)}")
        _check_cell_values(entry, where)
        combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if expand and grid else [{}]
        for combo in combos:
            arm_name = name + "".join(f"-{k}{_grid_suffix(v)}" for k, v in combo.items())
            own = {**entry, **combo, "arm": arm_name, **(overrides or {})}
            values = {**defaults, **own}
            _check_cell_values(combo, f"{where} [grid]")
            # Mixing options from [defaults] that an arm's method doesn't use are dropped;
            # the same option set on the arm itself is an error.
            try:
                arms.append(CellSpec(**values).validate(inherited=frozenset(defaults) - set(own)))
            except TypeError as exc:  # a type the checks above let through
                raise ValueError(f"{where}: {exc}") from None
    names = [a.arm for a in arms]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"{source}: arm names must be unique, repeated: {sorted(dupes)}")
    return StudySpec(
        name=data.get("name", "study"),
        seeds=seed_list,
        arms=tuple(arms),
        description=data.get("description", ""),
        overrides=dict(overrides or {}),
    )


def load_study(preset_or_path: str, *, overrides: dict[str, Any] | None = None, seeds: int | None = None) -> StudySpec:
    """A preset name (see :data:`~vicinal.experiments.presets.PRESETS`) or the path of a TOML file."""
    if preset_or_path in PRESETS:
        text = resources.files("vicinal.experiments.presets").joinpath(f"{preset_or_path}.toml").read_text()
        source = f"preset {preset_or_path!r}"
    else:
        path = Path(preset_or_path)
        if not path.is_file():
            raise ValueError(f"study must be one of {list(PRESETS)} or a TOML file, got {preset_or_path!r}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the study file ({exc})") from None
        source = str(path)
    return parse_study(text, overrides=overrides, seeds=seeds, source=source)


# --------------------------------------------------------------------------- study folder records

#: What to do with a ``study.json`` that can't be used: ``vicinal study`` writes it again.
STUDY_REMEDY = "delete it and run the study's command again to write it again (finished cells are kept)"


@dataclass(frozen=True)
class _StudyRecord:
    """The schema of ``study.json`` (:meth:`StudySpec.record`); each arm holds :class:`CellSpec`'s fields."""

    name: str
    description: str
    seeds: list[int]
    arms: list[dict[str, Any]]


def check_study_record(data: Any) -> None:
    """Raise ValueError or TypeError unless ``data`` is ``study.json``'s content."""
    check_fields(_StudyRecord, data, what="a study's fields")
    check_arms(CellSpec, data["arms"], what="a study arm's fields")


def read_study(path: Path) -> dict[str, Any]:
    """``study.json``, verified and checked (:func:`check_study_record`).

    Raises:
        UnreadableFileError: damaged or of another schema; names the file.
    """
    record: dict[str, Any] = read_json(path, check=check_study_record, remedy=STUDY_REMEDY)
    return record


#: The keys ``cell.json`` holds besides the cell's :class:`CellSpec` fields.
CELL_RECORD_EXTRA = ("data_source", "split_rule", "batch_seeds")


def read_cell_record(path: Path) -> dict[str, Any]:
    """A cell's ``cell.json`` (what ran, on which data), verified and checked.

    Raises:
        UnreadableFileError: damaged or of another schema; names the file.
    """
    record: dict[str, Any] = read_json(
        path,
        check=lambda d: check_fields(CellSpec, d, extra=CELL_RECORD_EXTRA, what="a cell's fields"),
        remedy="delete it: it is written again when the cell trains",
    )
    return record


def read_failure(cell_folder: Path) -> CellFailure | None:
    """The failure record (``failed.json``) of the cell whose folder is ``cell_folder``, or None."""
    path = Path(cell_folder) / FAILED
    if not path.exists():
        return None
    data = read_json(path, check=lambda d: check_fields(CellFailure, d), remedy="delete it")
    return CellFailure(**data)
