"""PyTorch adapters: compress the activations autograd keeps for backward.

Two styles over the same core decompositions:

- :func:`compress_activations`, a ``saved_tensors_hooks`` context manager
  under which every op keeps the most compact form its backward allows, for
  any architecture;
- :func:`convert`, which swaps ``nn.Conv2d``/``nn.Linear`` layers for
  compressed versions and runs each training forward under the same policy.

What each op keeps is decided in one table, :mod:`tensorcomp.adapters.policy`;
what a step holds is counted in :mod:`tensorcomp.adapters._held`.
Importing the package registers the baseline methods (``"vanilla"``,
``"save_on_cpu"``, ``"gradfilter_r2/4/7"``, ``"quant8/4/2"``) in the core
catalogue, with their capabilities.
"""

from .baselines import PatchMeans, QuantizedTensor, StoredTensor, offload, patch_mean, quantize, register_baselines
from .grad_weight import conv2d_weight_from_factors, linear_weight_from_factors
from .layers import CompressedConv2d, CompressedLinear, convert, memory_stats
from ._held import HeldStep
from .hooks import compress_activations
from .masks import BitMask, narrow_index_dtype
from .memory import ActivationMemory, LayerRecord

# The baselines join the core catalogue here, explicitly; a second call (the
# package imported again, or under another name from a source checkout) leaves
# the names already registered as they are.
register_baselines()

__all__ = [
    "ActivationMemory",
    "LayerRecord",
    "HeldStep",
    "BitMask",
    "narrow_index_dtype",
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
