"""Write the intersphinx inventories the documentation links against.

The docs are built without network access, so intersphinx reads these small
inventories instead of downloading each project's ``objects.inv``. Each lists
only the objects our pages and docstrings cross-reference, with the URL of
that object in the project's published documentation.

Run from anywhere after adding a cross-reference to a new external object::

    python docs/_inventories/make_inventories.py

The files use Sphinx's inventory format version 2: four plain header lines,
then zlib-compressed lines ``name domain:role priority uri display-name``,
where a URI ending in ``$`` stands for the URI with the object's name in its
place and a display name of ``-`` means the object's name itself.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# project key -> (project name, version, base URL, [(name, domain:role, relative URI)])
INVENTORIES: dict[str, tuple[str, str, str, list[tuple[str, str, str]]]] = {
    "python": (
        "Python",
        "3",
        "https://docs.python.org/3/",
        [
            ("int", "py:class", "library/functions.html#$"),
            ("float", "py:class", "library/functions.html#$"),
            ("bool", "py:class", "library/functions.html#$"),
            ("object", "py:class", "library/functions.html#$"),
            ("callable", "py:function", "library/functions.html#$"),
            ("str", "py:class", "library/stdtypes.html#$"),
            ("tuple", "py:class", "library/stdtypes.html#$"),
            ("list", "py:class", "library/stdtypes.html#$"),
            ("dict", "py:class", "library/stdtypes.html#$"),
            ("None", "py:data", "library/constants.html#$"),
            ("True", "py:data", "library/constants.html#$"),
            ("False", "py:data", "library/constants.html#$"),
            ("ValueError", "py:exception", "library/exceptions.html#$"),
            ("TypeError", "py:exception", "library/exceptions.html#$"),
            ("RuntimeError", "py:exception", "library/exceptions.html#$"),
            ("KeyError", "py:exception", "library/exceptions.html#$"),
            ("RuntimeWarning", "py:exception", "library/exceptions.html#$"),
            ("UserWarning", "py:exception", "library/exceptions.html#$"),
            ("collections.abc.Sequence", "py:class", "library/collections.abc.html#$"),
            ("collections.abc.Callable", "py:class", "library/collections.abc.html#$"),
            ("collections.abc.Hashable", "py:class", "library/collections.abc.html#$"),
            ("collections.abc.Iterable", "py:class", "library/collections.abc.html#$"),
            ("typing.Any", "py:data", "library/typing.html#$"),
            ("contextlib.contextmanager", "py:function", "library/contextlib.html#$"),
            ("threading.local", "py:class", "library/threading.html#$"),
            ("threading.Thread", "py:class", "library/threading.html#$"),
            ("warnings.catch_warnings", "py:class", "library/warnings.html#$"),
            ("dataclasses.dataclass", "py:function", "library/dataclasses.html#$"),
        ],
    ),
    "numpy": (
        "NumPy",
        "stable",
        "https://numpy.org/doc/stable/",
        [
            ("numpy", "py:module", "reference/index.html#module-$"),
            ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html#$"),
            ("numpy.float32", "py:class", "reference/arrays.scalars.html#$"),
            ("numpy.float64", "py:class", "reference/arrays.scalars.html#$"),
            ("numpy.allclose", "py:function", "reference/generated/numpy.allclose.html#$"),
            ("numpy.einsum", "py:function", "reference/generated/numpy.einsum.html#$"),
            ("numpy.linalg.svd", "py:function", "reference/generated/numpy.linalg.svd.html#$"),
            ("numpy.random.default_rng", "py:function", "reference/random/generator.html#$"),
        ],
    ),
    "torch": (
        "PyTorch",
        "stable",
        "https://docs.pytorch.org/docs/stable/",
        [
            ("torch", "py:module", "torch.html#module-$"),
            ("torch.Tensor", "py:class", "tensors.html#$"),
            ("torch.dtype", "py:class", "tensor_attributes.html#$"),
            ("torch.device", "py:class", "tensor_attributes.html#$"),
            # Context managers PyTorch documents as classes and docstrings
            # (ours and PyTorch's) cite with :func:; listed under both roles.
            ("torch.no_grad", "py:class", "generated/torch.no_grad.html#$"),
            ("torch.no_grad", "py:function", "generated/torch.no_grad.html#$"),
            ("torch.inference_mode", "py:class", "generated/torch.inference_mode.html#$"),
            ("torch.inference_mode", "py:function", "generated/torch.inference_mode.html#$"),
            ("torch.autocast", "py:function", "amp.html#$"),
            ("torch.initial_seed", "py:function", "generated/torch.initial_seed.html#$"),
            ("torch.Generator", "py:class", "generated/torch.Generator.html#$"),
            ("torch.nn.Module", "py:class", "generated/torch.nn.Module.html#$"),
            ("torch.nn.Conv2d", "py:class", "generated/torch.nn.Conv2d.html#$"),
            ("torch.nn.Linear", "py:class", "generated/torch.nn.Linear.html#$"),
            # Where the layer classes are defined, as "Bases:" lines name them.
            ("torch.nn.modules.conv.Conv2d", "py:class", "generated/torch.nn.Conv2d.html#torch.nn.Conv2d"),
            ("torch.nn.modules.linear.Linear", "py:class", "generated/torch.nn.Linear.html#torch.nn.Linear"),
            ("torch.nn.Parameter", "py:class", "generated/torch.nn.parameter.Parameter.html#torch.nn.parameter.Parameter"),
            ("torch.nn.parameter.Parameter", "py:class", "generated/torch.nn.parameter.Parameter.html#$"),
            ("torch.nn.functional.conv2d", "py:function", "generated/torch.nn.functional.conv2d.html#$"),
            ("torch.nn.functional.linear", "py:function", "generated/torch.nn.functional.linear.html#$"),
            ("torch.autograd.Function", "py:class", "autograd.html#$"),
            ("torch.autograd.graph.saved_tensors_hooks", "py:class", "autograd.html#$"),
            ("torch.autograd.graph.save_on_cpu", "py:class", "autograd.html#$"),
            ("torch.cuda.max_memory_allocated", "py:function", "generated/torch.cuda.max_memory_allocated.html#$"),
            ("torch.cuda.reset_peak_memory_stats", "py:function", "generated/torch.cuda.reset_peak_memory_stats.html#$"),
            ("torch.utils.checkpoint.checkpoint", "py:function", "checkpoint.html#$"),
            ("torch.autocast", "py:class", "amp.html#$"),
            ("torch.optim.SGD", "py:class", "generated/torch.optim.SGD.html#$"),
        ],
    ),
    "tensorly": (
        "TensorLy",
        "stable",
        "https://tensorly.org/stable/",
        [
            ("tensorly", "py:module", "modules/api.html#module-$"),
            ("tensorly.set_backend", "py:function", "modules/generated/tensorly.set_backend.html#$"),
            ("tensorly.get_backend", "py:function", "modules/generated/tensorly.get_backend.html#$"),
            ("tensorly.backend_context", "py:function", "modules/generated/tensorly.backend_context.html#$"),
            ("tensorly.context", "py:function", "modules/generated/tensorly.context.html#$"),
            ("tensorly.to_numpy", "py:function", "modules/generated/tensorly.to_numpy.html#$"),
            ("tensorly.tensor", "py:function", "modules/generated/tensorly.tensor.html#$"),
            ("tensorly.cp_tensor", "py:module", "modules/api.html#module-$"),
            ("tensorly.tucker_tensor", "py:module", "modules/api.html#module-$"),
            ("tensorly.tt_tensor", "py:module", "modules/api.html#module-$"),
            # TensorLy documents its factorized-tensor classes only through
            # their modules, so the classes link to those modules' sections.
            ("tensorly.cp_tensor.CPTensor", "py:class", "modules/api.html#module-tensorly.cp_tensor"),
            ("tensorly.tucker_tensor.TuckerTensor", "py:class", "modules/api.html#module-tensorly.tucker_tensor"),
            ("tensorly.tt_tensor.TTTensor", "py:class", "modules/api.html#module-tensorly.tt_tensor"),
            ("tensorly.cp_tensor.cp_to_tensor", "py:function", "modules/generated/tensorly.cp_tensor.cp_to_tensor.html#$"),
            ("tensorly.tucker_tensor.tucker_to_tensor", "py:function", "modules/generated/tensorly.tucker_tensor.tucker_to_tensor.html#$"),
            ("tensorly.tt_tensor.tt_to_tensor", "py:function", "modules/generated/tensorly.tt_tensor.tt_to_tensor.html#$"),
            ("tensorly.decomposition.parafac", "py:function", "modules/generated/tensorly.decomposition.parafac.html#$"),
            ("tensorly.decomposition.tucker", "py:function", "modules/generated/tensorly.decomposition.tucker.html#$"),
            ("tensorly.decomposition.tensor_train", "py:function", "modules/generated/tensorly.decomposition.tensor_train.html#$"),
        ],
    ),
    "jax": (
        "JAX",
        "latest",
        "https://docs.jax.dev/en/latest/",
        [
            ("jax.Array", "py:class", "_autosummary/jax.Array.html#$"),
            ("jax.numpy.asarray", "py:function", "_autosummary/jax.numpy.asarray.html#$"),
        ],
    ),
}


def inventory_bytes(project: str, version: str, entries: list[tuple[str, str, str]]) -> bytes:
    """An ``objects.inv`` (format version 2) listing ``entries``."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    body = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in sorted(entries)).encode()
    return header + zlib.compress(body, 9)


def main() -> None:
    for key, (project, version, _base, entries) in INVENTORIES.items():
        path = HERE / f"{key}.inv"
        path.write_bytes(inventory_bytes(project, version, entries))
        print(f"wrote {path.name}: {len(entries)} objects")


if __name__ == "__main__":
    main()
