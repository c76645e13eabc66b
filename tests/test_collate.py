"""mixing_loader: every batch's plan comes from its own (epoch, step), whatever the
DataLoader does with workers."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vicinal import MixUp, MixUpOrCutMix, mixing_loader
from vicinal.torch.collate import MixCollate, StepBatchSampler, StepIndex, TaggedDataset

N, B = 96, 16


def _dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N, 1, 8, 8), dtype=torch.uint8, generator=g)
    return TensorDataset(x, torch.arange(N) % 10)


def _epochs(epochs: int, **options: object) -> list[dict[bytes, torch.Tensor]]:
    """Each epoch's batches keyed by their mixed images (workers may reorder batches)."""
    loader = mixing_loader(
        _dataset(), MixUpOrCutMix(0.4, num_classes=10, seed=5), batch_size=B, shuffle=False, **options
    )
    out = []
    for _ in range(epochs):
        out.append({x.numpy().tobytes(): y for x, y in loader})
    return out


@pytest.mark.slow
def test_plans_do_not_depend_on_worker_settings() -> None:
    reference = _epochs(2)
    assert [len(e) for e in reference] == [N // B, N // B]
    for options in (
        {"num_workers": 2, "in_order": False, "persistent_workers": True, "prefetch_factor": 1},
        {"num_workers": 2, "in_order": True, "persistent_workers": False},
    ):
        got = _epochs(2, **options)
        for ref_epoch, got_epoch in zip(reference, got):
            assert ref_epoch.keys() == got_epoch.keys(), options
            for key, y in ref_epoch.items():
                torch.testing.assert_close(got_epoch[key], y, rtol=0, atol=0)


def test_every_batch_of_every_epoch_has_its_own_plan() -> None:
    epochs = _epochs(3)
    keys = [k for e in epochs for k in e]
    # Without shuffling every epoch sees the same rows at the same step: only the plans differ.
    assert len(set(keys)) == len(keys) == 3 * (N // B)


def test_set_epoch_resumes_and_forwards() -> None:
    loader = mixing_loader(_dataset(), MixUp(num_classes=10, seed=1), batch_size=B, shuffle=False)
    first = [x for x, _ in loader]
    second = [x for x, _ in loader]
    loader.batch_sampler.set_epoch(1)  # type: ignore[union-attr]
    again = [x for x, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(second, again))
    assert not torch.equal(first[0], second[0])
    assert [tag.step for tag in next(iter(StepBatchSampler([[0, 1], [2]])))] == [0, 0]


def test_tagged_parts_check_their_inputs() -> None:
    with pytest.raises(TypeError, match="StepIndex"):
        TaggedDataset(_dataset())[3]  # type: ignore[index]
    assert TaggedDataset(_dataset())[StepIndex(2, 5, 3)].step == 5
    with pytest.raises(ValueError, match="sampler"):
        mixing_loader(_dataset(), MixUp(num_classes=10), batch_size=B, sampler=None)
    collate = MixCollate(MixUp(num_classes=10))
    samples = TaggedDataset(_dataset())
    with pytest.raises(ValueError, match="different"):
        collate([samples[StepIndex(0, 0, 0)], samples[StepIndex(0, 1, 1)]])


def test_untagged_samples_warn_once() -> None:
    collate = MixCollate(MixUp(num_classes=10, seed=0))
    loader = DataLoader(_dataset(), batch_size=B, collate_fn=collate)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(loader)
    assert sum("untagged" in str(w.message) for w in caught) == 1
