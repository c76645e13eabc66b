"""Callable batch transforms and one-call functions built on plans.

Each transform maps ``(x, y) -> (x_mixed, y_mixed)`` for a whole batch. It draws the
plan for ``(seed, epoch, step, rank)``; ``step`` counts calls since the last
:meth:`Mixer.set_epoch` unless given explicitly, so a transform is reproducible
whatever process calls it, provided it is told where it is.
"""

from __future__ import annotations

from typing import Any

from vicinal._checks import check_int
from vicinal.labels import batch_size_of
from vicinal.mixing import TargetFormat, apply_plan
from vicinal.sampling import ApplyMode, Granularity, MixConfig, MixPlan, Pairing, sample_plan


class Mixer:
    """Mixes batches according to a :class:`~vicinal.sampling.MixConfig`.

    Args:
        config: what to mix.
        num_classes: needed when labels are class ids.
        label_smoothing: ε applied to labels before mixing.
        seed, rank: the plan stream (rank: the process in a distributed run).
        targets: ``"dense"`` float32 (B, C) targets or ``"pair"`` (y_a, y_b, lam).
        channels_last: images are (B, H, W, C) (matters for CutMix).
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
        channels_last: bool = False,
    ) -> None:
        if not isinstance(config, MixConfig):
            raise TypeError(f"config must be a MixConfig, got {type(config).__name__}")
        self.config = config
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, minimum=1)
        self.label_smoothing = label_smoothing
        self.seed = check_int("seed", seed, minimum=0)
        self.rank = check_int("rank", rank, minimum=0)
        self.targets = targets
        self.channels_last = channels_last
        self.epoch = 0
        self._step = 0

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` and restart the step count (call before each epoch)."""
        self.epoch = check_int("epoch", epoch, minimum=0)
        self._step = 0

    def plan(self, x: Any, *, step: int, epoch: int | None = None, dataset_size: int | None = None) -> MixPlan:
        """The plan this mixer uses for batch ``x`` at ``step``."""
        image_size = None
        if self.config.needs_image_size:
            if getattr(x, "ndim", 0) < 3:
                raise ValueError(
                    f"CutMix needs x with at least 2 spatial dims (B, H, W[, ...]), got shape {tuple(x.shape)}"
                )
            shape = tuple(x.shape)
            image_size = shape[-3:-1] if self.channels_last else shape[-2:]
        return sample_plan(
            self.config,
            batch_size_of("x", x),
            seed=self.seed,
            epoch=self.epoch if epoch is None else epoch,
            step=step,
            rank=self.rank,
            image_size=image_size,
            dataset_size=dataset_size,
        )

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
        if step is None:
            step = self._step
            self._step += 1
        plan = self.plan(x, step=step, epoch=epoch)
        return apply_plan(
            plan,
            x,
            y,
            num_classes=self.num_classes,
            label_smoothing=self.label_smoothing,
            x_partner=x_partner,
            y_partner=y_partner,
            out=out,
            channels_last=self.channels_last,
            targets=self.targets,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config}, num_classes={self.num_classes}, seed={self.seed})"


class MixUp(Mixer):
    """MixUp (Zhang et al. 2017): ``x = λ·x_i + (1-λ)·x_j``, λ ~ Beta(alpha, beta).

    Defaults follow the keras.io reference: α = 0.2, one λ per sample.
    """

    def __init__(
        self,
        alpha: float = 0.2,
        *,
        beta: float | None = None,
        granularity: Granularity = "elem",
        pairing: Pairing = "roll",
        p: float = 1.0,
        p_mode: ApplyMode = "batch",
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        targets: TargetFormat = "dense",
    ) -> None:
        config = MixConfig(
            "mixup", alpha=alpha, beta=beta, granularity=granularity, pairing=pairing, p=p, p_mode=p_mode
        )
        super().__init__(
            config, num_classes=num_classes, label_smoothing=label_smoothing, seed=seed, rank=rank, targets=targets
        )


class CutMix(Mixer):
    """CutMix (Yun et al. 2019): paste a box of the partner; λ is the exact kept area."""

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        granularity: Granularity = "elem",
        pairing: Pairing = "roll",
        p: float = 1.0,
        p_mode: ApplyMode = "batch",
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        targets: TargetFormat = "dense",
        channels_last: bool = False,
    ) -> None:
        config = MixConfig("cutmix", cutmix_alpha=alpha, granularity=granularity, pairing=pairing, p=p, p_mode=p_mode)
        super().__init__(
            config,
            num_classes=num_classes,
            label_smoothing=label_smoothing,
            seed=seed,
            rank=rank,
            targets=targets,
            channels_last=channels_last,
        )


class MixUpOrCutMix(Mixer):
    """CutMix with probability ``switch_prob``, else MixUp, decided per λ draw."""

    def __init__(
        self,
        mixup_alpha: float = 0.2,
        cutmix_alpha: float = 1.0,
        *,
        switch_prob: float = 0.5,
        granularity: Granularity = "elem",
        pairing: Pairing = "roll",
        p: float = 1.0,
        p_mode: ApplyMode = "batch",
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        targets: TargetFormat = "dense",
        channels_last: bool = False,
    ) -> None:
        config = MixConfig(
            "switch",
            alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            switch_prob=switch_prob,
            granularity=granularity,
            pairing=pairing,
            p=p,
            p_mode=p_mode,
        )
        super().__init__(
            config,
            num_classes=num_classes,
            label_smoothing=label_smoothing,
            seed=seed,
            rank=rank,
            targets=targets,
            channels_last=channels_last,
        )


class KWayMix(Mixer):
    """Convex combination of ``k`` samples with Dirichlet(alpha·1_k) weights."""

    def __init__(
        self,
        alpha: float = 0.2,
        k: int = 3,
        *,
        granularity: Granularity = "elem",
        pairing: Pairing = "roll",
        p: float = 1.0,
        p_mode: ApplyMode = "batch",
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        config = MixConfig("kway", alpha=alpha, k=k, granularity=granularity, pairing=pairing, p=p, p_mode=p_mode)
        super().__init__(config, num_classes=num_classes, label_smoothing=label_smoothing, seed=seed, rank=rank)


def mixup(
    x: Any,
    y: Any = None,
    *,
    alpha: float = 0.2,
    num_classes: int | None = None,
    seed: int,
    epoch: int = 0,
    step: int = 0,
    **options: Any,
) -> tuple[Any, Any]:
    """One-call MixUp of a batch; ``options`` are :class:`MixConfig` fields or
    :func:`apply_plan` keywords (``x_partner``, ``y_partner``, ``out``, ``targets`` ...)."""
    return _one_call("mixup", x, y, dict(alpha=alpha), num_classes, seed, epoch, step, options)


def cutmix(
    x: Any,
    y: Any = None,
    *,
    alpha: float = 1.0,
    num_classes: int | None = None,
    seed: int,
    epoch: int = 0,
    step: int = 0,
    **options: Any,
) -> tuple[Any, Any]:
    """One-call CutMix of a batch; see :func:`mixup` for ``options``."""
    return _one_call("cutmix", x, y, dict(cutmix_alpha=alpha), num_classes, seed, epoch, step, options)


_APPLY_KEYS = {"x_partner", "y_partner", "out", "targets", "label_smoothing", "channels_last"}


def _one_call(method, x, y, params, num_classes, seed, epoch, step, options):  # type: ignore[no-untyped-def]
    apply_kw = {k: v for k, v in options.items() if k in _APPLY_KEYS}
    config = MixConfig(method, **params, **{k: v for k, v in options.items() if k not in _APPLY_KEYS})
    mixer = Mixer(
        config,
        num_classes=num_classes,
        seed=seed,
        label_smoothing=apply_kw.pop("label_smoothing", 0.0),
        targets=apply_kw.pop("targets", "dense"),
        channels_last=apply_kw.pop("channels_last", False),
    )
    return mixer(x, y, step=step, epoch=epoch, **apply_kw)
