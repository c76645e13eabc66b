"""In-memory batches for datasets that fit in RAM (the MNISTs, CIFAR-sized sets, tables).

Images stay ``uint8`` in one tensor; each step gathers its rows (1 byte per pixel),
converts them to float32 in [0, 1] and mixes them in place. Feature arrays (``float32``
``(N, F)`` tabular rows or ``(N, T, F)`` sequences) are gathered and mixed as they are:
see :func:`input_kind`. The order of each epoch is
:func:`vicinal.sampling.epoch_order` of the seed, and the mixing plan of each step is
:func:`vicinal.sampling.sample_plan` of ``(seed, epoch, step, rank)``, so an epoch is
reproducible on its own: resuming at epoch ``e`` replays exactly what an uninterrupted
run would have seen. No per-sample Python runs on this path.

The CIFAR recipe's baseline augmentation (``crop``: random crop with zero padding and
horizontal flip, :mod:`vicinal.experiments.augment`) applies to every batch, mixed or
plain, before mixing and AugMix: its draws are a pure function of ``(seed, epoch, step,
rank)`` too, drawn with the epoch's plans and moved with them, and applied on the
device by one gather on the ``uint8`` rows. With ``normalize`` the loader measures the
per-channel statistics of its images (:attr:`InMemoryLoader.normalization`); the model
applies them (:meth:`vicinal.experiments.augment.ChannelStats.attach`), so that
training and evaluation see the same normalisation.

On any device the batches come from an :class:`EpochPlan`: the NumPy draws of a whole
epoch (every step's dataset rows and mixing plan) are made on the host, packed into one
buffer and moved to the loader's device in a single (pinned, non-blocking) copy; each
step then slices it. With the data resident on the device as ``uint8``, a step's
gathering, scaling and mixing are device ops only and make no host read, so a CUDA
epoch runs without a host synchronisation. On the CPU the copy is skipped and the
batches are bit for bit those of the per-step recipe
(:func:`vicinal.transforms.mix_indexed_batch`, kept as
:meth:`InMemoryLoader.epoch_per_step`, the reference the tests hold it to).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vicinal import MixConfig, MixPlan, PlanTensors, apply_plan, epoch_order, sample_plan
from vicinal._checks import check_choice, check_int, check_probability
from vicinal.experiments.augment import ChannelStats, CropFlip, crop_flip
from vicinal.experiments.data import InputKind
from vicinal.experiments.distributed import SINGLE, DistContext, shard_positions
from vicinal.experiments.models import check_model_input
from vicinal.experiments.spec import MIX_POLICIES, StepLoss, check_class_ids, check_seed
from vicinal.labels import soft_unchecked, to_soft
from vicinal.mixing import pack_arrays, place_boxes, plan_arrays
from vicinal.torch.augmix import AugMix, AugMixConfig
from vicinal.transforms import mix_indexed_batch

__all__ = [
    "EpochPlan",
    "InMemoryLoader",
    "StepTensors",
    "check_augment_fits",
    "check_data_fits",
    "check_mixing_fits",
    "input_kind",
    "to_model_input",
]


def input_kind(x: np.ndarray | torch.Tensor, *, name: str = "images") -> InputKind:
    """What a batch or dataset tensor holds, told by its dtype and number of dims.

    Returns:
        ``"images"`` for ``uint8`` (N, C, H, W); ``"features"`` for a floating dtype
        with shape (N, F) (tabular rows) or (N, T, F) (sequences).

    Raises:
        ValueError: anything else, naming ``name`` and the shapes expected.
    """
    dtype, ndim = x.dtype, x.ndim
    if isinstance(dtype, torch.dtype):
        uint8, floating = dtype == torch.uint8, dtype.is_floating_point
    else:
        uint8, floating = dtype == np.uint8, bool(np.issubdtype(dtype, np.floating))
    if uint8 and ndim == 4:
        return "images"
    if floating and ndim in (2, 3):
        return "features"
    raise ValueError(
        f"{name} must be uint8 images (N, C, H, W) or float features (N, F) / (N, T, F), got {dtype} {tuple(x.shape)}"
    )


def to_model_input(x: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    """A batch as the model takes it.

    uint8 images (B, C, H, W) -> float32 in [0, 1], as the reference scales them
    (``float32(x) / 255``, a new tensor), optionally in channels-last memory format.
    Float features (B, F) or (B, T, F) -> float32, otherwise unchanged (the same
    tensor when it is float32 already: not a copy); ``channels_last`` does not apply.
    """
    if x.dtype == torch.uint8:
        out = x.to(torch.float32).div_(255.0)
        return out.contiguous(memory_format=torch.channels_last) if channels_last and out.ndim == 4 else out
    if not x.dtype.is_floating_point:
        raise ValueError(f"x must be uint8 images or float features, got {x.dtype} {tuple(x.shape)}")
    return x.to(torch.float32)


def check_mixing_fits(mix: MixConfig | None, x: np.ndarray | torch.Tensor) -> None:
    """Refuse a mixing that can't apply to the data ``x`` (a batch or a whole split).

    CutMix (``method="cutmix"``, and ``"switch"``, which uses it) pastes a box of an
    image, so it needs images (N, C, H, W); tabular rows and sequences are mixed by
    interpolation only (``mixup``, ``kway``, or Manifold Mixup of hidden states).

    Raises:
        ValueError: naming the method, the data's per-sample shape and what to use.
    """
    if mix is None or input_kind(x) == "images" or not mix.needs_image_size:
        return
    raise ValueError(
        f"method={mix.method!r} pastes image boxes (CutMix) and needs images (N, C, H, W); this dataset has "
        f"features of shape {tuple(x.shape[1:])}: use --method mixup, kway or manifold"
    )


def check_augment_fits(x: np.ndarray | torch.Tensor, *, crop: CropFlip | None, normalize: bool) -> None:
    """Refuse random crops, flips or per-channel normalisation of data ``x`` that is not images.

    Raises:
        ValueError: naming the options and the data's per-sample shape.
    """
    if (crop is not None or normalize) and input_kind(x) != "images":
        raise ValueError(
            "random crops, flips and per-channel normalisation apply to images; this dataset holds features of "
            f"shape {tuple(x.shape[1:])}: drop --crop-padding, --flip and --normalize"
        )


def check_data_fits(
    x: np.ndarray | torch.Tensor,
    *,
    model: str | None,
    mix: MixConfig | None,
    crop: CropFlip | None = None,
    normalize: bool = False,
) -> None:
    """Refuse a model, a mixing or an augmentation that can't take the data ``x`` (the training split).

    Cheap and free of side effects (the model is built on the ``meta`` device; no
    random numbers are drawn), so a run can call it before it writes anything.

    Args:
        x: uint8 images (N, C, H, W) or float features (N, F) / (N, T, F).
        model: a registered model name (see
            :func:`vicinal.experiments.models.check_model_input`), or None to skip.
        mix: the mixing of the data loader, or None.
        crop, normalize: the loader's crop and flip, and its normalisation.

    Raises:
        ValueError: the data is neither images nor features; the model needs other
            inputs (e.g. ``reference-cnn`` on tabular rows); CutMix, crops, flips or
            normalisation on features.
    """
    input_kind(x, name="x")
    if model is not None:
        check_model_input(model, tuple(int(d) for d in x.shape[1:]))
    check_mixing_fits(mix, x)
    check_augment_fits(x, crop=crop, normalize=normalize)


class InMemoryLoader:
    """Shuffled, optionally mixed batches of an in-memory dataset.

    Args:
        images: uint8 images (N, C, H, W), or float features (N, F) or (N, T, F)
            (NumPy or torch; features are kept as float32). See :func:`input_kind`.
        labels: int class ids (N,).
        num_classes: number of classes C.
        batch_size: samples per step; the last step of an epoch may be smaller unless
            ``drop_last``.
        seed: the run's seed: epoch orders and mixing plans derive from it.
        mix: what to mix, or None for plain batches. ``pairing="stream"`` is the
            keras.io reference: partners come from a second, independently shuffled pass
            over the data; other pairings mix within the batch.
        label_smoothing: ε for the targets.
        shuffle: reshuffle every epoch (else dataset order).
        channels_last: hand out image batches in channels-last memory format (no
            effect on features).
        device: where the images live (``uint8``, copied there once) and batches are
            made (``"cpu"``, ``"cuda"``): gathering, scaling and mixing run there, with
            the epoch's indices and plans moved in one copy (:meth:`epoch_plan`).
        dist: this process's place in a distributed job. ``batch_size`` is then the
            per-rank batch: step ``s`` covers positions ``[s·B·W, (s+1)·B·W)`` of the
            epoch order (padded by wrapping to a multiple of the world size ``W``, as a
            ``DistributedSampler`` pads), and rank ``r`` takes the ``r``-th of ``W``
            equal parts; every sample is seen once per epoch (a few twice when ``W``
            does not divide N).
        policy: cross-rank mixing, see :mod:`vicinal.experiments.distributed`.
        step_loss: RegMixup or MIT: the batches stay plain and the training step mixes
            them (the trainers read it here and build it with the loader's seed); not with
            ``mix``, ``jsd`` or ``policy="global"`` (the step sees its rank's batch only).
        crop: random crop and/or flip of every image of every batch (before mixing and
            AugMix), or None. Its draws follow the AugMix rule across ranks: each rank
            its own with ``policy="independent"``, the same on every rank otherwise.
        normalize: measure the per-channel mean and std of ``images``
            (:attr:`normalization`) for the model to normalise its input with; the
            batches themselves stay in [0, 1].

    Iterating ``loader.epoch(e)`` yields ``(x, targets)``: float32 (B, C, H, W) in
    [0, 1] (images) or float32 (B, F) / (B, T, F) (features, as stored, mixed), and
    float32 (B, num_classes) soft targets, on ``device``. Without AugMix no step reads a
    value back to the host (the labels are checked once, here).

    Raises:
        ValueError: bad arguments, or a CutMix ``mix`` on features
            (:func:`check_mixing_fits`).
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        *,
        num_classes: int,
        batch_size: int = 64,
        seed: int = 0,
        mix: MixConfig | None = None,
        label_smoothing: float = 0.0,
        shuffle: bool = True,
        drop_last: bool = False,
        channels_last: bool = False,
        device: str | torch.device = "cpu",
        dist: DistContext = SINGLE,
        policy: str = "independent",
        augmix: AugMixConfig | None = None,
        jsd: bool = False,
        step_loss: StepLoss | None = None,
        crop: CropFlip | None = None,
        normalize: bool = False,
    ) -> None:
        self.dist = dist
        self.policy = check_choice("policy", policy, MIX_POLICIES)
        self.device = torch.device(device)
        self.images = torch.as_tensor(images).to(self.device)
        self.kind: InputKind = input_kind(self.images)
        if self.kind == "features":
            self.images = self.images.to(torch.float32)
        self.labels = torch.as_tensor(labels).long().to(self.device)
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must be (N,) with N = {self.images.shape[0]} to match images, got {tuple(self.labels.shape)}"
            )
        if self.images.shape[0] == 0:
            raise ValueError("images is empty: expected at least 1 sample")
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.seed = check_seed("seed", seed)
        if mix is not None and not isinstance(mix, MixConfig):
            raise TypeError(f"mix must be a MixConfig or None, got {type(mix).__name__}")
        check_mixing_fits(mix, self.images)
        self.mix = mix
        if (augmix is not None or jsd) and self.kind != "images":
            raise ValueError("AugMix augments images; this dataset holds features")
        if jsd and (augmix is None or mix is not None):
            raise ValueError("jsd needs AugMix and no mixing: its three views are clean, AugMix 1 and AugMix 2")
        self.augmix = None
        if augmix is not None:
            # Per rank unless every rank must see the same batches (shared / global plans).
            self.augmix = AugMix(augmix, seed=seed, rank=dist.rank if policy == "independent" else 0)
        self.jsd = jsd
        if step_loss is not None:
            if not isinstance(step_loss, StepLoss):
                raise TypeError(f"step_loss must be a StepLoss or None, got {type(step_loss).__name__}")
            if mix is not None or jsd:
                raise ValueError(f"step_loss ({step_loss.method}) mixes plain batches: pass mix=None and jsd=False")
            if self.policy == "global":
                raise ValueError(
                    f"method={step_loss.method!r} mixes inside each rank's step, not over the global batch: "
                    "use mix policy 'independent' or 'shared'"
                )
        self.step_loss = step_loss
        check_augment_fits(self.images, crop=crop, normalize=normalize)
        if crop is not None and not isinstance(crop, CropFlip):
            raise TypeError(f"crop must be a CropFlip or None, got {type(crop).__name__}")
        self.crop = crop
        #: The per-channel statistics of the images with ``normalize``, else None.
        self.normalization: ChannelStats | None = ChannelStats.of(self.images) if normalize else None
        self.label_smoothing = label_smoothing
        self._eps = check_probability("label_smoothing", label_smoothing)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.channels_last = channels_last
        check_class_ids(self.labels, num_classes)

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    @property
    def _padded_size(self) -> int:
        w = self.dist.world_size
        return -(-self.num_samples // w) * w

    def __len__(self) -> int:
        n, bg = self._padded_size, self.batch_size * self.dist.world_size
        return n // bg if self.drop_last else -(-n // bg)

    def order(self, epoch: int) -> np.ndarray:
        """Dataset indices in the order epoch ``epoch`` visits them (all ranks together)."""
        base = epoch_order(self.seed, epoch, self.num_samples) if self.shuffle else np.arange(self.num_samples)
        if self._padded_size != self.num_samples:
            base = base[np.arange(self._padded_size) % self.num_samples]
        return base

    def epoch_plan(self, epoch: int) -> EpochPlan:
        """Every step of epoch ``epoch`` as tensors on the loader's device.

        The draws are those of the per-step recipe (NumPy, a pure function of
        ``(seed, epoch, step, rank)``), made for the whole epoch at once, packed into one
        buffer (pinned on CUDA) and copied to the device in one non-blocking transfer.
        """
        check_int("epoch", epoch, minimum=0)
        return _pack_epoch(epoch, list(self._host_steps(epoch)), self.device)

    def crop_draws(self, epoch: int, step: int, n: int) -> np.ndarray | None:
        """The crop and flip draws of a step that gathers ``n`` rows: int64 (2n, 3), the
        rows' then their stream partners' (:meth:`CropFlip.sample`); None without ``crop``."""
        if self.crop is None:
            return None
        rank = self.dist.rank if self.policy == "independent" else 0
        return self.crop.sample(2 * n, seed=self.seed, epoch=epoch, step=step, rank=rank)

    def _host_steps(self, epoch: int) -> Iterator[tuple[np.ndarray, MixPlan | None, slice | None, np.ndarray | None]]:
        """``(rows, plan, keep, crops)`` of each step, drawn on the host as the per-step recipe draws them."""
        order = self.order(epoch)
        bg = self.batch_size * self.dist.world_size
        mix = self.mix
        image_size = None
        if mix is not None and mix.needs_image_size:
            image_size = (int(self.images.shape[-2]), int(self.images.shape[-1]))
        for step in range(len(self)):
            global_idx = order[step * bg : (step + 1) * bg]
            local = shard_positions(len(global_idx), self.dist)
            offset = step * bg
            if mix is None:
                rows = global_idx[local]
                yield rows, None, None, self.crop_draws(epoch, step, len(rows))
                continue
            keep = None
            if self.policy == "global":  # one plan for the global batch; this rank keeps its rows
                rows, rank, keep = global_idx, 0, local
            elif self.policy == "shared":
                rows, rank = global_idx[local], 0
            else:
                rows, rank, offset = global_idx[local], self.dist.rank, offset + local.start
            crops = self.crop_draws(epoch, step, len(rows))
            plan = sample_plan(
                mix,
                len(rows),
                seed=self.seed,
                epoch=epoch,
                step=step,
                rank=rank,
                image_size=image_size,
                dataset_size=self.num_samples,
                stream_offset=offset,
            )
            if not plan.is_placed:  # SaliencyMix: boxes centred on the partners' saliency, from the images
                n = len(rows)
                partner = None
                if plan.stream_indices is not None:
                    partner = self._host_images(plan.stream_indices, None if crops is None else crops[n:])
                plan = place_boxes(
                    plan, self._host_images(rows, None if crops is None else crops[:n]), x_partner=partner
                )
            yield rows, plan, keep, crops

    def _host_images(self, rows: np.ndarray, crops: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` of the images, cropped and flipped by ``crops`` (as the batch will be),
        as a host array (one device read on an accelerator)."""
        # A copy: epoch orders are read-only arrays, which torch.from_numpy warns about.
        x = self.images.index_select(0, torch.from_numpy(np.array(rows, dtype=np.int64)).to(self.images.device))
        if crops is not None:
            x = self._cropped(x, torch.from_numpy(crops[: len(rows)]).to(x.device))
        return x.cpu().numpy()

    def _cropped(self, x: torch.Tensor, crops: torch.Tensor | None) -> torch.Tensor:
        """``x`` cropped and flipped by the draws ``crops`` (B, 3) (unchanged without them)."""
        if crops is None or self.crop is None:
            return x
        return crop_flip(x, crops, self.crop.padding)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch ``epoch``, from its :meth:`epoch_plan`; no host reads."""
        plan = self.epoch_plan(epoch)
        for step, st in enumerate(plan.steps):
            yield self._batch(st, epoch, step)

    def _take(
        self, rows: torch.Tensor, epoch: int, step: int, view: int, crops: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``rows`` as model input (cropped by ``crops``, then AugMix ``view`` applied when
        the loader has it) and their labels."""
        x = self._cropped(self.images.index_select(0, rows), crops)
        if self.augmix is not None:
            x = self.augmix(x, step=step, epoch=epoch, view=view)
        return to_model_input(x, channels_last=self.channels_last), self.labels.index_select(0, rows)

    def _batch(self, st: StepTensors, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        c, eps = self.num_classes, self._eps
        n = int(st.rows.shape[0])
        crops = partner_crops = None
        if st.crops is not None:
            crops, partner_crops = st.crops[:n], st.crops[n:]
        if self.jsd:  # (3B, ...): clean, AugMix view 0 and AugMix view 1 of the same rows
            assert self.augmix is not None
            clean = self._cropped(self.images.index_select(0, st.rows), crops)
            views = self.augmix.views(clean, step=step, epoch=epoch, views=(0, 1))
            x = to_model_input(torch.cat([clean, *views]), channels_last=self.channels_last)
            return x, soft_unchecked(self.labels.index_select(0, st.rows), c, eps)
        # The partner batch of pairing="stream" is AugMix view 2: augmented independently.
        x, y = self._take(st.rows, epoch, step, view=0, crops=crops)
        if st.plan is None:  # plain, or an identity plan: x·1 + x'·0 = x and y·1 + y'·0 = y
            targets = soft_unchecked(y, c, eps)
        else:
            x_partner = y_partner = None
            if st.stream_rows is not None:
                x_partner, y_partner = self._take(st.stream_rows, epoch, step, view=2, crops=partner_crops)
            # validate=False: the labels were checked once, at construction; no host read.
            x, targets = apply_plan(
                st.plan,
                x,
                y,
                num_classes=c,
                label_smoothing=eps,
                x_partner=x_partner,
                y_partner=y_partner,
                out=x,
                validate=False,
            )
        if st.keep is not None:
            return x[st.keep], targets[st.keep]
        return x, targets

    # ------------------------------------------------------------------ per-step reference

    def epoch_per_step(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch ``epoch`` made step by step with
        :func:`vicinal.transforms.mix_indexed_batch` (the recipe shared with Keras'
        ``MixedBatches``): each step draws its plan, copies its index arrays to the
        device and validates its labels. The reference :meth:`epoch` is tested against
        (the same batches, bit for bit on the CPU); slower on an accelerator.
        """
        check_int("epoch", epoch, minimum=0)
        order = self.order(epoch)
        bg = self.batch_size * self.dist.world_size
        for step in range(len(self)):
            global_idx = order[step * bg : (step + 1) * bg]
            local = shard_positions(len(global_idx), self.dist)
            offset = step * bg
            if self.mix is None:
                if self.jsd:
                    x, y = self._jsd_views(global_idx[local], epoch, step)
                else:
                    x, y = self._fetcher(epoch, step)(global_idx[local])
                yield x, to_soft(y, self.num_classes, label_smoothing=self.label_smoothing)
            elif self.policy == "global":
                # One plan for the global batch; this rank keeps its rows of the result.
                x, targets = self._mixed(global_idx, epoch, step, 0, offset)
                yield x[local], targets[local]
            elif self.policy == "shared":
                yield self._mixed(global_idx[local], epoch, step, 0, offset)
            else:
                yield self._mixed(global_idx[local], epoch, step, self.dist.rank, offset + local.start)

    def _index(self, idx: np.ndarray) -> torch.Tensor:
        # A copy: epoch orders are read-only arrays, which torch.from_numpy warns about.
        t = torch.from_numpy(np.array(idx, dtype=np.int64))
        return t if self.device.type == "cpu" else t.to(self.device, non_blocking=True)

    def _fetcher(self, epoch: int, step: int) -> Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]:
        """Dataset rows as :meth:`_take` returns them; the first fetch of a step is
        AugMix view 0 with the step's first crop draws, a second one (the partner batch
        of ``pairing="stream"``) view 2 with the next ones."""
        calls: list[int] = []

        def fetch(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            n = len(idx)
            if not calls:
                calls.append(n)  # the step's batch size: its crop draws are (2n, 3)
                view, first = 0, 0
            else:
                view, first = 2, calls[0]
            draws = self.crop_draws(epoch, step, calls[0])
            crops = None if draws is None else self._index(draws[first : first + n])
            return self._take(self._index(idx), epoch, step, view, crops)

        return fetch

    def _jsd_views(self, idx: np.ndarray, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(3B, ...) images: clean, AugMix view 0 and AugMix view 1 of the same rows."""
        assert self.augmix is not None
        index = self._index(idx)
        draws = self.crop_draws(epoch, step, len(idx))
        clean = self._cropped(
            self.images.index_select(0, index), None if draws is None else self._index(draws[: len(idx)])
        )
        views = self.augmix.views(clean, step=step, epoch=epoch, views=(0, 1))
        x = to_model_input(torch.cat([clean, *views]), channels_last=self.channels_last)
        return x, self.labels[index]

    def _mixed(
        self, idx: np.ndarray, epoch: int, step: int, rank: int, offset: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.mix is not None
        return mix_indexed_batch(
            self.mix,
            self._fetcher(epoch, step),
            idx,
            dataset_size=self.num_samples,
            stream_offset=offset,
            seed=self.seed,
            epoch=epoch,
            step=step,
            rank=rank,
            num_classes=self.num_classes,
            label_smoothing=self.label_smoothing,
            in_place=True,
        )


@dataclass(frozen=True)
class StepTensors:
    """One step of an :class:`EpochPlan`: views of the epoch's buffer on the loader's device.

    Attributes:
        rows: int64 (B,): the dataset rows the step gathers.
        stream_rows: int64 (B,): the partner batch's rows (``pairing="stream"``), else None.
        plan: the step's mixing plan, or None when nothing is mixed (plain batches, or
            an identity plan: every row keeps its own input and label).
        keep: the rows of the mixed batch this rank keeps (``policy="global"``), else None.
        crops: int64 (2B, 3): the crop and flip draws of the rows, then of the stream
            partners (:meth:`InMemoryLoader.crop_draws`), else None.
    """

    rows: torch.Tensor
    stream_rows: torch.Tensor | None
    plan: PlanTensors | None
    keep: slice | None
    crops: torch.Tensor | None = None


@dataclass(frozen=True)
class EpochPlan:
    """All index and plan tensors of one epoch, moved to the device in one copy.

    Attributes:
        epoch: the epoch.
        steps: one :class:`StepTensors` per step.
        buffer: the device buffer the steps' tensors view (uint8: the int64 block, then
            the float32 block).
        host: the host buffer it was copied from (pinned on CUDA), kept alive with it.
    """

    epoch: int
    steps: tuple[StepTensors, ...]
    buffer: torch.Tensor
    host: torch.Tensor

    @property
    def nbytes(self) -> int:
        return int(self.buffer.numel())


def _pack_epoch(
    epoch: int,
    host_steps: list[tuple[np.ndarray, MixPlan | None, slice | None, np.ndarray | None]],
    device: torch.device,
) -> EpochPlan:
    """One :class:`EpochPlan` from the host draws ``(rows, plan, keep, crops)`` of each step.

    Each step's plan goes through the library's one packed format
    (:func:`vicinal.mixing.plan_arrays`), as :func:`vicinal.apply_plan` would make it
    (pastes dropped on steps where no row pastes), and the whole epoch moves to the
    device in one buffer and one transfer (:func:`vicinal.mixing.pack_arrays`).
    """
    arrays: dict[str, np.ndarray] = {}
    kept: list[tuple[MixPlan | None, list[str]]] = []
    for step, (rows, plan, _, crops) in enumerate(host_steps):
        arrays[f"{step}/rows"] = np.asarray(rows, dtype=np.int64)
        if crops is not None:
            arrays[f"{step}/crops"] = crops
        if plan is not None and plan.is_identity:
            plan = None
        keys: list[str] = []
        if plan is not None:
            if plan.source == "stream":
                assert plan.stream_indices is not None
                arrays[f"{step}/stream"] = np.asarray(plan.stream_indices, dtype=np.int64)
            step_arrays = plan_arrays(plan)
            if not plan.has_cut:
                step_arrays = {k: v for k, v in step_arrays.items() if k in ("weights", "input_weights", "partners")}
            for key, value in step_arrays.items():
                if key == "input_weights" and value is step_arrays["weights"]:
                    continue  # the same array: one copy, two names
                arrays[f"{step}/{key}"] = value
            keys = list(step_arrays)
        kept.append((plan, keys))
    packed = pack_arrays(arrays, device)
    t = packed.tensors
    steps = []
    for step, ((_, _, keep, _), (plan, keys)) in enumerate(zip(host_steps, kept)):
        tensors = None
        if plan is not None:
            part = {key: t[f"{step}/{key}"] for key in keys if f"{step}/{key}" in t}
            tensors = PlanTensors(
                weights=part["weights"],
                input_weights=part.get("input_weights", part["weights"]),
                partners=part["partners"],
                boxes=part.get("boxes"),
                source=plan.source,
                shift=plan.shift,
                image_size=plan.image_size if ("boxes" in part or "masks" in part) else None,
                masks=part.get("masks"),
                source_rows=part.get("source_rows"),
                source_cols=part.get("source_cols"),
            )
        steps.append(StepTensors(t[f"{step}/rows"], t.get(f"{step}/stream"), tensors, keep, t.get(f"{step}/crops")))
    return EpochPlan(epoch=epoch, steps=tuple(steps), buffer=packed.buffer, host=packed.host)
