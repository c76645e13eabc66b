"""vicinal: MixUp-family data augmentation for classification.

Pure sampling (:mod:`vicinal.sampling`) draws a :class:`MixPlan` for a batch on the
host; :func:`apply_plan` mixes inputs and labels by it. The transforms wrap both.
"""

from vicinal.mixing import MixedTargets, apply_plan
from vicinal.sampling import MixConfig, MixPlan, epoch_order, sample_plan
from vicinal.transforms import CutMix, KWayMix, Mixer, MixUp, MixUpOrCutMix, cutmix, mixup

__all__ = [
    "CutMix",
    "KWayMix",
    "MixConfig",
    "MixPlan",
    "MixUp",
    "MixUpOrCutMix",
    "MixedTargets",
    "Mixer",
    "apply_plan",
    "cutmix",
    "epoch_order",
    "mixup",
    "sample_plan",
]
__version__ = "0.1.0"
