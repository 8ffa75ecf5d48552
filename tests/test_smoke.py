import numpy as np

import tensorcomp


def test_every_core_method_reconstructs_exactly_at_eps_one():
    x = np.random.default_rng(0).standard_normal((4, 3, 5))
    for method in ("svd", "hosvd", "tucker", "tt"):
        res = tensorcomp.decompose(x, method, eps=1.0)
        np.testing.assert_allclose(res.to_tensor(), x, atol=1e-10)
