# Copyright © 2026 zmlx contributors.

import unittest

import mlx.core as mx
import mlx_tests
import numpy as np

# Unit roundoff of each dtype.
ULP = {mx.float32: 2.0**-24, mx.float16: 2.0**-11, mx.bfloat16: 2.0**-8}


def composed(x, residual, weight, eps):
    h = x + residual
    return h, mx.fast.rms_norm(h, weight, eps)


def oracle_y(h, weight, eps):
    """float64 rms_norm of h as stored."""
    h = np.array(h.astype(mx.float32), dtype=np.float64)
    y = h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + eps)
    if weight is not None:
        y = y * np.array(weight.astype(mx.float32), dtype=np.float64)
    return y


def max_err(a, b):
    return float(np.max(np.abs(np.array(a.astype(mx.float32), dtype=np.float64) - b)))


class TestFusedAddRMSNorm(mlx_tests.MLXTestCase):
    def test_against_composed(self):
        shapes = [(1, 1), (1, 7), (3, 64), (2, 5, 130), (4, 1000), (2, 2048)]
        for dtype in (mx.float32, mx.float16, mx.bfloat16):
            for shape in shapes:
                for with_weight in (True, False):
                    with self.subTest(dtype=dtype, shape=shape, weight=with_weight):
                        mx.random.seed(len(shape) * 100 + shape[-1])
                        x = (0.3 + 2.0 * mx.random.normal(shape)).astype(dtype)
                        r = (-0.1 + mx.random.normal(shape)).astype(dtype)
                        w = (1.0 + 0.3 * mx.random.normal(shape[-1:])).astype(dtype)
                        w = w if with_weight else None
                        h, y = mx.add_rms_norm(x, r, w, 1e-5)
                        h_ref, y_ref = composed(x, r, w, 1e-5)
                        self.assertEqual(h.dtype, dtype)
                        self.assertEqual(y.dtype, y_ref.dtype)
                        self.assertEqual(y.shape, x.shape)
                        # h is MLX's add, bit for bit.
                        self.assertTrue(mx.array_equal(h, h_ref))
                        # y: no worse than the composed path, plus one rounding.
                        want = oracle_y(h, w, 1e-5)
                        bound = 1.05 * max_err(y_ref, want) + ULP[dtype] * np.max(
                            np.abs(want)
                        )
                        self.assertLessEqual(max_err(y, want), bound)

    def test_mixed_dtypes(self):
        x = mx.random.normal((4, 96)).astype(mx.float16)
        r = mx.random.normal((4, 96))
        w = mx.random.normal((96,)).astype(mx.bfloat16)
        h, y = mx.add_rms_norm(x, r, w, 1e-6)
        h_ref, y_ref = composed(x, r, w, 1e-6)
        self.assertEqual(h.dtype, mx.float32)
        self.assertEqual(y.dtype, y_ref.dtype)
        self.assertTrue(mx.array_equal(h, h_ref))
        self.assertTrue(mx.allclose(y, y_ref, atol=1e-5, rtol=1e-5))

    def test_non_contiguous(self):
        x = mx.random.normal((96, 5)).T
        r = mx.random.normal((10, 96))[::2]
        w = mx.random.normal((192,))[::2]
        for dtype in (mx.float32, mx.bfloat16):
            xd, rd, wd = x.astype(dtype), r.astype(dtype), w.astype(dtype)
            h, y = mx.add_rms_norm(xd, rd, wd, 1e-6)
            hc, yc = mx.add_rms_norm(
                mx.contiguous(xd), mx.contiguous(rd), mx.contiguous(wd), 1e-6
            )
            self.assertTrue(mx.array_equal(h, hc))
            self.assertTrue(mx.array_equal(y, yc))

    def test_grad_and_vmap(self):
        x = mx.random.normal((3, 64))
        r = mx.random.normal((3, 64))
        w = 1.0 + 0.1 * mx.random.normal((64,))
        cot = mx.random.normal((3, 64))

        def loss(fn):
            def f(x, r, w):
                h, y = fn(x, r, w, 1e-5)
                return (y * cot).sum() + (h * h).sum()

            return f

        got = mx.grad(loss(mx.add_rms_norm), argnums=(0, 1, 2))(x, r, w)
        want = mx.grad(loss(composed), argnums=(0, 1, 2))(x, r, w)
        for g, e in zip(got, want):
            self.assertTrue(mx.allclose(g, e, atol=1e-5, rtol=1e-4))

        xs = mx.random.normal((4, 3, 64))
        rs = mx.random.normal((4, 3, 64))
        ys = mx.vmap(lambda a, b: mx.add_rms_norm(a, b, w, 1e-5)[1])(xs, rs)
        self.assertTrue(mx.allclose(ys, composed(xs, rs, w, 1e-5)[1], atol=1e-6))

    def test_errors(self):
        x = mx.zeros((2, 8))
        with self.assertRaises(ValueError):
            mx.add_rms_norm(x, mx.zeros((2, 7)), None, 1e-5)
        with self.assertRaises(ValueError):
            mx.add_rms_norm(x, x, mx.zeros((7,)), 1e-5)
        with self.assertRaises(ValueError):
            mx.add_rms_norm(x, x, None, -1.0)
        with self.assertRaises(ValueError):
            mx.add_rms_norm(mx.zeros((2, 8), mx.int32), x, None, 1e-5)
        with self.assertRaises(ValueError):
            mx.add_rms_norm(mx.array(1.0), mx.array(1.0), None, 1e-5)

    def test_export(self):
        import os
        import tempfile

        x = mx.random.normal((2, 32))
        r = mx.random.normal((2, 32))
        w = mx.random.normal((32,))

        def fn(x, r, w):
            return mx.add_rms_norm(x, r, w, 1e-5)

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "fn.mlxfn")
            mx.export_function(path, fn, x, r, w)
            imported = mx.import_function(path)
            got = imported(x, r, w)
        for g, e in zip(got, fn(x, r, w)):
            self.assertTrue(mx.array_equal(g, e))


if __name__ == "__main__":
    mlx_tests.MLXTestRunner()
