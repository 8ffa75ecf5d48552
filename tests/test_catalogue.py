"""The method catalogue: capabilities, the baselines' registration, the adapters' lookups and check_method."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tensorcomp
from tensorcomp import registry
from tensorcomp.testing import check_method

try:
    import torch
    from torch import nn

    import tensorcomp.adapters  # registers the baselines
except ImportError:  # a core-only install runs the core half of this file
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch")

ROOT = Path(__file__).resolve().parents[1]
CORE = ("svd", "hosvd", "tucker", "tt", "cp", "subspace")
BASELINES = ("vanilla", "save_on_cpu", "gradfilter_r2", "gradfilter_r4", "gradfilter_r7", "quant8", "quant4", "quant2")
X3 = np.random.default_rng(1).standard_normal((6, 5, 4))


@pytest.fixture
def scratch():
    """Names registered through this fixture are removed afterwards, whatever the test did."""
    names = []

    def register(name, fn, **capabilities):
        names.append(name)
        return tensorcomp.register(name, fn, **capabilities)

    yield register
    for name in names:
        registry._METHODS.pop(name, None)


# -- the records ---------------------------------------------------------------------


def test_core_methods_are_registered_with_their_capabilities():
    expected = {name: {} for name in CORE}
    expected["svd"] = {"linear_view": "tokens"}
    expected["subspace"] = {"warm_start": True}
    for name, capabilities in expected.items():
        info = tensorcomp.method_info(name)
        assert info == tensorcomp.MethodInfo(name, info.fn, **capabilities)
    assert tensorcomp.method_info("subspace").fn is tensorcomp.subspace_iteration
    assert tensorcomp.method_info("cp").fn is tensorcomp.cp


@needs_torch
def test_baselines_are_registered_with_their_capabilities():
    for name in BASELINES:
        info = tensorcomp.method_info(name)
        assert not info.uses_eps and not info.warm_start and info.linear_view == "tensor", name
        assert info.exact == (name in ("vanilla", "save_on_cpu")), name
        assert info.stores_input == (name == "vanilla"), name


def test_method_info_of_an_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown method 'nope'; available methods: .*hosvd"):
        tensorcomp.method_info("nope")
    with pytest.raises(ValueError, match="unknown method"):
        tensorcomp.method_info(["hosvd"])


def test_records_are_frozen_and_compare_by_value():
    info = tensorcomp.method_info("hosvd")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.uses_eps = False
    assert info == tensorcomp.MethodInfo("hosvd", tensorcomp.hosvd)
    assert info != tensorcomp.MethodInfo("hosvd", tensorcomp.hosvd, uses_eps=False)


# -- filtering -------------------------------------------------------------------------


def test_available_methods_without_filters_is_every_name_sorted():
    names = tensorcomp.available_methods()
    assert names == tuple(sorted(registry._METHODS)) and set(CORE) <= set(names)


def test_available_methods_filters_by_capability():
    assert "subspace" in tensorcomp.available_methods(warm_start=True)
    assert "hosvd" not in tensorcomp.available_methods(warm_start=True)
    assert "svd" in tensorcomp.available_methods(linear_view="tokens")
    assert "svd" not in tensorcomp.available_methods(linear_view="tensor")
    assert set(CORE) <= set(tensorcomp.available_methods(uses_eps=True, exact=False))
    assert tensorcomp.available_methods(warm_start=True, linear_view="tokens") == ()
    if torch is not None:
        assert set(tensorcomp.available_methods(uses_eps=False)) >= set(BASELINES)
        assert not set(CORE) & set(tensorcomp.available_methods(uses_eps=False))
        assert {"vanilla", "save_on_cpu"} <= set(tensorcomp.available_methods(exact=True))
        assert "vanilla" in tensorcomp.available_methods(stores_input=True)
        assert "save_on_cpu" not in tensorcomp.available_methods(stores_input=True)


def test_available_methods_rejects_bad_filters():
    with pytest.raises(TypeError, match="uses_eps must be True, False or None"):
        tensorcomp.available_methods(uses_eps="yes")
    with pytest.raises(ValueError, match="linear_view must be one of"):
        tensorcomp.available_methods(linear_view="matrix")
    with pytest.raises(TypeError):
        tensorcomp.available_methods(fast=True)


def test_a_user_method_is_found_by_its_declared_capabilities(scratch):
    def fixed(x, eps=0.9, **kwargs):
        return tensorcomp.hosvd(x, rank=1)

    scratch("test_catalogue_fixed", fixed, uses_eps=False)
    assert "test_catalogue_fixed" in tensorcomp.available_methods(uses_eps=False)
    assert "test_catalogue_fixed" not in tensorcomp.available_methods(uses_eps=True)
    assert tensorcomp.method_info("test_catalogue_fixed").fn is fixed


# -- register --------------------------------------------------------------------------


def test_register_again_is_harmless_only_with_the_same_capabilities(scratch):
    def mine(x, eps=0.9, **kwargs):
        return tensorcomp.hosvd(x, eps)

    assert scratch("test_catalogue_mine", mine, warm_start=False) is mine
    scratch("test_catalogue_mine", mine)  # the same record again
    with pytest.raises(ValueError, match="already registered with other capabilities; pass overwrite=True"):
        tensorcomp.register("test_catalogue_mine", mine, uses_eps=False)
    tensorcomp.register("test_catalogue_mine", mine, uses_eps=False, overwrite=True)
    assert not tensorcomp.method_info("test_catalogue_mine").uses_eps


@pytest.mark.parametrize(
    "capabilities, error, message",
    [
        ({"uses_eps": 1}, TypeError, "uses_eps must be True or False"),
        ({"warm_start": "yes"}, TypeError, "warm_start must be True or False"),
        ({"exact": None}, TypeError, "exact must be True or False"),
        ({"linear_view": "matrix"}, ValueError, "linear_view must be one of"),
        ({"stores_input": True}, ValueError, "needs exact=True"),
        ({"overwrite": "yes"}, TypeError, "overwrite must be True or False"),
    ],
)
def test_register_checks_the_capabilities(capabilities, error, message):
    with pytest.raises(error, match=message):
        tensorcomp.register("test_catalogue_bad", tensorcomp.hosvd, **capabilities)
    assert "test_catalogue_bad" not in tensorcomp.available_methods()


# -- the baselines' registration -------------------------------------------------------


@needs_torch
def test_registering_the_baselines_again_changes_nothing():
    from tensorcomp.adapters.baselines import register_baselines

    before = {name: tensorcomp.method_info(name) for name in BASELINES}
    assert register_baselines() == ()
    assert register_baselines() == ()
    assert {name: tensorcomp.method_info(name) for name in BASELINES} == before


@needs_torch
def test_register_baselines_fills_a_missing_name_and_leaves_a_users_alone():
    from tensorcomp.adapters.baselines import register_baselines

    original = registry._METHODS["quant2"]
    try:
        registry._METHODS.pop("quant2")
        assert register_baselines() == ("quant2",)
        restored = tensorcomp.method_info("quant2")
        assert restored == dataclasses.replace(original, fn=restored.fn) and restored.fn.bits == 2

        def users(x, eps=0.9):
            return tensorcomp.adapters.quantize(x, 2)

        tensorcomp.register("quant2", users, uses_eps=False, overwrite=True)
        assert register_baselines() == ()
        assert tensorcomp.method_info("quant2").fn is users
    finally:
        registry._METHODS["quant2"] = original


@needs_torch
def test_importing_baselines_registers_nothing_and_two_module_names_do_not_clash():
    # In a fresh interpreter: the module body alone registers nothing, and the
    # package imported under its source-checkout name too ("adapters") is harmless.
    code = """
import importlib, tensorcomp
import tensorcomp.adapters.baselines as baselines
names = ("vanilla", "save_on_cpu", "gradfilter_r2", "gradfilter_r4", "gradfilter_r7", "quant8", "quant4", "quant2")
ours = {name: tensorcomp.method_info(name) for name in names}
for name in names:
    tensorcomp.registry._METHODS.pop(name)
importlib.reload(baselines)
assert not set(names) & set(tensorcomp.available_methods()), "importing baselines.py registered methods"
assert baselines.register_baselines() == names
assert baselines.register_baselines() == ()
tensorcomp.registry._METHODS.update(ours)
import adapters  # the same files under a second name
assert adapters.baselines is not tensorcomp.adapters.baselines
assert all(tensorcomp.method_info(name) is ours[name] for name in names)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# -- the adapters read the catalogue -----------------------------------------------------


@needs_torch
def test_the_compressor_warm_starts_only_a_method_declared_warm_startable(scratch):
    from tensorcomp.adapters._compress import Compressor

    seen = {"declared": [], "undeclared": []}

    def recorder(label):
        def fn(x, eps=0.9, *, init=None, **kwargs):
            seen[label].append(init is not None)
            return tensorcomp.subspace_iteration(x, eps, init=init)

        return fn

    scratch("test_catalogue_warm", recorder("declared"), warm_start=True)
    scratch("test_catalogue_cold", recorder("undeclared"))  # accepts init= but does not declare it
    x = torch.randn(4, 3, 5, 5)
    for name in ("test_catalogue_warm", "test_catalogue_cold"):
        compressor = Compressor(name, 0.8)
        for _ in range(3):
            compressor(x, key="layer")
    assert seen == {"declared": [False, True, True], "undeclared": [False, False, False]}


@needs_torch
def test_a_method_declaring_stores_input_keeps_the_activation_without_being_called(scratch):
    from tensorcomp.adapters._compress import Compressor

    def never(x, eps=0.9):
        raise AssertionError("a stores_input method is not called by the adapters")

    scratch("test_catalogue_as_is", never, uses_eps=False, exact=True, stores_input=True)
    x = torch.randn(4, 6)
    packed = Compressor("test_catalogue_as_is")(x)
    assert packed.result is None and packed.unpack() is not None and torch.equal(packed.unpack(), x)
    assert packed.nbytes == packed.original_nbytes


@needs_torch
@pytest.mark.parametrize("view, expected", [("tokens", (2 * 5, 8)), ("tensor", (2, 5, 8))])
def test_a_linear_layer_input_follows_the_declared_view(scratch, view, expected):
    shapes = []

    def spy(x, eps=0.9, **kwargs):
        shapes.append(tuple(x.shape))
        return tensorcomp.hosvd(x, eps)

    scratch(f"test_catalogue_{view}", spy, linear_view=view)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(2, 5, 8)
    with tensorcomp.adapters.compress_activations(model, f"test_catalogue_{view}", eps=0.9, min_numel=1):
        loss = model(x).square().sum()
    loss.backward()
    assert shapes and all(s == expected for s in shapes)


def test_no_adapter_or_core_module_tests_a_method_by_name():
    pattern = re.compile(r"""method\s*(==|!=)\s*["']|method\s+(not\s+)?in\s*[(\[{]""")
    offenders = []
    for folder in ("adapters", "tensorcomp"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# -- check_method over every registered method ---------------------------------------------


@pytest.mark.parametrize("name", tensorcomp.available_methods())
def test_every_registered_method_follows_the_protocol(name):
    if name in CORE:
        check_method(name)
    if torch is not None:
        check_method(name, make_input=torch.from_numpy)


def test_a_user_registered_method_follows_the_protocol(scratch):
    def tucker_two_sweeps(x, eps=0.9, **kwargs):
        return tensorcomp.tucker(x, eps, n_iter_max=2, **kwargs)

    def warm(x, eps=0.9, *, init=None):
        return tensorcomp.subspace_iteration(x, eps, init=init, n_iter=2)

    scratch("test_catalogue_tucker2", tucker_two_sweeps)
    scratch("test_catalogue_subspace2", warm, warm_start=True)
    check_method("test_catalogue_tucker2")
    check_method(tucker_two_sweeps)  # found by its function
    check_method("test_catalogue_subspace2")


def test_check_method_takes_an_unregistered_function_and_custom_inputs():
    def matrices_only(x, eps=0.9):
        if x.ndim != 2:
            raise ValueError("matrices only")
        return tensorcomp.svd(x, eps)

    with pytest.raises(AssertionError, match="'matrices_only'.*raised ValueError: matrices only"):
        check_method(matrices_only)
    rng = np.random.default_rng(0)
    check_method(matrices_only, inputs=[rng.standard_normal((9, 7)), rng.standard_normal((5, 8)).astype(np.float32)])


def test_check_method_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        check_method("nope")
    with pytest.raises(TypeError, match="registered name, a MethodInfo or a callable"):
        check_method(3)
    with pytest.raises(ValueError, match="at least one array"):
        check_method("svd", inputs=[])
    with pytest.raises(TypeError, match="floating-point numpy arrays"):
        check_method("svd", inputs=[np.arange(6).reshape(2, 3)])


# -- a broken method fails check_method ---------------------------------------------------


class Fake:
    """A result with settable members, built from a real one."""

    def __init__(self, real, **members):
        self.real = real
        self.nbytes = real.nbytes
        self.rank = real.rank
        self.explained_variance = real.explained_variance
        self.__dict__.update(members)

    def to_tensor(self):
        return self.real.to_tensor()


def _faking(**members):
    def fn(x, eps=0.9, **kwargs):
        return Fake(tensorcomp.hosvd(x, eps), **members)

    return fn


class WrongShape(Fake):
    def to_tensor(self):
        return self.real.to_tensor().reshape(-1)


class AsList(Fake):
    def to_tensor(self):
        return self.real.to_tensor().tolist()


def _in_place(x, eps=0.9):
    res = tensorcomp.hosvd(x, eps)
    x *= 2
    return res


def _more_at_lower_eps(x, eps=0.9):
    return tensorcomp.hosvd(x, 1.1 - eps)


def _ignores_eps(x, eps=0.9):
    return tensorcomp.hosvd(x, 0.5)


def _copies(x, eps=0.9):
    return Fake(tensorcomp.hosvd(x, 1.0), to_tensor=lambda: x.copy(), explained_variance=1.0)


BROKEN = {
    "rank as a list": (_faking(rank=[1, 2]), {}, "rank must be None, an int or a non-empty tuple of ints; got \\[1, 2\\]"),
    "rank of floats": (_faking(rank=(1.0, 2.0)), {}, "rank must be None"),
    "rank a bool": (_faking(rank=True), {}, "rank must be None"),
    "nbytes a float": (_faking(nbytes=12.0), {}, "nbytes must be a non-negative int"),
    "nbytes a numpy int": (_faking(nbytes=np.int64(12)), {}, "nbytes must be a non-negative int.*numpy.int64"),
    "nbytes negative": (_faking(nbytes=-1), {}, "nbytes must be a non-negative int"),
    "variance above 1": (_faking(explained_variance=1.5), {}, "explained_variance must be a float in \\[0, 1\\]"),
    "variance a numpy float32": (_faking(explained_variance=np.float32(0.5)), {}, "explained_variance must be a float"),
    "variance NaN": (_faking(explained_variance=float("nan")), {}, "explained_variance must be a float in"),
    "variance not achieved": (_faking(explained_variance=0.99), {}, "explained_variance is 0.99 but to_tensor\\(\\) achieves"),
    "no to_tensor": (lambda x, eps=0.9: np.asarray(x), {}, "has no 'to_tensor'"),
    "no rank": (lambda x, eps=0.9: type("R", (), {"to_tensor": 1, "nbytes": 1})(), {}, "has no 'rank'"),
    "wrong shape": (lambda x, eps=0.9: WrongShape(tensorcomp.hosvd(x, eps)), {}, "to_tensor\\(\\) has shape"),
    "not an array": (lambda x, eps=0.9: AsList(tensorcomp.hosvd(x, eps)), {}, "must return an array of x's backend \\(numpy\\)"),
    "raises": (lambda x, eps=0.9: tensorcomp.hosvd(x, eps=2.0), {}, "fn\\(x, eps=0.3\\) .*raised ValueError"),
    "no eps keyword": (lambda x: tensorcomp.hosvd(x), {}, "raised TypeError"),
    "modifies its input": (_in_place, {}, "modified its input in place"),
    "explains less at a higher eps": (_more_at_lower_eps, {}, "declared uses_eps=True, but explains"),
    "ignores eps": (_ignores_eps, {}, "declared uses_eps=True, but eps=0.3 and eps=0.8 give the same"),
    "not exact": (tensorcomp.hosvd, {"exact": True}, "declared exact=True"),
    "a copy, not the input": (_copies, {"uses_eps": False, "exact": True, "stores_input": True}, "does not share x's memory"),
    "no init keyword": (tensorcomp.hosvd, {"warm_start": True}, "init=<previous result>\\).*raised TypeError"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_method_fails_check_method_with_a_clear_message(case):
    fn, capabilities, message = BROKEN[case]
    with pytest.raises(AssertionError, match=message):
        check_method(tensorcomp.MethodInfo("broken", fn, **capabilities))


def test_the_baselines_on_numpy_inputs_fail_clearly():
    if torch is None:
        pytest.skip("needs PyTorch")
    with pytest.raises(AssertionError, match="'quant8'.*raised TypeError: quantize needs a torch.Tensor"):
        check_method("quant8")


def test_tensorcomp_testing_does_not_import_torch():
    code = "import sys, tensorcomp.testing; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
