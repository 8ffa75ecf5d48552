"""PyTorch adapters: compress the activations autograd keeps for backward.

Two styles over the same core decompositions:

- :func:`compress_activations`, a ``saved_tensors_hooks`` context manager that
  packs saved activations with any registered method, for any architecture;
- :func:`convert`, which swaps ``nn.Conv2d``/``nn.Linear`` layers for
  compressed versions whose backward computes the weight gradient straight
  from the factors.
"""

from .baselines import PatchMeans, QuantizedTensor, StoredTensor, offload, patch_mean, quantize
from .grad_weight import conv2d_weight_from_factors, linear_weight_from_factors
from .layers import CompressedConv2d, CompressedLinear, convert, memory_stats
from .hooks import compress_activations
from .memory import ActivationMemory, LayerRecord

__all__ = [
    "ActivationMemory",
    "LayerRecord",
    "CompressedConv2d",
    "CompressedLinear",
    "convert",
    "memory_stats",
    "conv2d_weight_from_factors",
    "linear_weight_from_factors",
    "compress_activations",
    "offload",
    "patch_mean",
    "quantize",
    "PatchMeans",
    "QuantizedTensor",
    "StoredTensor",
]
