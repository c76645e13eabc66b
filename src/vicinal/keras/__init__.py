"""Keras 3 front end: vicinal's mixing in a Keras training pipeline, on any backend.

Every random decision is drawn on the host by :func:`vicinal.sampling.sample_plan`
(NumPy, a pure function of ``(seed, epoch, step, rank)``), so a seed gives the same
plans here as on the PyTorch path; only the arithmetic is done here, with ``keras.ops``
(:mod:`vicinal.keras.ops`) or, for :class:`MixedBatches`, with the core in NumPy.

* :class:`MixLayer` (:mod:`vicinal.keras.layer`): a layer that mixes concrete batches
  of images and labels; saved with a model in the ``.keras`` format.
* :class:`MixedBatches` and :class:`SetEpoch` (:mod:`vicinal.keras.data`): a
  ``keras.utils.PyDataset`` of shuffled, mixed batches of in-memory arrays for
  ``model.fit``, and the callback that tells it fit's epoch.
* :func:`tf_dataset` (:mod:`vicinal.keras.tfdata`, also ``MixedBatches.tf_dataset()``):
  the same batches made inside a ``tf.data`` graph, the fast way to feed ``model.fit``
  on the TensorFlow backend (needs TensorFlow; imported only when called).
* :func:`mix_with_plan` and :func:`plan_to_tensors` (:mod:`vicinal.keras.ops`): the mixing
  as a pure ``keras.ops`` function of a batch and a plan given as arrays, for traced
  code (``jax.jit``, ``tf.function``, ``tf.data`` on the TensorFlow backend).

Keras is an optional dependency (``pip install 'vicinal[keras]'``); importing this
package imports it. Works with the torch, JAX and TensorFlow backends.
"""

from __future__ import annotations

from vicinal.keras.data import MixedBatches, SetEpoch
from vicinal.keras.layer import MixLayer
from vicinal.keras.ops import mix_with_plan, plan_to_tensors
from vicinal.keras.ops import plan_tensors as plan_tensors  # the deprecated name, importable as before
from vicinal.keras.tfdata import tf_dataset
from vicinal.mixing import DATA_FORMATS as DATA_FORMATS  # importable from here, as before the split

__all__ = ["MixLayer", "MixedBatches", "SetEpoch", "mix_with_plan", "plan_to_tensors", "tf_dataset"]
