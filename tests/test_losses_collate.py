"""Loss helpers and the DataLoader collate wrapper."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from vicinal import MixUp, MixUpOrCutMix
from vicinal.torch.collate import MixCollate
from vicinal.torch.losses import mixed_loss, soft_target_cross_entropy


def test_soft_target_ce_equals_reference_formula() -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 10)
    y = torch.randint(0, 10, (16,))
    onehot = F.one_hot(y, 10).float()
    torch.testing.assert_close(soft_target_cross_entropy(logits, onehot), F.cross_entropy(logits, y))
    # Keras' categorical cross-entropy on softmax outputs: -sum y·log(p)
    target = torch.softmax(torch.randn(16, 10), 1)
    probs = torch.softmax(logits, 1)
    keras_ce = -(target * probs.log()).sum(1).mean()
    torch.testing.assert_close(soft_target_cross_entropy(logits, target), keras_ce)
    per = soft_target_cross_entropy(logits, target, reduction="none")
    assert per.shape == (16,)
    with pytest.raises(ValueError, match="reduction"):
        soft_target_cross_entropy(logits, target, reduction="avg")
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        soft_target_cross_entropy(logits, target[:, :5])


def test_mixed_loss_equals_dense_cross_entropy() -> None:
    x = torch.rand(32, 1, 4, 4)
    y = torch.randint(0, 10, (32,))
    logits = torch.randn(32, 10)
    _, dense = MixUp(1.0, num_classes=10, seed=1)(x, y, step=0)
    _, pair = MixUp(1.0, num_classes=10, seed=1, targets="pair")(x, y, step=0)
    ce = functools.partial(F.cross_entropy, reduction="none")
    torch.testing.assert_close(mixed_loss(ce, logits, pair), soft_target_cross_entropy(logits, dense))
    with pytest.raises(ValueError, match="per-sample"):
        mixed_loss(F.cross_entropy, logits, pair)


def _loader_batches(workers: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (200, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (200,), generator=g)
    collate = MixCollate(MixUpOrCutMix(0.4, num_classes=10, seed=5))
    collate.set_epoch(epoch)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False, num_workers=workers, collate_fn=collate)
    return list(loader)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
@pytest.mark.filterwarnings("ignore:MixCollate got untagged samples")
def test_same_plans_with_0_1_4_workers() -> None:
    reference = _loader_batches(0, epoch=1)
    assert len(reference) == 13 and reference[0][0].dtype == torch.uint8
    for workers in (1, 4):
        got = _loader_batches(workers, epoch=1)
        assert len(got) == len(reference)
        for (xa, ya), (xb, yb) in zip(reference, got):
            torch.testing.assert_close(xa, xb, rtol=0, atol=0)
            torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    other_epoch = _loader_batches(0, epoch=2)
    assert not torch.equal(other_epoch[0][0], reference[0][0])


def test_collate_rejects_stream_pairing() -> None:
    with pytest.raises(ValueError, match="stream"):
        MixCollate(MixUp(pairing="stream"))
    with pytest.raises(TypeError, match="mixer"):
        MixCollate(lambda x, y: (x, y))  # type: ignore[arg-type]
