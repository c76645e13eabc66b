"""Manifold Mixup (Verma et al., 2019) for any ``torch.nn.Module``: mix hidden states.

For each training step one of the named layers is chosen (uniformly, or with given
probabilities); the batch runs forward, and the output of the chosen layer is mixed
with the step's plan by a forward hook, so everything above it sees mixed features.
``"input"`` counts as a layer: choosing it is exactly input mixup. The targets are
mixed with the same plan. The model's code is not changed, and no hook outlives the
call, even when the forward pass raises.

>>> import torch
>>> from vicinal import MixConfig
>>> from vicinal.torch.manifold import ManifoldMixup
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> mix = ManifoldMixup(net, ["input", "0", "1"], MixConfig(alpha=2.0), num_classes=3, seed=0)
>>> logits, targets = mix(torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), step=0)
>>> tuple(logits.shape), tuple(targets.shape), mix.last_layer in ("input", "0", "1")
((6, 3), (6, 3), True)
>>> mix.close()  # removes the hooks

Choices, plans and targets are pure functions of ``(seed, epoch, step, rank)``, as
everywhere in vicinal. Notes:

* A layer whose forward returns a tuple or list has its first element mixed; the other
  elements pass through unmixed.
* BatchNorm layers below the chosen one see unmixed activations (their running
  statistics are those of real samples); those above see mixed ones, as in the paper.
* Pass the model as you train it: a DistributedDataParallel wrapper and/or a
  ``torch.compile`` wrapper; layer names are those of the model inside them.
* ``torch.compile``: each hook runs eagerly (``torch.compiler.disable``), so a compiled
  model has one graph break at each candidate layer and is otherwise compiled once:
  the choice of layer changes no graph. Tested against eager with the ``eager``
  backend over steps that visit every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from vicinal._checks import check_int, check_probability
from vicinal._stepper import Counted, StepCounter
from vicinal.labels import batch_size_of
from vicinal.mixing import apply_plan
from vicinal.sampling import MixConfig, MixPlan, sample_choice, sample_plan

__all__ = [
    "INPUT",
    "ManifoldMixup",
]

INPUT = "input"


class ManifoldMixup(Counted):
    """Mix at a layer chosen per step, inside ``model``'s forward pass.

    Args:
        model: any module (or a DDP wrapper of one).
        layers: names from ``model.named_modules()``, and/or ``"input"``.
        config: how to mix (MixUp by default; CutMix works on (B, C, H, W) features).
            ``pairing="stream"`` is refused: hidden states have no second stream.
        probs: probability of each layer (default: uniform).
        num_classes: needed when labels are class ids.
        label_smoothing: ε applied to the labels before mixing.
        seed, rank: the plan stream.

    Attributes:
        last_layer: the layer the last call mixed at.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        config: MixConfig | None = None,
        *,
        probs: Sequence[float] | None = None,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.config = MixConfig(alpha=2.0) if config is None else config
        if not isinstance(self.config, MixConfig):
            raise TypeError(f"config must be a MixConfig, got {type(self.config).__name__}")
        if self.config.pairing == "stream":
            raise ValueError("ManifoldMixup needs in-batch partners; pairing='stream' has no hidden states to mix")
        if isinstance(layers, str) or not layers:
            raise ValueError(f"layers must be a non-empty list of module names or 'input', got {layers!r}")
        root = model
        # Names are those of the user's model, inside a DDP wrapper (.module) and/or a
        # torch.compile wrapper (._orig_mod), in either order.
        while isinstance(getattr(root, "module", None), nn.Module) or isinstance(
            getattr(root, "_orig_mod", None), nn.Module
        ):
            inner = getattr(root, "module", None)
            root = inner if isinstance(inner, nn.Module) else getattr(root, "_orig_mod")  # noqa: B009
        modules = dict(root.named_modules())
        missing = [name for name in layers if name != INPUT and name not in modules]
        if missing:
            known = [n for n in modules if n][:12]
            raise ValueError(f"layers {missing} are not modules of the model; some of its modules: {known}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers must not repeat a name, got {list(layers)}")
        self.model = model
        self.layers = list(layers)
        self._modules = {name: modules[name] for name in self.layers if name != INPUT}
        if probs is None:
            self.probs = np.full(len(self.layers), 1.0 / len(self.layers))
        else:
            p = np.array([check_probability("probs", v) for v in probs])
            if p.shape != (len(self.layers),) or not np.isclose(p.sum(), 1.0):
                raise ValueError(f"probs must hold one probability per layer, summing to 1, got {list(probs)}")
            self.probs = p / p.sum()
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, minimum=1)
        self.label_smoothing = check_probability("label_smoothing", label_smoothing)
        self.seed = check_int("seed", seed, minimum=0)
        self.rank = check_int("rank", rank, minimum=0)
        self.counter = StepCounter()
        self.last_layer: str | None = None
        # One hook per candidate layer, registered once, inert unless its layer is this
        # step's: a model compiled after (or before) this point keeps seeing them.
        self._active: tuple[str, Any] | None = None
        self._handles = [m.register_forward_hook(self._make_hook(n)) for n, m in self._modules.items()]

    def choose_layer(self, *, step: int, epoch: int | None = None) -> str:
        """The layer that step ``step`` of ``epoch`` mixes at."""
        index = sample_choice(
            self.probs, seed=self.seed, epoch=self.epoch if epoch is None else epoch, step=step, rank=self.rank
        )
        return self.layers[index]

    def _plan(self, h: torch.Tensor, step: int, epoch: int) -> MixPlan:
        image_size = None
        if self.config.needs_image_size:
            if h.ndim < 3:
                raise ValueError(f"CutMix needs (B, C, H, W) features, got shape {tuple(h.shape)}")
            image_size = (int(h.shape[-2]), int(h.shape[-1]))
        return sample_plan(
            self.config, batch_size_of("x", h), seed=self.seed, epoch=epoch, step=step, rank=self.rank,
            image_size=image_size,
        )  # fmt: skip

    def __call__(
        self, x: Any, y: Any, *, step: int | None = None, epoch: int | None = None, **forward_kwargs: Any
    ) -> tuple[Any, Any]:
        """Run ``model(x, **forward_kwargs)`` mixing at this step's layer.

        Args:
            x: the model's input (a tensor whose first axis is the batch).
            y: int class ids (B,) or soft labels (B, C).
            step, epoch: where this batch is; default: the internal count (advanced
                after a successful call) and the current epoch.

        Returns:
            ``(model output, targets)``: float32 (B, C) targets mixed like the features.
        """
        epoch, step, counted = self.counter.resolve(step, epoch)
        if not self._handles and self._modules:
            raise RuntimeError("this ManifoldMixup was closed; make a new one")
        layer = self.choose_layer(step=step, epoch=epoch)
        mixed: dict[str, Any] = {}

        def mix(h: Any) -> torch.Tensor:
            if not isinstance(h, torch.Tensor):
                raise TypeError(f"layer {layer!r} returned {type(h).__name__}; ManifoldMixup mixes tensors")
            if "targets" in mixed:
                raise RuntimeError(
                    f"layer {layer!r} ran more than once in one forward pass; choose a module that runs once"
                )
            plan = self._plan(h, step, epoch)
            h_mixed, mixed["targets"] = apply_plan(
                plan, h, y, num_classes=self.num_classes, label_smoothing=self.label_smoothing
            )
            return h_mixed

        if layer == INPUT:
            output = self.model(mix(x), **forward_kwargs)
        else:
            self._active = (layer, mix)
            try:
                output = self.model(x, **forward_kwargs)
            finally:
                self._active = None  # the hooks are inert again, whatever happened
            if "targets" not in mixed:
                raise RuntimeError(f"layer {layer!r} did not run in the forward pass; it can't be mixed at")
        self.last_layer = layer
        if counted:
            self.counter.advance()
        return output, mixed["targets"]

    def _make_hook(self, name: str) -> Any:
        # Run eagerly even inside a compiled model: whether this layer mixes changes from
        # step to step, and the plan is drawn with NumPy. Dynamo breaks the graph here.
        @torch.compiler.disable
        def hook(module: nn.Module, args: Any, out: Any) -> Any:
            if self._active is None or self._active[0] != name:
                return None  # not this step's layer: the output passes unchanged
            mix = self._active[1]
            if isinstance(out, (tuple, list)):
                return type(out)([mix(out[0]), *out[1:]])
            return mix(out)

        return hook

    def close(self) -> None:
        """Remove the forward hooks from the model (also on leaving a ``with`` block)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> ManifoldMixup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
