"""tensorcomp: variance-truncated tensor decompositions on any TensorLy backend."""

from ._algebra import rank_for_energy
from ._results import CPResult, SVDResult, TTResult, TuckerResult
from .cp import cp
from .hosvd import hosvd
from .registry import available_methods, decompose, register
from .subspace import subspace_iteration
from .svd import svd
from .tt import tt
from .tucker import tucker

__version__ = "0.1.0"

for _name, _fn in [
    ("svd", svd),
    ("hosvd", hosvd),
    ("tucker", tucker),
    ("cp", cp),
    ("tt", tt),
    ("subspace", subspace_iteration),
]:
    register(_name, _fn)
del _name, _fn

__all__ = [
    "svd",
    "hosvd",
    "tucker",
    "cp",
    "tt",
    "subspace_iteration",
    "decompose",
    "register",
    "available_methods",
    "rank_for_energy",
    "SVDResult",
    "TuckerResult",
    "CPResult",
    "TTResult",
]
