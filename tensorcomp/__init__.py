"""tensorcomp: variance-truncated tensor decompositions on any TensorLy backend."""

from ._algebra import rank_for_energy
from ._results import CPResult, SVDResult, TTResult, TuckerResult
from .cp import cp
from .hosvd import hosvd
from .registry import MethodInfo, available_methods, decompose, method_info, register
from .subspace import subspace_iteration
from .svd import svd
from .tt import tt
from .tucker import tucker

__version__ = "0.1.0"

# The core methods and what each can do: code that needs a capability reads
# it from the catalogue (tensorcomp.method_info), never from the name.
register("svd", svd, linear_view="tokens")
register("hosvd", hosvd)
register("tucker", tucker)
register("cp", cp)
register("tt", tt)
register("subspace", subspace_iteration, warm_start=True)

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
    "method_info",
    "MethodInfo",
    "rank_for_energy",
    "SVDResult",
    "TuckerResult",
    "CPResult",
    "TTResult",
]
