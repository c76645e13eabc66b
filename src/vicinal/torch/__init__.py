"""The PyTorch-only parts of vicinal: everything here imports ``torch`` at module level.

The core (:mod:`vicinal.sampling`, :mod:`vicinal.mixing`, :mod:`vicinal.transforms`,
:mod:`vicinal.masks`, :mod:`vicinal.dense`) needs only NumPy and uses PyTorch when it is
handed tensors; the modules of this package need PyTorch to import at all:

* :mod:`vicinal.torch.collate`: :class:`MixCollate` and :func:`mixing_loader`, mixing
  inside ``DataLoader`` workers;
* :mod:`vicinal.torch.losses`: soft-target cross-entropy and :func:`mixed_loss`;
* :mod:`vicinal.torch.manifold`: Manifold Mixup on hidden layers of a module;
* :mod:`vicinal.torch.augmix`: AugMix chains (kornia's image ops);
* :mod:`vicinal.torch.regmixup`: RegMixup, CE on the clean batch plus η·CE on a mixed copy;
* :mod:`vicinal.torch.mit`: mixup inference in training, the raw samples' logits
  recovered from two mixes of the same pairs.

The package's own name shadows nothing: inside vicinal, ``import torch`` is absolute and
always means PyTorch.
"""

from __future__ import annotations

__all__: list[str] = []
