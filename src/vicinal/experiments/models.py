"""Model registry: the keras.io reference CNN, small and CIFAR-sized ResNets, an MLP, a GRU (PyTorch), and your own.

Models return logits; the softmax of the reference lives in the loss
(:func:`vicinal.torch.losses.soft_target_cross_entropy`), which is the numerically stable
form of Keras' ``softmax`` + ``categorical_crossentropy``.

A factory takes the shape of one sample and the number of classes. The shape says
what the data is: ``(C, H, W)`` images, ``(F,)`` tabular features, ``(T, F)``
sequences of ``T`` steps of ``F`` features. A factory refuses a shape it can't take
with a message naming the model and a registered one that fits.

Every registered model says which per-sample layout it takes and, where its modules
make natural mixing points, the layers suggested for Manifold Mixup
(:func:`model_mix_layers`; a run still names the layers it mixes at).
:data:`MODEL_FOR_DATA` is the model a run trains when none is named, by layout: the one
place that suggestion is made.

Your own network: ``--model package.module:factory`` names a callable that is called as
``factory(num_classes, input_shape)`` and returns an ``nn.Module`` (see
:func:`load_user_factory`); :func:`check_model_on_batch` runs it on one batch before a
run does any work.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLP",
    "MODEL_FOR_DATA",
    "GRUClassifier",
    "ModelFactory",
    "PreActResNet",
    "PreActResNet18",
    "ReferenceCNN",
    "WideResNet",
    "available_models",
    "build_model",
    "check_model_input",
    "check_model_name",
    "check_model_on_batch",
    "describe_input",
    "is_user_model",
    "keras_init_",
    "load_user_factory",
    "model_for_data",
    "model_mix_layers",
    "refuse_input",
    "register_model",
]

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


@dataclass(frozen=True)
class _Entry:
    factory: ModelFactory
    takes: int | None  # number of dims of one sample it takes (see _LAYOUTS); None: any
    mix_layers: tuple[str, ...]


_REGISTRY: dict[str, _Entry] = {}

#: Per-sample layouts by number of dims: what the data is and its shape.
_LAYOUTS = {1: ("features", "(F,)"), 2: ("sequences", "(T, F)"), 3: ("images", "(C, H, W)")}
#: The model a run trains when none is named, by the number of dims of one sample:
#: tabular rows (F,), sequences (T, F), images (C, H, W).
MODEL_FOR_DATA: dict[int, str] = {1: "mlp", 2: "gru", 3: "reference-cnn"}


def describe_input(input_shape: tuple[int, ...]) -> str:
    """``"features of shape (30,)"``, ``"sequences of shape (28, 28)"``, ``"images of shape (1, 28, 28)"``."""
    kind = _LAYOUTS.get(len(input_shape), ("inputs",))[0]
    return f"{kind} of shape {tuple(input_shape)}"


def model_for_data(input_shape: tuple[int, ...]) -> str:
    """The default model for samples of ``input_shape``: see :data:`MODEL_FOR_DATA`.

    Raises:
        ValueError: a sample shape of another number of dims.
    """
    try:
        return MODEL_FOR_DATA[len(input_shape)]
    except KeyError:
        raise ValueError(
            f"no default model for samples of shape {tuple(input_shape)}: expected (F,), (T, F) or (C, H, W); "
            "name one with --model"
        ) from None


def _models_for(ndim: int) -> str:
    """The registered models that take samples of ``ndim`` dims, the default first: ``"a (or b, c)"``."""
    default = MODEL_FOR_DATA[ndim]
    others = [n for n, e in sorted(_REGISTRY.items()) if e.takes == ndim and n != default]
    return default + (f" (or {', '.join(others)})" if others else "")


def refuse_input(model: str, needs: int, input_shape: tuple[int, ...]) -> ValueError:
    """The error of model ``model`` that takes per-sample shapes of ``needs`` dims only.

    The message names what the model needs, what the data is, and the ``--model`` to use.
    """
    kind, layout = _LAYOUTS[needs]
    have = len(input_shape)
    message = f"model {model!r} needs {kind} {layout}; this dataset has {describe_input(input_shape)}"
    if have in MODEL_FOR_DATA:
        message += f": use --model {_models_for(have)}"
    if have == 3 and needs == 2:
        message += (
            " (a .npz whose 3-D float x lies in [0, 1] is read as (N, H, W) images: "
            "store kind='features' in it to read (N, T, F) sequences)"
        )
    return ValueError(message)


def register_model(
    name: str, *, takes: int | None = None, mix_layers: tuple[str, ...] = ()
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make ``factory(input_shape, num_classes) -> nn.Module`` available by name.

    Args:
        takes: the number of dims of one sample the model takes (3: images, 1:
            features, 2: sequences), for the suggestions of :func:`refuse_input`.
        mix_layers: the layers suggested for Manifold Mixup (module names and/or
            ``"input"``), shown when a run names none; empty: no suggestion.
    """
    if ":" in name:
        raise ValueError(f"a registered model name can't contain ':' (that form names your own factory), got {name!r}")

    def wrap(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = _Entry(factory, takes, tuple(mix_layers))
        return factory

    return wrap


def available_models() -> tuple[str, ...]:
    """The registered model names, sorted."""
    return tuple(sorted(_REGISTRY))


def model_mix_layers(name: str) -> tuple[str, ...]:
    """The layers suggested for Manifold Mixup with registered model ``name``; ``()`` for a
    model that suggests none (and for your own models)."""
    entry = _REGISTRY.get(name)
    return () if entry is None else entry.mix_layers


# --------------------------------------------------------------------------- your own model

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_user_model(name: str) -> bool:
    """Whether ``name`` names your own factory (``package.module:factory``) rather than a registered model."""
    return ":" in name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_user_factory(name: str) -> Callable[..., nn.Module]:
    """The callable that ``--model package.module:factory`` names, imported.

    The module is imported as Python imports it, with the current folder searched
    last (so ``--model mynet:build`` finds ``./mynet.py`` without installing it). The
    attribute may be dotted (``module:Class.create``).

    Raises:
        ValueError: one line naming ``--model`` and what failed: the form, the import
            (with the import's own error), a missing attribute, or an attribute that
            is not callable.
    """
    module_name, _, attr = name.partition(":")
    if not _DOTTED.fullmatch(module_name) or not _DOTTED.fullmatch(attr):
        raise ValueError(
            f"--model {name!r}: expected a registered model ({', '.join(available_models())}) or package.module:factory"
        )
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)  # last: an installed package of the same name wins
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while it runs
        raise ValueError(
            f"--model {name!r}: can't import {module_name!r} ({_first_line(exc)}); install it or put its "
            "folder on PYTHONPATH"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"--model {name!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"--model {name!r}: {attr!r} is a {type(obj).__name__}, not a callable factory")
    return obj


def _build_user_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    factory = load_user_factory(name)
    attr = name.partition(":")[2]
    try:
        model = factory(num_classes, input_shape)
    except Exception as exc:
        raise ValueError(
            f"--model {name!r}: {attr}(num_classes={num_classes}, input_shape={input_shape}) failed: {_first_line(exc)}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {name!r}: {attr}(...) returned a {type(model).__name__}, expected a torch.nn.Module")
    return model


# --------------------------------------------------------------------------- building and checking


def check_model_name(name: str) -> str:
    """``name`` if it is a registered model or an importable ``package.module:factory``.

    Cheap: a user factory is imported, not called. Raises ValueError naming ``--model``.
    """
    if not isinstance(name, str):
        raise ValueError(f"model (--model) must be a string, got {type(name).__name__}")
    if is_user_model(name):
        load_user_factory(name)
    elif name not in _REGISTRY:
        raise ValueError(
            f"model must be one of {list(available_models())} or package.module:factory (--model), got {name!r}"
        )
    return name


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate model ``name`` for samples of ``input_shape`` and ``num_classes`` outputs.

    Args:
        name: a registered model, or ``package.module:factory`` (called as
            ``factory(num_classes, input_shape)``).
        input_shape: one sample's shape: ``(C, H, W)``, ``(F,)`` or ``(T, F)``.

    Raises:
        ValueError: an unknown name, a shape the model can't take (see
            :func:`refuse_input`), or a user factory that can't be imported, fails or
            returns something other than a module (see :func:`load_user_factory`).
    """
    shape = tuple(int(d) for d in input_shape)
    if is_user_model(name):
        return _build_user_model(name, shape, num_classes)
    check_model_name(name)
    return _REGISTRY[name].factory(shape, num_classes)


def check_model_input(name: str, input_shape: tuple[int, ...], num_classes: int = 2) -> None:
    """Raise the error :func:`build_model` would raise for this shape, without its cost.

    A registered model is built on the ``meta`` device (no memory for its weights) and
    the global random state is restored afterwards, so the check changes nothing. Your
    own model is only imported here (it may not build on ``meta``):
    :func:`check_model_on_batch` builds and runs it.
    """
    if is_user_model(name):
        load_user_factory(name)
        return
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        build_model(name, input_shape, num_classes)


def check_model_on_batch(name: str, x: torch.Tensor, num_classes: int) -> None:
    """Build model ``name`` and run it on the batch ``x``; refuse an output other than finite (B, num_classes) logits.

    The model runs in eval mode without gradients, and the global random state is
    restored afterwards, so the check changes nothing.

    Args:
        x: float32 model input (B, *input_shape), e.g. images (B, C, H, W) in [0, 1].

    Raises:
        ValueError: one line naming ``--model``: the build failed, the forward pass
            failed, or the output is not a floating tensor of shape (B, num_classes)
            with finite values.
    """
    b = int(x.shape[0])
    what = f"a batch of {b} {describe_input(tuple(x.shape[1:]))}"
    with torch.random.fork_rng(devices=[]):
        model = build_model(name, tuple(x.shape[1:]), num_classes).to(x.device).eval()
        try:
            with torch.no_grad():
                out = model(x)
        except Exception as exc:
            raise ValueError(f"--model {name!r}: the model failed on {what}: {_first_line(exc)}") from exc
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"--model {name!r}: on {what} the model returned a {type(out).__name__}, expected logits")
    if tuple(out.shape) != (b, num_classes) or not out.is_floating_point():
        raise ValueError(
            f"--model {name!r}: on {what} the model returned {out.dtype} logits of shape {tuple(out.shape)}, "
            f"expected a float (B, num_classes) = ({b}, {num_classes})"
        )
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"--model {name!r}: on {what} the model returned NaN or inf logits")


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


@register_model("reference-cnn", takes=3)
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


@register_model("preact-resnet-small", takes=3, mix_layers=("input", "blocks.0", "blocks.1", "blocks.2"))
def _preact_resnet_small(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise refuse_input("preact-resnet-small", 3, input_shape)
    return PreActResNet(input_shape[0], num_classes)


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 as the mixup paper trained it on CIFAR (Zhang et al., ICLR 2018).

    The network of the paper's code (facebookresearch/mixup-cifar10, ``models/resnet.py``:
    ``ResNet(PreActBlock, [2, 2, 2, 2])``, adapted from Kuang Liu's pytorch-cifar):
    ``conv1`` (3×3, 64) → ``bn1`` → ReLU → ``layer1`` … ``layer4`` (two pre-activation
    basic blocks each, 64 / 128 / 256 / 512 channels, strides 1 / 2 / 2 / 2; a 1×1
    convolution of the pre-activated input where a block changes shape) → global
    average pool → ``linear``. Unlike He et al.'s pre-activation ResNet (and Liu's
    ``PreActResNet18``), the stem has BN-ReLU and there is no BN-ReLU before the pool.
    PyTorch's default initialisation, as in that code. 11,171,274 parameters for 3
    channels and 10 classes.

    Input: float (B, C, H, W) (CIFAR: 32×32; any size works, the pool is global);
    output: (B, num_classes) logits. Mixing points for Manifold Mixup: ``"layer1"`` …
    ``"layer4"`` (Verma et al. 2019 mix at the input, ``layer1`` or ``layer2``: the
    suggestion).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)

        def stage(cin: int, width: int, stride: int) -> nn.Sequential:
            return nn.Sequential(_PreActBlock(cin, width, stride), _PreActBlock(width, width, 1))

        self.layer1 = stage(64, 64, 1)
        self.layer2 = stage(64, 128, 2)
        self.layer3 = stage(128, 256, 2)
        self.layer4 = stage(256, 512, 2)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(out.mean(dim=(2, 3)))


@register_model("preact-resnet18", takes=3, mix_layers=("input", "layer1", "layer2"))
def _preact_resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise refuse_input("preact-resnet18", 3, input_shape)
    return PreActResNet18(input_shape[0], num_classes)


class _WideBlock(nn.Module):
    """A wide basic block: BN-ReLU → conv 3×3 (stride) → dropout → BN-ReLU → conv 3×3, plus
    the input, or a 1×1 convolution of the pre-activated input where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(torch.relu(self.bn2(out))) + skip


class WideResNet(nn.Module):
    """Wide ResNet WRN-``depth``-``widen`` (Zagoruyko & Komodakis, BMVC 2016), for CIFAR-sized images.

    ``conv1`` (3×3, 16) → ``block1``, ``block2``, ``block3`` ((depth − 4) / 6 wide basic
    blocks each, 16·widen / 32·widen / 64·widen channels, strides 1 / 2 / 2) → ``bn`` →
    ReLU → global average pool → ``fc``. Initialisation as the authors': He-normal
    convolutions (fan out), BatchNorm weight 1 and bias 0, linear bias 0. WRN-28-10 with
    3 channels and 10 classes has 36,479,194 parameters.

    Input: float (B, C, H, W); output: (B, num_classes) logits. Mixing points for
    Manifold Mixup: ``"block1"`` … ``"block3"`` (suggested: the input, ``block1``,
    ``block2``).

    Args:
        dropout: the rate between a block's convolutions; 0 (none) unless a paper states it.
    """

    def __init__(
        self, depth: int = 28, widen: int = 10, in_channels: int = 3, num_classes: int = 10, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)

        def group(cin: int, width: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                *(_WideBlock(cin if j == 0 else width, width, stride if j == 0 else 1, dropout) for j in range(n))
            )

        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.block1 = group(16, widths[0], 1)
        self.block2 = group(widths[0], widths[1], 2)
        self.block3 = group(widths[1], widths[2], 2)
        self.bn = nn.BatchNorm2d(widths[2])
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(torch.relu(self.bn(out)).mean(dim=(2, 3)))


@register_model("wrn-28-10", takes=3, mix_layers=("input", "block1", "block2"))
def _wrn_28_10(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise refuse_input("wrn-28-10", 3, input_shape)
    return WideResNet(28, 10, input_shape[0], num_classes)


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


@register_model("mlp", takes=1, mix_layers=("input", "block1", "block2"))
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


@register_model("gru", takes=2, mix_layers=("input", "embed", "gru"))
def _gru(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 2:
        raise refuse_input("gru", 2, input_shape)
    return GRUClassifier(input_shape[1], num_classes)
