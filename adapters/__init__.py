"""PyTorch adapters: compress the activations autograd keeps for backward.

Two styles over the same core decompositions:

- :func:`compress_activations`, a ``saved_tensors_hooks`` context manager that
  packs saved activations with any registered method, for any architecture;
- :func:`convert`, which swaps ``nn.Conv2d``/``nn.Linear`` layers for
  compressed versions whose backward computes the weight gradient straight
  from the factors.
"""

from .memory import ActivationMemory, LayerRecord

__all__ = [
    "ActivationMemory",
    "LayerRecord",
]
