"""vicinal in a training loop written the way timm users write theirs."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from vicinal import Mixer, SoftTargetCrossEntropy

NUM_CLASSES = 4


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, NUM_CLASSES, (256,), generator=g)
    x = torch.rand(256, 3, 16, 16, generator=g) * 0.5
    for c in range(NUM_CLASSES):  # each class brightens its own rows: learnable
        x[y == c, :, 4 * c : 4 * c + 4, :] += 0.5
    return TensorDataset(x, y)


def _train(seed: int, plans: list[bytes] | None = None) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(128, NUM_CLASSES),
    )  # fmt: skip
    loader = DataLoader(_data(), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    mixup_fn = Mixer.from_timm(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=NUM_CLASSES, seed=seed)
    criterion = SoftTargetCrossEntropy()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for epoch in range(4):
        mixup_fn.set_epoch(epoch)  # the step count restarts; plans are those of (seed, epoch, step)
        model.train()
        for step, (images, targets) in enumerate(loader):
            if plans is not None:
                plan = mixup_fn.plan(images, step=step)  # λ, and the box for CutMix batches
                plans.append(plan.weights.tobytes() + (b"" if plan.boxes is None else plan.boxes.tobytes()))
            images, targets = mixup_fn(images, targets)
            loss = criterion(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        x, y = _data().tensors
        accuracy = float((model(x).argmax(1) == y).float().mean())
    return model, accuracy


def test_timm_style_loop_learns_and_is_reproducible() -> None:
    plans: list[bytes] = []
    model_a, accuracy = _train(seed=1, plans=plans)
    model_b, _ = _train(seed=1)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)  # same seed, same results (CPU)
    assert accuracy > 0.6  # four classes: chance is 0.25
    assert len(plans) == 4 * 8 and len(set(plans)) == len(plans)  # every batch of every epoch its own plan
