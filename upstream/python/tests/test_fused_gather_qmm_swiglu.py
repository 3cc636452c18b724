# Copyright © 2026 zmlx contributors.

import unittest

import mlx.core as mx
import mlx_tests
import numpy as np

# (mode, group_size, bits): every mode, every affine bit width and group size.
QUANTS = [
    ("affine", 64, 4),
    ("affine", 32, 2),
    ("affine", 128, 3),
    ("affine", 64, 5),
    ("affine", 32, 6),
    ("affine", 128, 8),
    ("mxfp4", 32, 4),
    ("nvfp4", 16, 4),
    ("mxfp8", 32, 8),
]

# Half an ulp of the output dtype (its unit roundoff), relative to the largest output: the fused
# kernels round once.
ROUNDING = {mx.float32: 0.0, mx.float16: 2.0**-11, mx.bfloat16: 2.0**-8}


def quantize(w, mode, group_size, bits):
    q = mx.quantize(w, group_size=group_size, bits=bits, mode=mode)
    return q[0], q[1], (q[2] if len(q) > 2 else None)


def dequantize64(wq, scales, biases, mode, group_size, bits):
    """The exact float32 values of a quantized matrix, as float64."""
    if mode == "affine":
        scales, biases = scales.astype(mx.float32), biases.astype(mx.float32)
    w = mx.dequantize(wq, scales, biases, group_size, bits, mode, dtype=mx.float32)
    return np64(w)


def np64(a):
    return np.array(a.astype(mx.float32), dtype=np.float64)


def rel_err(got, want):
    return float(np.max(np.abs(np64(got) - want)) / max(np.max(np.abs(want)), 1e-30))


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


class TestFusedGatherQMMSwiGLU(mlx_tests.MLXTestCase):
    def setUp(self):
        super().setUp()
        mx.random.seed(7)
        self.E, self.K, self.N = 4, 256, 64

    def weights(self, mode, group_size, bits, dtype):
        w = mx.random.normal((self.E, self.N, self.K)).astype(dtype) * 0.1
        return quantize(w, mode, group_size, bits)

    def composed(self, x, g, u, idx, quant, activation, alpha, limit, gb, ub, **kw):
        mode, group_size, bits = quant
        args = dict(transpose=True, group_size=group_size, bits=bits, mode=mode, **kw)
        gp = mx.gather_qmm(x, *g, rhs_indices=idx, **args)
        up = mx.gather_qmm(x, *u, rhs_indices=idx, **args)
        if gb is not None:
            gp = gp + mx.expand_dims(gb[idx], -2)
        if ub is not None:
            up = up + mx.expand_dims(ub[idx], -2)
        if activation == "swiglu":
            return gp * mx.sigmoid(gp) * up
        gp = mx.minimum(gp, limit)
        up = mx.clip(up, -limit, limit)
        return gp * mx.sigmoid(alpha * gp) * (up + 1)

    def oracle(self, x, g, u, idx, quant, activation, alpha, limit, gb, ub):
        wg = dequantize64(*g, *quant)[np.array(idx)]
        wu = dequantize64(*u, *quant)[np.array(idx)]
        xs = np64(x)[:, 0, 0, :]
        gp = np.einsum("tk,tjnk->tjn", xs, wg)
        up = np.einsum("tk,tjnk->tjn", xs, wu)
        if gb is not None:
            gp = gp + np64(gb)[np.array(idx)]
        if ub is not None:
            up = up + np64(ub)[np.array(idx)]
        if activation == "swiglu":
            y = gp * sigmoid(gp) * up
        else:
            gp = np.minimum(gp, limit)
            up = np.clip(up, -limit, limit)
            y = gp * sigmoid(alpha * gp) * (up + 1)
        return y[:, :, None, :]

    def test_modes_dtypes_activations(self):
        T, k = 3, 2
        for quant in QUANTS:
            for dtype in (mx.float32, mx.bfloat16, mx.float16):
                for activation in ("swiglu", "gpt_oss"):
                    with self.subTest(quant=quant, dtype=dtype, activation=activation):
                        g = self.weights(*quant, dtype)
                        u = self.weights(*quant, dtype)
                        x = mx.random.normal((T, 1, 1, self.K)).astype(dtype)
                        idx = mx.random.randint(0, self.E, (T, k)).astype(mx.uint32)
                        gpt = activation == "gpt_oss"
                        alpha, limit = (1.702, 7.0) if gpt else (None, None)
                        gb = (0.1 * mx.random.normal((self.E, self.N))).astype(dtype)
                        ub = (0.1 * mx.random.normal((self.E, self.N))).astype(dtype)
                        gb, ub = (gb, ub) if gpt else (None, None)
                        y = mx.gather_qmm_swiglu(
                            x,
                            g[0],
                            g[1],
                            g[2],
                            u[0],
                            u[1],
                            u[2],
                            rhs_indices=idx,
                            group_size=quant[1],
                            bits=quant[2],
                            mode=quant[0],
                            activation=activation,
                            alpha=alpha,
                            limit=limit,
                            gate_bias=gb,
                            up_bias=ub,
                        )
                        a, l = (1.702, 7.0) if gpt else (None, None)
                        ref = self.composed(x, g, u, idx, quant, activation, a, l, gb, ub)
                        want = self.oracle(x, g, u, idx, quant, activation, a, l, gb, ub)
                        self.assertEqual(y.shape, ref.shape)
                        self.assertEqual(y.dtype, ref.dtype)
                        err, ref_err = rel_err(y, want), rel_err(ref, want)
                        r = ROUNDING[y.dtype]
                        self.assertLessEqual(err, 1.05 * ref_err + 1e-5 + r)
                        self.assertLessEqual(err, r + 1e-5)

    def test_indices(self):
        quant = ("affine", 64, 4)
        g = self.weights(*quant, mx.float32)
        u = self.weights(*quant, mx.float32)
        # lhs_indices into the batch of x, rhs_indices into the experts.
        x = mx.random.normal((4, 1, self.K))
        lhs = mx.array([0, 2, 3, 3])
        rhs = mx.array([1, 0, 3, 2])
        y = mx.gather_qmm_swiglu(x, *g, *u, lhs, rhs)
        gp = mx.gather_qmm(x, *g, lhs, rhs)
        up = mx.gather_qmm(x, *u, lhs, rhs)
        self.assertTrue(mx.allclose(y, gp * mx.sigmoid(gp) * up, atol=1e-4, rtol=1e-4))
        # Sorted indices give the same result with the hint.
        x = mx.random.normal((6, 1, 1, self.K))
        idx = mx.array([[0], [0], [1], [2], [2], [3]])
        a = mx.gather_qmm_swiglu(x, *g, *u, rhs_indices=idx)
        b = mx.gather_qmm_swiglu(x, *g, *u, rhs_indices=idx, sorted_indices=True)
        self.assertTrue(mx.array_equal(a, b))
        # Out-of-range indices fail at evaluation.
        with self.assertRaises((IndexError, RuntimeError, ValueError)):
            mx.eval(mx.gather_qmm_swiglu(x, *g, *u, rhs_indices=idx + self.E))

    def test_grad(self):
        quant = ("affine", 64, 4)
        g = self.weights(*quant, mx.float32)
        u = self.weights(*quant, mx.float32)
        x = mx.random.normal((3, 1, 1, self.K))
        idx = mx.array([[0, 1], [2, 3], [1, 1]])
        gb = 0.1 * mx.random.normal((self.E, self.N))
        cot = mx.random.normal((3, 2, 1, self.N))

        def fused(x, gb):
            y = mx.gather_qmm_swiglu(x, *g, *u, rhs_indices=idx, gate_bias=gb)
            return (y * cot).sum()

        def composed(x, gb):
            y = self.composed(x, g, u, idx, quant, "swiglu", None, None, gb, None)
            return (y * cot).sum()

        got = mx.grad(fused, argnums=(0, 1))(x, gb)
        want = mx.grad(composed, argnums=(0, 1))(x, gb)
        for a, b in zip(got, want):
            self.assertTrue(mx.allclose(a, b, atol=1e-4, rtol=1e-4))

    def test_export(self):
        import os
        import tempfile

        g = self.weights("mxfp4", 32, 4, mx.bfloat16)
        u = self.weights("mxfp4", 32, 4, mx.bfloat16)
        x = mx.random.normal((3, 1, 1, self.K)).astype(mx.bfloat16)
        idx = mx.array([[0, 1], [2, 3], [1, 1]])
        # Loaded weights are evaluated; unevaluated ones would go through mx.contiguous, which
        # MLX cannot export.
        mx.eval(g, u)

        def fn(x, idx):
            return mx.gather_qmm_swiglu(
                x, *g, *u, rhs_indices=idx, mode="mxfp4", activation="gpt_oss"
            )

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "fn.mlxfn")
            mx.export_function(path, fn, x, idx)
            got = mx.import_function(path)(x, idx)[0]
        self.assertTrue(mx.array_equal(got, fn(x, idx)))

    def test_errors(self):
        g = self.weights("affine", 64, 4, mx.float32)
        x = mx.random.normal((1, 1, 1, self.K))
        idx = mx.array([[0]])
        with self.assertRaises(ValueError):
            mx.gather_qmm_swiglu(x, *g, *g, rhs_indices=idx, mode="bogus")
        with self.assertRaises(ValueError):
            mx.gather_qmm_swiglu(x, *g, *g, rhs_indices=idx, bits=7)
        with self.assertRaises(ValueError):
            mx.gather_qmm_swiglu(x, *g, *g, rhs_indices=idx, activation="relu")
        with self.assertRaises(ValueError):
            mx.gather_qmm_swiglu(x[..., :128], *g, *g, rhs_indices=idx)


if __name__ == "__main__":
    mlx_tests.MLXTestRunner()
