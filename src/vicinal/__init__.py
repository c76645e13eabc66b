"""vicinal: MixUp-family data augmentation for classification.

A :class:`MixPlan` holds every random decision for one batch (λ, partners, CutMix
boxes); :func:`sample_plan` draws it on the host as a pure function of
``(config, batch size, seed, epoch, step, rank)``, and :func:`apply_plan` mixes inputs
and labels by it, on NumPy arrays or on torch tensors (on their device, with
autograd). The transforms (:class:`MixUp`, :class:`CutMix`, ...) wrap both.

The core needs only NumPy. The torch-only names (:class:`MixCollate`,
:func:`mixing_loader`, the losses, :class:`RegMixup` and :class:`MixupInferenceTraining`)
import PyTorch when first used.

>>> import numpy as np, vicinal
>>> x, y = np.ones((4, 3), np.float32), np.array([0, 1, 2, 0])
>>> x_mixed, y_mixed = vicinal.mixup(x, y, num_classes=3, seed=0, step=0)
>>> y_mixed.shape, y_mixed.dtype
((4, 3), dtype('float32'))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vicinal.dense import mix_dense
from vicinal.mixing import MixedTargets, PlanTensors, apply_plan, plan_to_tensors
from vicinal.sampling import MixConfig, MixPlan, epoch_order, sample_plan
from vicinal.transforms import CutMix, KWayMix, Mixer, MixOptions, MixUp, MixUpOrCutMix, cutmix, mixup

if TYPE_CHECKING:
    from vicinal.torch.collate import MixCollate, mixing_loader
    from vicinal.torch.losses import SoftTargetCrossEntropy, mixed_loss, soft_target_cross_entropy
    from vicinal.torch.mit import MixupInferenceTraining
    from vicinal.torch.regmixup import RegMixup

# Torch-only names, imported on first use so that `import vicinal` needs no PyTorch.
_LAZY = {
    "MixCollate": "vicinal.torch.collate",
    "mixing_loader": "vicinal.torch.collate",
    "SoftTargetCrossEntropy": "vicinal.torch.losses",
    "mixed_loss": "vicinal.torch.losses",
    "soft_target_cross_entropy": "vicinal.torch.losses",
    "RegMixup": "vicinal.torch.regmixup",
    "MixupInferenceTraining": "vicinal.torch.mit",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        try:
            module = importlib.import_module(_LAZY[name])
        except ModuleNotFoundError as exc:
            raise ImportError(f"vicinal.{name} needs PyTorch: pip install 'vicinal[torch]' ({exc})") from exc
        return getattr(module, name)
    raise AttributeError(f"module 'vicinal' has no attribute {name!r}")


__all__ = [
    "CutMix",
    "KWayMix",
    "MixCollate",
    "MixConfig",
    "MixOptions",
    "MixPlan",
    "MixUp",
    "MixUpOrCutMix",
    "MixedTargets",
    "Mixer",
    "MixupInferenceTraining",
    "PlanTensors",
    "RegMixup",
    "SoftTargetCrossEntropy",
    "apply_plan",
    "cutmix",
    "epoch_order",
    "mix_dense",
    "mixed_loss",
    "mixing_loader",
    "mixup",
    "plan_to_tensors",
    "sample_plan",
    "soft_target_cross_entropy",
]
__version__ = "0.3.0"
