"""Every stateful class counts with the one StepCounter: set_epoch restarts the steps, a
successful call advances them, a call that raises does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vicinal import MixConfig, MixUp
from vicinal._stepper import StepCounter
from vicinal.torch.collate import MixCollate, StepBatchSampler

pytest.importorskip("kornia")
from vicinal.torch.augmix import AugMix
from vicinal.torch.manifold import ManifoldMixup
from vicinal.torch.mit import MixupInferenceTraining
from vicinal.torch.regmixup import RegMixup


def _augmix():
    aug = AugMix(seed=0)
    good = lambda: aug(torch.rand(2, 3, 8, 8))
    bad = lambda: aug(torch.rand(2, 3, 8, 8, 8, 8))
    return aug, good, bad


def _manifold():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    mm = ManifoldMixup(model, layers=["1"], config=MixConfig(alpha=1.0), num_classes=3, seed=0)
    good = lambda: mm(torch.rand(4, 12), torch.tensor([0, 1, 2, 0]))
    bad = lambda: mm(torch.rand(4, 13), torch.tensor([0, 1, 2, 0]))
    return mm, good, bad


def _mixer():
    mixer = MixUp(alpha=1.0, num_classes=3, seed=0)
    good = lambda: mixer(torch.rand(4, 2), torch.tensor([0, 1, 2, 0]))
    bad = lambda: mixer(torch.rand(4, 2), torch.tensor([0, 1, 7, 0]))
    return mixer, good, bad


def _regmixup():
    reg = RegMixup(MixUp(alpha=1.0, num_classes=3, seed=0))
    model = nn.Linear(2, 3)
    good = lambda: reg(model, torch.rand(4, 2), torch.tensor([0, 1, 2, 0]))
    bad = lambda: reg(model, torch.rand(4, 2), torch.tensor([0, 1, 7, 0]))
    return reg, good, bad


def _mit():
    mit = MixupInferenceTraining(num_classes=3, seed=0)
    model = nn.Linear(2, 3)
    good = lambda: mit(model, torch.rand(4, 2), torch.tensor([0, 1, 2, 0]))
    bad = lambda: mit(model, torch.rand(4, 2), torch.tensor([0, 1, 7, 0]))
    return mit, good, bad


def _collate():
    collate = MixCollate(MixUp(alpha=1.0, num_classes=3, seed=0))
    good = lambda: collate([(torch.rand(2), 0), (torch.rand(2), 1)])
    bad = lambda: collate([(torch.rand(2), 0), (torch.rand(2), 9)])
    return collate, good, bad


@pytest.mark.filterwarnings("ignore:MixCollate got untagged samples")
@pytest.mark.parametrize("make", [_augmix, _manifold, _mixer, _regmixup, _mit, _collate], ids=lambda f: f.__name__[1:])
def test_counter_advances_on_success_only(make):
    obj, good, bad = make()
    assert isinstance(obj.counter, StepCounter)
    good()
    good()
    assert obj.counter.step == 2
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        bad()
    assert obj.counter.step == 2, "a call that raised used up a step"
    obj.set_epoch(5)
    assert (obj.epoch, obj.counter.step) == (5, 0)


def test_step_batch_sampler_counts_passes_with_the_counter():
    batches = StepBatchSampler([[0, 1], [2, 3]], start_epoch=2)
    first = [[(i.epoch, i.step) for i in b] for b in batches]
    assert first == [[(2, 0), (2, 0)], [(2, 1), (2, 1)]]
    assert batches.epoch == 3
    it = iter(batches)
    next(it)  # a pass abandoned half-way still counts
    assert batches.epoch == 4
    batches.set_epoch(0)
    assert [b[0].epoch for b in batches] == [0, 0]


def test_mixed_batches_epochs_use_the_counter():
    keras = pytest.importorskip("keras")  # noqa: F841
    from vicinal.keras import MixedBatches

    data = MixedBatches(np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1]), batch_size=2, num_classes=2)
    assert isinstance(data.counter, StepCounter)
    data.on_epoch_end()  # Keras' reset before the first epoch does not move it
    assert data.epoch == 0
    data.on_epoch_begin()
    data.on_epoch_end()
    assert data.epoch == 1
    data.set_epoch(7)
    assert data.epoch == 7
