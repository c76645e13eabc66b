"""Callable batch transforms and one-call functions built on plans.

Each transform maps ``(x, y) -> (x_mixed, y_mixed)`` for a whole batch. It draws the
plan for ``(seed, epoch, step, rank)``; ``step`` counts successful calls since the last
:meth:`Mixer.set_epoch` unless given explicitly, so a transform is reproducible
whatever process calls it, provided it is told where it is.

>>> import numpy as np
>>> from vicinal import MixUp
>>> mix = MixUp(alpha=0.2, num_classes=10, seed=0)
>>> x, y = np.zeros((8, 1, 28, 28), np.float32), np.arange(8)
>>> x_mixed, y_mixed = mix(x, y)
>>> x_mixed.shape, y_mixed.shape, bool(np.allclose(y_mixed.sum(axis=1), 1.0))
((8, 1, 28, 28), (8, 10), True)
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from vicinal._checks import check_choice, check_concentration, check_int, check_probability
from vicinal._stepper import Counted, StepCounter
from vicinal.labels import batch_size_of, is_torch_tensor, torch_compiling
from vicinal.mixing import (
    DATA_FORMATS,
    DataFormat,
    PlanTensors,
    TargetFormat,
    apply_plan,
    place_boxes,
    plan_to_tensors,
    spatial_size,
)
from vicinal.sampling import (
    ApplyMode,
    Granularity,
    MixConfig,
    MixPlan,
    Pairing,
    SmoothShape,
    identity_plan,
    sample_plan,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "CutMix",
    "FMix",
    "GridMix",
    "KWayMix",
    "MixOptions",
    "MixUp",
    "MixUpOrCutMix",
    "Mixer",
    "RandomMethod",
    "ResizeMix",
    "SaliencyMix",
    "SmoothMix",
    "cutmix",
    "indexed_batch_plan",
    "mix_indexed_batch",
    "mixup",
]


class MixOptions(TypedDict, total=False):
    """Keywords every transform takes besides its method's own parameters.

    ``granularity``, ``pairing``, ``p`` and ``p_mode`` are :class:`MixConfig` fields;
    the others are :class:`Mixer` arguments.
    """

    granularity: Granularity
    pairing: Pairing
    p: float
    p_mode: ApplyMode
    num_classes: int | None
    label_smoothing: float
    seed: int
    rank: int
    targets: TargetFormat
    data_format: DataFormat
    validate: bool
    check_finite: bool
    multi_label: bool


_CONFIG_KEYS = frozenset({"granularity", "pairing", "p", "p_mode"})
_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(MixConfig)) - {"method", "choices", "choice_mode"}


def _eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run outside any ``torch.compile`` graph (only called for torch inputs)."""
    return sys.modules["torch"].compiler.disable(fn)  # type: ignore[no-any-return]


class Mixer(Counted):
    """Mixes batches according to a :class:`~vicinal.sampling.MixConfig`.

    Args:
        config: what to mix.
        num_classes: needed when labels are class ids.
        label_smoothing: ε in [0, 1] applied to labels before mixing.
        seed, rank: the plan stream (rank: the process in a distributed run).
        targets: ``"dense"`` float32 (B, C) targets or ``"pair"`` (y_a, y_b, lam).
        data_format: ``"channels_first"`` (B, C, H, W) or ``"channels_last"``
            (B, H, W, C); the axis order, which only CutMix needs.
        off_epoch: from this epoch on, batches pass through unmixed (labels still become
            soft targets, smoothed): timm's ``mixup_off_epoch``. ``None``: never.
        validate, check_finite, multi_label: passed to :func:`vicinal.apply_plan`
            (``validate=False``: no host read per call, for GPU loops; ``check_finite``:
            refuse NaN/inf inputs naming the samples; ``multi_label``: multi-hot targets).

    Attributes:
        enabled: set to False to pass batches through unmixed (timm's
            ``mixup_enabled``); steps are still counted.
    """

    def __init__(
        self,
        config: MixConfig,
        *,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        targets: TargetFormat = "dense",
        data_format: DataFormat = "channels_first",
        off_epoch: int | None = None,
        validate: bool = True,
        check_finite: bool = False,
        multi_label: bool = False,
    ) -> None:
        if not isinstance(config, MixConfig):
            raise TypeError(f"config must be a MixConfig, got {type(config).__name__}")
        self.config = config
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, minimum=1)
        self.label_smoothing = check_probability("label_smoothing", label_smoothing)
        self.seed = check_int("seed", seed, minimum=0)
        self.rank = check_int("rank", rank, minimum=0)
        self.targets: TargetFormat = check_choice("targets", targets, ("dense", "pair"))  # type: ignore[assignment]
        self.data_format: DataFormat = check_choice("data_format", data_format, DATA_FORMATS)  # type: ignore[assignment]
        if targets == "pair" and config.num_sources != 2:
            raise ValueError("targets='pair' needs a two-source mixing (not method='kway')")
        self.off_epoch = None if off_epoch is None else check_int("off_epoch", off_epoch, minimum=0)
        for name, flag in (("validate", validate), ("check_finite", check_finite), ("multi_label", multi_label)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        self.validate, self.check_finite, self.multi_label = validate, check_finite, multi_label
        self.enabled = True
        self.counter = StepCounter()

    @classmethod
    def from_timm(
        cls,
        mixup_alpha: float = 1.0,
        cutmix_alpha: float = 0.0,
        cutmix_minmax: tuple[float, float] | None = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        correct_lam: bool = True,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
        *,
        seed: int = 0,
        rank: int = 0,
        off_epoch: int | None = None,
    ) -> Mixer:
        """A mixer with timm's ``Mixup`` arguments, defaults and semantics.

        Partners are the flipped batch (``i <-> B-1-i``); ``mode`` is ``"batch"`` (one λ
        and one mixup-or-cutmix decision per batch), ``"pair"`` (per pair of partners) or
        ``"elem"`` (per sample); ``prob`` is tossed per batch, pair or sample likewise.
        Both alphas > 0 switch between MixUp and CutMix with ``switch_prob``; ``cutmix_minmax`` forces CutMix
        with side ratios drawn in that range. Unlike timm, the plans are a pure function
        of ``(seed, epoch, step)``, λ is kept in float64 (timm rounds it to float32,
        which leaves λ = 1 for a few percent of samples at small α), and the input is
        not modified unless ``out=x`` is passed.

        >>> mix = Mixer.from_timm(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=10)
        >>> mix.config.method, mix.config.pairing, mix.label_smoothing
        ('switch', 'flip', 0.1)
        """
        check_choice("mode", mode, ("batch", "pair", "elem"))
        check_concentration("mixup_alpha", mixup_alpha)
        cutmix_on = check_concentration("cutmix_alpha", cutmix_alpha) > 0 or cutmix_minmax is not None
        if mixup_alpha > 0 and cutmix_on:
            method = "switch"
        elif cutmix_on:
            method = "cutmix"
        elif mixup_alpha > 0:
            method = "mixup"
        else:
            raise ValueError("one of mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax must be given")
        config = MixConfig(
            method,  # type: ignore[arg-type]
            alpha=mixup_alpha if mixup_alpha > 0 else 1.0,
            cutmix_alpha=1.0 if cutmix_minmax is not None else (cutmix_alpha if cutmix_alpha > 0 else 1.0),
            switch_prob=switch_prob,
            granularity=mode,  # type: ignore[arg-type]
            pairing="flip",
            p=prob,
            p_mode="batch" if mode == "batch" else "elem",  # timm tosses prob per pair in "pair" mode
            correct_lam=correct_lam,
            cutmix_minmax=cutmix_minmax,
        )
        return cls(
            config,
            num_classes=num_classes,
            label_smoothing=label_smoothing,
            seed=seed,
            rank=rank,
            off_epoch=off_epoch,
        )

    def is_active(self, epoch: int | None = None) -> bool:
        """Whether batches of ``epoch`` (default: the current one) are mixed."""
        epoch = self.epoch if epoch is None else epoch
        return self.enabled and (self.off_epoch is None or epoch < self.off_epoch)

    @classmethod
    def _from_options(cls, method: str, params: dict[str, Any], options: MixOptions) -> dict[str, Any]:
        """Split ``options`` into the config (built here) and the Mixer's own arguments."""
        config_fields = {k: v for k, v in options.items() if k in _CONFIG_KEYS}
        mixer_args = {k: v for k, v in options.items() if k not in _CONFIG_KEYS}
        return {"config": MixConfig(method, **params, **config_fields), **mixer_args}  # type: ignore[arg-type]

    def plan(
        self,
        x: Any,
        *,
        step: int,
        epoch: int | None = None,
        dataset_size: int | None = None,
        x_partner: Any = None,
    ) -> MixPlan:
        """The plan this mixer uses for batch ``x`` at ``step``: drawn from the seed, then
        (SaliencyMix) placed from the images (:func:`vicinal.mixing.place_boxes`)."""
        image_size = spatial_size(x, self.data_format) if self.config.needs_image_size else None
        plan = sample_plan(
            self.config,
            batch_size_of("x", x),
            seed=self.seed,
            epoch=self.epoch if epoch is None else epoch,
            step=step,
            rank=self.rank,
            image_size=image_size,
            dataset_size=dataset_size,
        )
        if not plan.is_placed:
            plan = place_boxes(plan, x, x_partner=x_partner, data_format=self.data_format)
        return plan

    def _active_plan(self, x: Any, x_partner: Any, step: int, epoch: int) -> MixPlan:
        plan = self.plan(x, step=step, epoch=epoch, x_partner=x_partner)
        return plan if self.is_active(epoch) else identity_plan(plan)

    def _plan_tensors(self, x: Any, x_partner: Any, step: int | None, epoch: int | None) -> tuple[Any, bool]:
        """The call's plan as tensors on x's device, and whether it was counted."""
        e, s, counted = self.counter.resolve(step, epoch)
        return plan_to_tensors(self._active_plan(x, x_partner, s, e), x.device), counted

    def __call__(
        self,
        x: Any,
        y: Any = None,
        *,
        x_partner: Any = None,
        y_partner: Any = None,
        step: int | None = None,
        epoch: int | None = None,
        out: Any = None,
    ) -> tuple[Any, Any]:
        """Mix one batch. ``step=None`` uses (and, on success, advances) the internal count.

        Args:
            x: (B, ...) inputs, NumPy or torch (see :func:`vicinal.apply_plan`).
            y: int class ids (B,) or soft labels (B, C), or None.
            x_partner, y_partner: the second batch for ``pairing="stream"``.
            step, epoch: where this batch is; default: the mixer's own count and epoch.
            out: torch only: a buffer like ``x`` to write into (``x`` itself: in place).

        Returns:
            ``(x_mixed, y_mixed)`` as :func:`vicinal.apply_plan` returns them.
        """
        plan: MixPlan | PlanTensors
        if is_torch_tensor(x) and torch_compiling():
            # torch.compile traces this call (a whole training step compiled): NumPy's plan
            # draws cannot be traced, so they run eagerly, outside the graph, and the plan
            # enters it as tensors; the counter is read and advanced outside it too, so
            # the graph does not depend on (and is not recompiled for) the step.
            plan, counted = _eager(self._plan_tensors)(x, x_partner, step, epoch)
        else:
            e, s, counted = self.counter.resolve(step, epoch)
            plan = self._active_plan(x, x_partner, s, e)
        mixed = apply_plan(
            plan,
            x,
            y,
            num_classes=self.num_classes,
            label_smoothing=self.label_smoothing,
            x_partner=x_partner,
            y_partner=y_partner,
            out=out,
            data_format=self.data_format,
            targets=self.targets,
            validate=self.validate,
            check_finite=self.check_finite,
            multi_label=self.multi_label,
        )
        if counted:  # a call that raised does not use up a step
            if is_torch_tensor(x) and torch_compiling():
                _eager(self.counter.advance)()
            else:
                self.counter.advance()
        return mixed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config}, num_classes={self.num_classes}, seed={self.seed})"


class MixUp(Mixer):
    """MixUp (Zhang et al. 2017): ``x = λ·x_i + (1-λ)·x_j``, λ ~ Beta(alpha, beta).

    Defaults follow the keras.io reference: α = 0.2, one λ per sample. ``options``: see
    :class:`MixOptions`.
    """

    def __init__(self, alpha: float = 0.2, *, beta: float | None = None, **options: Unpack[MixOptions]) -> None:
        super().__init__(**self._from_options("mixup", {"alpha": alpha, "beta": beta}, options))


class CutMix(Mixer):
    """CutMix (Yun et al. 2019): paste a box of the partner; λ is the exact kept area."""

    def __init__(self, alpha: float = 1.0, **options: Unpack[MixOptions]) -> None:
        super().__init__(**self._from_options("cutmix", {"cutmix_alpha": check_concentration("alpha", alpha)}, options))


class MixUpOrCutMix(Mixer):
    """CutMix with probability ``switch_prob``, else MixUp, decided per λ draw (the
    two-method case of :class:`RandomMethod`, with the draws of earlier versions)."""

    def __init__(
        self,
        mixup_alpha: float = 0.2,
        cutmix_alpha: float = 1.0,
        *,
        switch_prob: float = 0.5,
        **options: Unpack[MixOptions],
    ) -> None:
        params = {"alpha": mixup_alpha, "cutmix_alpha": cutmix_alpha, "switch_prob": switch_prob}
        super().__init__(**self._from_options("switch", params, options))


class KWayMix(Mixer):
    """Convex combination of ``k`` samples with Dirichlet(alpha·1_k) weights."""

    def __init__(self, alpha: float = 0.2, k: int = 3, **options: Unpack[MixOptions]) -> None:
        super().__init__(**self._from_options("kway", {"alpha": alpha, "k": k}, options))


class FMix(Mixer):
    """FMix (Harris et al. 2020): a binarised low-frequency Fourier mask; the label
    weight is the mask's exact mean (:func:`vicinal.masks.fmix_masks`)."""

    def __init__(
        self, alpha: float = 1.0, *, decay: float = 3.0, max_soft: float = 0.0, **options: Unpack[MixOptions]
    ) -> None:
        params = {"mask_alpha": check_concentration("alpha", alpha), "fmix_decay": decay, "fmix_max_soft": max_soft}
        super().__init__(**self._from_options("fmix", params, options))


class ResizeMix(Mixer):
    """ResizeMix (Qin et al. 2020): the whole partner shrunk to a side scale
    τ ~ U(scale) and pasted inside the image; label weight: the pasted area."""

    def __init__(self, scale: tuple[float, float] = (0.1, 0.8), **options: Unpack[MixOptions]) -> None:
        super().__init__(**self._from_options("resizemix", {"resize_scale": scale}, options))


class GridMix(Mixer):
    """A grid of n×n cells, each from the partner with probability 1-λ
    (:func:`vicinal.masks.gridmix_masks`); label weight: the realised share."""

    def __init__(self, alpha: float = 1.0, *, grid: tuple[int, int] = (2, 6), **options: Unpack[MixOptions]) -> None:
        params = {"mask_alpha": check_concentration("alpha", alpha), "grid": grid}
        super().__init__(**self._from_options("gridmix", params, options))


class SmoothMix(Mixer):
    """SmoothMix (Lee et al. 2020): a soft blob mask G of the partner; label weight:
    the exact mean of G for the partner (:func:`vicinal.masks.smoothmix_masks`)."""

    def __init__(
        self,
        shape: SmoothShape = "gaussian",
        *,
        sigma: tuple[float, float] = (0.25, 0.5),
        **options: Unpack[MixOptions],
    ) -> None:
        super().__init__(**self._from_options("smoothmix", {"smooth_shape": shape, "smooth_sigma": sigma}, options))


class SaliencyMix(Mixer):
    """SaliencyMix (Uddin et al. 2021): a CutMix box centred on the partner's
    spectral-residual saliency peak (placed from the images each call)."""

    def __init__(self, alpha: float = 1.0, **options: Unpack[MixOptions]) -> None:
        params = {"mask_alpha": check_concentration("alpha", alpha)}
        super().__init__(**self._from_options("saliencymix", params, options))


class RandomMethod(Mixer):
    """One of several methods per λ draw (``mode="elem"``) or per batch (``"batch"``),
    with the given probabilities; each method's parameters are :class:`MixConfig`
    fields passed as keywords (``alpha``, ``cutmix_alpha``, ``mask_alpha``, ...).

    >>> mix = RandomMethod({"mixup": 0.5, "cutmix": 0.3, "fmix": 0.2}, num_classes=10)
    >>> mix.config.methods
    ('mixup', 'cutmix', 'fmix')
    """

    def __init__(self, choices: Mapping[str, float], *, mode: ApplyMode = "elem", **options: Any) -> None:
        config_fields = {k: v for k, v in options.items() if k in _CONFIG_FIELDS}
        mixer_args = {k: v for k, v in options.items() if k not in _CONFIG_FIELDS}
        config = MixConfig("choice", choices=tuple(dict(choices).items()), choice_mode=mode, **config_fields)
        super().__init__(config, **mixer_args)


def mixup(
    x: Any,
    y: Any = None,
    *,
    alpha: float = 0.2,
    num_classes: int | None = None,
    seed: int,
    step: int,
    epoch: int = 0,
    **options: Any,
) -> tuple[Any, Any]:
    """One-call MixUp of a batch.

    ``step`` is required: the plan is a pure function of ``(seed, epoch, step)``, so
    calls that repeated a step would repeat its λ and partners. ``options`` are
    :class:`MixOptions` keys, :class:`MixConfig` fields or :func:`apply_plan` keywords
    (``x_partner``, ``y_partner``, ``out``).
    """
    return _one_call("mixup", x, y, {"alpha": alpha}, num_classes, seed, epoch, step, options)


def cutmix(
    x: Any,
    y: Any = None,
    *,
    alpha: float = 1.0,
    num_classes: int | None = None,
    seed: int,
    step: int,
    epoch: int = 0,
    **options: Any,
) -> tuple[Any, Any]:
    """One-call CutMix of a batch; see :func:`mixup` for ``step`` and ``options``."""
    params = {"cutmix_alpha": check_concentration("alpha", alpha)}
    return _one_call("cutmix", x, y, params, num_classes, seed, epoch, step, options)


_CALL_KEYS = frozenset({"x_partner", "y_partner", "out"})
_MIXER_KEYS = frozenset(
    {"targets", "label_smoothing", "data_format", "rank", "validate", "check_finite", "multi_label"}
)


def _one_call(
    method: str,
    x: Any,
    y: Any,
    params: dict[str, Any],
    num_classes: int | None,
    seed: int,
    epoch: int,
    step: int,
    options: dict[str, Any],
) -> tuple[Any, Any]:
    call_kw = {k: v for k, v in options.items() if k in _CALL_KEYS}
    mixer_kw = {k: v for k, v in options.items() if k in _MIXER_KEYS}
    config_kw = {k: v for k, v in options.items() if k not in _CALL_KEYS | _MIXER_KEYS}
    mixer = Mixer(MixConfig(method, **params, **config_kw), num_classes=num_classes, seed=seed, **mixer_kw)  # type: ignore[arg-type]
    return mixer(x, y, step=check_int("step", step, minimum=0), epoch=epoch, **call_kw)


def indexed_batch_plan(
    config: MixConfig,
    fetch: Callable[[np.ndarray], tuple[Any, Any]],
    indices: np.ndarray,
    *,
    image_size: tuple[int, int] | None,
    dataset_size: int,
    stream_offset: int,
    seed: int,
    epoch: int,
    step: int,
    rank: int = 0,
    data_format: DataFormat = "channels_first",
    batch: tuple[Any, Any] | None = None,
) -> tuple[MixPlan, tuple[Any, Any] | None, tuple[Any, Any] | None]:
    """The plan of a batch of dataset rows ``indices``, placed: the recipe of
    :func:`mix_indexed_batch` without the mixing (the ``tf.data`` pipeline mixes in its
    graph).

    The plan of ``(seed, epoch, step, rank)`` with the second stream's batch at
    ``stream_offset`` of ``dataset_size`` (``pairing="stream"``); SaliencyMix's boxes
    are placed on the fetched images. Fetches only what the plan needs.

    Args:
        image_size: (H, W) of the images, for methods that paste (None: read from the
            fetched batch).
        batch: ``fetch(indices)``, when the caller has it already.

    Returns:
        ``(plan, batch, partner_batch)``: the batches it fetched (or was given), or None.
    """
    partner_batch = None
    if config.needs_image_size and image_size is None:
        batch = fetch(indices) if batch is None else batch
        image_size = spatial_size(batch[0], data_format)
    plan = sample_plan(
        config,
        len(indices),
        seed=seed,
        epoch=epoch,
        step=step,
        rank=rank,
        image_size=image_size if config.needs_image_size else None,
        dataset_size=dataset_size,
        stream_offset=stream_offset,
    )
    if not plan.is_placed:
        batch = fetch(indices) if batch is None else batch
        if plan.stream_indices is not None:
            partner_batch = fetch(plan.stream_indices)
        plan = place_boxes(
            plan, batch[0], x_partner=None if partner_batch is None else partner_batch[0], data_format=data_format
        )
    return plan, batch, partner_batch


def mix_indexed_batch(
    config: MixConfig,
    fetch: Callable[[np.ndarray], tuple[Any, Any]],
    indices: np.ndarray,
    *,
    dataset_size: int,
    stream_offset: int,
    seed: int,
    epoch: int,
    step: int,
    rank: int = 0,
    num_classes: int,
    label_smoothing: float = 0.0,
    in_place: bool = False,
    data_format: DataFormat = "channels_first",
    check_finite: bool = False,
) -> tuple[Any, Any]:
    """Fetch rows ``indices`` of an in-memory dataset and mix them by the step's plan.

    The recipe shared by the harness's loader and Keras' ``MixedBatches``: draw the
    plan of ``(seed, epoch, step, rank)`` (:func:`indexed_batch_plan`), fetch the
    partner rows of a second stream when the plan has one (``pairing="stream"``: the
    keras.io reference), then mix.

    Args:
        fetch: ``fetch(idx) -> (x, y)``, the inputs (B, ...) and labels (B,) of dataset
            rows ``idx`` (int64 (B,)).
        indices: the batch's dataset rows.
        dataset_size, stream_offset: where the second stream's batch lies
            (see :func:`~vicinal.sampling.sample_plan`).
        in_place: torch only: mix into the fetched ``x`` (it is a fresh copy).
        check_finite: refuse rows holding NaN or inf (see :func:`vicinal.apply_plan`).

    Returns:
        ``(x_mixed, y_mixed)``: inputs like ``fetch``'s and float32 (B, C) targets.
    """
    batch = fetch(indices)
    plan, _, partner_batch = indexed_batch_plan(
        config,
        fetch,
        indices,
        image_size=None,
        batch=batch,
        dataset_size=dataset_size,
        stream_offset=stream_offset,
        seed=seed,
        epoch=epoch,
        step=step,
        rank=rank,
        data_format=data_format,
    )
    x, y = batch
    x_partner = y_partner = None
    if plan.stream_indices is not None:
        x_partner, y_partner = fetch(plan.stream_indices) if partner_batch is None else partner_batch
    return apply_plan(
        plan,
        x,
        y,
        num_classes=num_classes,
        label_smoothing=label_smoothing,
        x_partner=x_partner,
        y_partner=y_partner,
        out=x if in_place else None,
        data_format=data_format,
        check_finite=check_finite,
    )
