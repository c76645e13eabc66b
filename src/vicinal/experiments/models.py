"""Model registry: the keras.io reference CNN, a small ResNet, an MLP and a GRU (PyTorch).

Models return logits; the softmax of the reference lives in the loss
(:func:`vicinal.torch.losses.soft_target_cross_entropy`), which is the numerically stable
form of Keras' ``softmax`` + ``categorical_crossentropy``.

A factory takes the shape of one sample and the number of classes. The shape says
what the data is: ``(C, H, W)`` images, ``(F,)`` tabular features, ``(T, F)``
sequences of ``T`` steps of ``F`` features. A factory refuses a shape it can't take
with a message naming the model and a registered one that fits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}

#: Per-sample layouts by number of dims, and the registered model suggested for each.
_LAYOUTS = {1: ("features", "(F,)", "mlp"), 2: ("sequences", "(T, F)", "gru"), 3: ("images", "(C, H, W)", None)}
_IMAGE_MODELS = "reference-cnn or preact-resnet-small"


def describe_input(input_shape: tuple[int, ...]) -> str:
    """``"features of shape (30,)"``, ``"sequences of shape (28, 28)"``, ``"images of shape (1, 28, 28)"``."""
    kind = _LAYOUTS.get(len(input_shape), ("inputs",))[0]
    return f"{kind} of shape {tuple(input_shape)}"


def refuse_input(model: str, needs: int, input_shape: tuple[int, ...]) -> ValueError:
    """The error of model ``model`` that takes per-sample shapes of ``needs`` dims only.

    The message names what the model needs, what the data is, and the ``--model`` to use.
    """
    kind, layout, _ = _LAYOUTS[needs]
    have = len(input_shape)
    suggestion = (_LAYOUTS[have][2] or _IMAGE_MODELS) if have in _LAYOUTS else None
    message = f"model {model!r} needs {kind} {layout}; this dataset has {describe_input(input_shape)}"
    if suggestion:
        message += f": use --model {suggestion}"
    if have == 3 and needs == 2:
        message += (
            " (a .npz whose 3-D float x lies in [0, 1] is read as (N, H, W) images: "
            "store kind='features' in it to read (N, T, F) sequences)"
        )
    return ValueError(message)


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make ``factory(input_shape, num_classes) -> nn.Module`` available by name."""

    def wrap(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_models() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate a registered model for samples of ``input_shape`` and ``num_classes`` outputs.

    Args:
        input_shape: one sample's shape: ``(C, H, W)``, ``(F,)`` or ``(T, F)``.

    Raises:
        ValueError: an unknown name, or a shape the model can't take (see :func:`refuse_input`).
    """
    if name not in _REGISTRY:
        raise ValueError(f"model must be one of {list(available_models())}, got {name!r}")
    return _REGISTRY[name](tuple(int(d) for d in input_shape), num_classes)


def check_model_input(name: str, input_shape: tuple[int, ...], num_classes: int = 2) -> None:
    """Raise the error :func:`build_model` would raise for this shape, without its cost.

    The model is built on the ``meta`` device (no memory for its weights) and the
    global random state is restored afterwards, so the check changes nothing.
    """
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        build_model(name, input_shape, num_classes)


def keras_init_(module: nn.Module) -> nn.Module:
    """Keras' default initialisation: Glorot-uniform kernels, zero biases.

    PyTorch's ``xavier_uniform_`` uses the same fans as Keras for conv kernels
    (fan_in = in_ch·kh·kw, fan_out = out_ch·kh·kw) and dense kernels.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class ReferenceCNN(nn.Module):
    """The keras.io mixup example's network.

    Conv 16@5×5 relu → MaxPool 2 → Conv 32@5×5 relu → MaxPool 2 → Dropout 0.2 →
    global average pool → Dense 128 relu → Dense ``num_classes`` (logits).

    Input: float (B, C, H, W) in [0, 1]; output: (B, num_classes) logits.
    ReLU is applied after max-pooling: ``relu`` is monotonic, so this equals the
    reference exactly and does the elementwise work on 4x fewer values (with
    channels-last tensors this ordering was faster per training step on CPU).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 5)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(32, 128)
        self.fc2 = nn.Linear(128, num_classes)
        keras_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(self.conv1(x), 2).relu_()
        x = torch.max_pool2d(self.conv2(x), 2).relu_()
        p = self.dropout.p
        if self.training and p > 0:
            # Inverted dropout from a uniform draw: the same distribution as nn.Dropout,
            # but bernoulli_ costs ~0.3 ms per step on this small tensor on CPU.
            x = x * (torch.rand_like(x) >= p).to(x.dtype).mul_(1.0 / (1.0 - p))
        x = x.mean(dim=(2, 3))
        return self.fc2(self.fc1(x).relu_())


@register_model("reference-cnn")
def _reference_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise refuse_input("reference-cnn", 3, input_shape)
    c, h, w = input_shape
    if h < 16 or w < 16:
        raise ValueError(f"reference-cnn needs inputs of at least 16x16 pixels, got {h}x{w}")
    return ReferenceCNN(c, num_classes)


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """A small pre-activation ResNet (He et al. 2016) for 28×28-ish inputs.

    Stem conv 3×3 → stages of pre-activation basic blocks at ``widths`` channels
    (stride 2 between stages) → BN-ReLU → global average pool → linear logits.
    Default (16, 32, 64) with one block per stage: 77,562 parameters for 1 channel, 10 classes.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, ...] = (16, 32, 64),
        blocks_per_stage: int = 1,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                layers.append(_PreActBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = torch.relu(self.bn(x)).mean(dim=(2, 3))
        return self.fc(x)


@register_model("preact-resnet-small")
def _preact_resnet_small(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise refuse_input("preact-resnet-small", 3, input_shape)
    return PreActResNet(input_shape[0], num_classes)


class MLP(nn.Module):
    """A multilayer perceptron for feature vectors.

    Flatten → ``block1`` (Linear ``hidden``, ReLU, Dropout) → ``block2`` (the same) →
    ``head`` (Linear ``num_classes``, logits). ``block1``, ``block2`` and ``head`` are
    named so that :class:`vicinal.torch.manifold.ManifoldMixup` can mix their outputs.

    Input: float32 (B, *input_shape), flattened to (B, prod(input_shape)): tabular
    rows (B, F) as they are; output: float32 (B, num_classes) logits. Default
    initialisation of PyTorch's ``nn.Linear``.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.block2 = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(x.flatten(1))))


@register_model("mlp")
def _mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 1:
        raise refuse_input("mlp", 1, input_shape)
    return MLP(input_shape[0], num_classes)


class GRUClassifier(nn.Module):
    """A one-layer GRU over sequences of feature vectors; the last step's state classifies.

    ``embed`` (Linear F → ``hidden`` applied at every step, then ReLU) → ``gru``
    (one layer, ``hidden`` units, batch first) → its output at the last step →
    ``head`` (Linear ``num_classes``, logits).

    Input: float32 (B, T, F); output: float32 (B, num_classes) logits.

    Mixing points for :class:`vicinal.torch.manifold.ManifoldMixup`: ``"embed"`` (the
    per-step embeddings (B, T, hidden)) and ``"gru"`` (its output sequence (B, T,
    hidden), the first element of the GRU's ``(output, h_n)``; the classifier reads
    ``output[:, -1]``, not ``h_n``, so mixing the output sequence mixes what the
    head sees).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.gru = nn.GRU(hidden, hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(x))
        return self.head(out[:, -1])


@register_model("gru")
def _gru(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 2:
        raise refuse_input("gru", 2, input_shape)
    return GRUClassifier(input_shape[1], num_classes)
