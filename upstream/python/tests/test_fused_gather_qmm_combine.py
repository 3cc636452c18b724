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


class TestFusedGatherQMMCombine(mlx_tests.MLXTestCase):
    def setUp(self):
        super().setUp()
        mx.random.seed(11)
        self.E, self.K, self.N = 4, 256, 64

    def weights(self, mode, group_size, bits, dtype, rows=None):
        shape = (self.E, rows or self.N, self.K)
        return quantize((0.1 * mx.random.normal(shape)).astype(dtype), mode, group_size, bits)

    def test_modes_dtypes(self):
        T, k = 3, 2
        for quant in QUANTS:
            mode, group_size, bits = quant
            for dtype in (mx.float32, mx.bfloat16, mx.float16):
                for score_dtype in (dtype, mx.float32):
                    for with_bias in (False, True):
                        with self.subTest(
                            quant=quant, dtype=dtype, scores=score_dtype, bias=with_bias
                        ):
                            w = self.weights(*quant, dtype)
                            h = mx.random.normal((T, k, 1, self.K)).astype(dtype)
                            idx = mx.random.randint(0, self.E, (T, k))
                            scores = mx.softmax(mx.random.normal((T, k)), axis=-1)
                            scores = scores.astype(score_dtype)
                            bias = (0.1 * mx.random.normal((self.E, self.N))).astype(dtype)
                            bias = bias if with_bias else None
                            q = dict(group_size=group_size, bits=bits, mode=mode)
                            y = mx.gather_qmm_combine(h, *w, idx, scores, bias=bias, **q)
                            proj = mx.gather_qmm(h, *w, rhs_indices=idx, **q)
                            if bias is not None:
                                proj = proj + mx.expand_dims(bias[idx], -2)
                            ref = (proj * scores[..., None, None]).sum(axis=1)
                            wd = dequantize64(*w, *quant)[np.array(idx)]
                            p = np.einsum("tjk,tjnk->tjn", np64(h)[:, :, 0, :], wd)
                            if bias is not None:
                                p = p + np64(bias)[np.array(idx)]
                            want = np.einsum("tj,tjn->tn", np64(scores), p)[:, None, :]
                            self.assertEqual(y.shape, ref.shape)
                            self.assertEqual(y.dtype, ref.dtype)
                            err, ref_err = rel_err(y, want), rel_err(ref, want)
                            r = ROUNDING[y.dtype]
                            self.assertLessEqual(err, 1.05 * ref_err + 1e-5 + r)
                            self.assertLessEqual(err, r + 1e-5)

    def test_grad(self):
        w = self.weights("affine", 64, 4, mx.float32)
        h = mx.random.normal((3, 2, 1, self.K))
        idx = mx.array([[0, 1], [2, 3], [1, 1]])
        scores = mx.random.uniform(shape=(3, 2))
        bias = 0.1 * mx.random.normal((self.E, self.N))
        cot = mx.random.normal((3, 1, self.N))

        def fused(h, scores, bias):
            return (mx.gather_qmm_combine(h, *w, idx, scores, bias=bias) * cot).sum()

        def composed(h, scores, bias):
            proj = mx.gather_qmm(h, *w, rhs_indices=idx) + mx.expand_dims(bias[idx], -2)
            return ((proj * scores[..., None, None]).sum(axis=1) * cot).sum()

        got = mx.grad(fused, argnums=(0, 1, 2))(h, scores, bias)
        want = mx.grad(composed, argnums=(0, 1, 2))(h, scores, bias)
        for a, b in zip(got, want):
            self.assertTrue(mx.allclose(a, b, atol=1e-4, rtol=1e-4))

    def test_export(self):
        import os
        import tempfile

        w = self.weights("affine", 32, 8, mx.float16)
        h = mx.random.normal((3, 2, 1, self.K)).astype(mx.float16)
        idx = mx.array([[0, 1], [2, 3], [1, 1]])
        scores = mx.random.uniform(shape=(3, 2))
        bias = mx.random.normal((self.E, self.N)).astype(mx.float16)
        # Loaded weights are evaluated; unevaluated ones would go through mx.contiguous, which
        # MLX cannot export.
        mx.eval(w, bias)

        def fn(h, idx, scores):
            return mx.gather_qmm_combine(
                h, *w, idx, scores, group_size=32, bits=8, bias=bias
            )

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "fn.mlxfn")
            mx.export_function(path, fn, h, idx, scores)
            got = mx.import_function(path)(h, idx, scores)[0]
        self.assertTrue(mx.array_equal(got, fn(h, idx, scores)))

    def test_errors(self):
        w = self.weights("affine", 64, 4, mx.float32)
        h = mx.random.normal((1, 2, 1, self.K))
        idx = mx.array([[0, 1]])
        scores = mx.ones((1, 2))
        with self.assertRaises(ValueError):
            mx.gather_qmm_combine(h, *w, idx, scores, mode="bogus")
        with self.assertRaises(ValueError):
            mx.gather_qmm_combine(h, *w, idx, mx.ones((1, 3)))
        with self.assertRaises((IndexError, RuntimeError, ValueError)):
            mx.eval(mx.gather_qmm_combine(h, *w, idx + self.E, scores))

    def test_fused_quantized_linear(self):
        for quant in QUANTS:
            mode, group_size, bits = quant
            for dtype in (mx.float32, mx.bfloat16):
                for with_bias in (False, True):
                    with self.subTest(quant=quant, dtype=dtype, bias=with_bias):
                        wq, s, b = quantize(
                            (0.1 * mx.random.normal((self.N, self.K))).astype(dtype),
                            *quant,
                        )
                        x = mx.random.normal((2, 5, self.K)).astype(dtype)
                        bias = mx.random.normal((self.N,)).astype(dtype)
                        bias = bias if with_bias else None
                        q = dict(group_size=group_size, bits=bits, mode=mode)
                        y = mx.fused_quantized_linear(x, wq, s, b, bias=bias, **q)
                        ref = mx.quantized_matmul(x, wq, s, b, transpose=True, **q)
                        if bias is not None:
                            ref = ref + bias
                        want = np64(x) @ dequantize64(wq, s, b, *quant).T
                        if bias is not None:
                            want = want + np64(bias)
                        self.assertEqual(y.shape, ref.shape)
                        self.assertEqual(y.dtype, ref.dtype)
                        err, ref_err = rel_err(y, want), rel_err(ref, want)
                        r = ROUNDING[y.dtype]
                        self.assertLessEqual(err, 1.05 * ref_err + 1e-5 + r)


if __name__ == "__main__":
    mlx_tests.MLXTestRunner()
