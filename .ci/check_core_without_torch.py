"""Run by .ci/run in a venv holding only `pip install vicinal` (no extras)."""

import sys

import numpy as np

import vicinal

assert "torch" not in sys.modules, "import vicinal imported torch"
x = np.random.default_rng(0).random((8, 3, 6, 6)).astype(np.float32)
y = np.arange(8) % 5
for mixer in (vicinal.MixUp(num_classes=5, seed=0), vicinal.CutMix(num_classes=5, seed=0)):
    x_mixed, y_mixed = mixer(x, y)
    assert x_mixed.shape == x.shape and x_mixed.dtype == x.dtype
    assert np.allclose(y_mixed.sum(axis=1), 1.0)
assert "torch" not in sys.modules, "mixing NumPy arrays imported torch"
message = ""
try:
    vicinal.MixCollate  # noqa: B018
except ImportError as exc:
    message = str(exc)
assert "vicinal[torch]" in message, f"vicinal.MixCollate should need PyTorch and say so, got {message!r}"
print("core without torch: ok")
