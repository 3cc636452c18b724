# Copyright © 2026 zmlx contributors.

import unittest

import mlx.core as mx
import mlx_tests

QUANTS = [
    ("affine", 64, 4),
    ("affine", 32, 8),
    ("mxfp4", 32, 4),
    ("nvfp4", 16, 4),
    ("mxfp8", 32, 8),
]


def quantize(w, mode, group_size, bits):
    q = mx.quantize(w, group_size=group_size, bits=bits, mode=mode)
    return q[0], q[1], (q[2] if len(q) > 2 else None)


class TestFusedSwitchGLUCombine(mlx_tests.MLXTestCase):
    def test_equals_the_two_fused_ops(self):
        mx.random.seed(3)
        E, D, I, T, k = 4, 128, 64, 5, 2
        for mode, group_size, bits in QUANTS:
            for dtype in (mx.float32, mx.bfloat16):
                for activation in ("swiglu", "gpt_oss"):
                    with self.subTest(mode=mode, bits=bits, dtype=dtype, act=activation):

                        def w(rows, cols):
                            a = (0.1 * mx.random.normal((E, rows, cols))).astype(dtype)
                            return quantize(a, mode, group_size, bits)

                        gate, up, down = w(I, D), w(I, D), w(D, I)
                        x = mx.random.normal((T, D)).astype(dtype)
                        idx = mx.random.randint(0, E, (T, k))
                        scores = mx.softmax(mx.random.normal((T, k)), axis=-1).astype(dtype)
                        q = dict(group_size=group_size, bits=bits, mode=mode)
                        act = dict(activation=activation)
                        if activation == "gpt_oss":
                            act.update(
                                gate_bias=(0.1 * mx.random.normal((E, I))).astype(dtype),
                                up_bias=(0.1 * mx.random.normal((E, I))).astype(dtype),
                            )
                        down_bias = (0.1 * mx.random.normal((E, D))).astype(dtype)
                        y = mx.switch_glu_combine(
                            x, *gate, *up, *down, idx, scores, **q, **act, down_bias=down_bias
                        )
                        h = mx.gather_qmm_swiglu(
                            x[:, None, None, :], *gate, *up, rhs_indices=idx, **q, **act
                        )
                        want = mx.gather_qmm_combine(h, *down, idx, scores, bias=down_bias, **q)
                        self.assertEqual(y.shape, (T, D))
                        self.assertTrue(mx.array_equal(y, want[:, 0, :]))

                        # And close to the graph of MLX's own ops.
                        qq = dict(transpose=True, **q)
                        xe = x[:, None, None, :]
                        g = mx.gather_qmm(xe, *gate, rhs_indices=idx, **qq)
                        u = mx.gather_qmm(xe, *up, rhs_indices=idx, **qq)
                        if activation == "swiglu":
                            a = g * mx.sigmoid(g) * u
                        else:
                            g = g + mx.expand_dims(act["gate_bias"][idx], -2)
                            u = u + mx.expand_dims(act["up_bias"][idx], -2)
                            g = mx.minimum(g, 7.0)
                            u = mx.clip(u, -7.0, 7.0)
                            a = g * mx.sigmoid(1.702 * g) * (u + 1)
                        p = mx.gather_qmm(a, *down, rhs_indices=idx, **qq)
                        p = p + mx.expand_dims(down_bias[idx], -2)
                        ref = (p * scores[..., None, None]).sum(axis=1)[:, 0, :]
                        # The composed graph rounds g, u and each product to bfloat16; the
                        # per-op tests bound the fused ops against a float64 oracle.
                        y32, ref32 = y.astype(mx.float32), ref.astype(mx.float32)
                        err = ((y32 - ref32).abs().max() / ref32.abs().max()).item()
                        self.assertLessEqual(err, 1e-5 if dtype == mx.float32 else 5e-2)

    def test_errors(self):
        E, D, I = 2, 64, 64
        wq = quantize(mx.random.normal((E, I, D)), "affine", 64, 4)
        x = mx.random.normal((1, D))
        idx = mx.array([[0]])
        with self.assertRaises(ValueError):
            mx.switch_glu_combine(x, *wq, *wq, *wq, idx, mx.ones((1, 1)), mode="bogus")
        with self.assertRaises(ValueError):
            mx.switch_glu_combine(x, *wq, *wq, *wq, idx, mx.ones((1, 2)))


if __name__ == "__main__":
    mlx_tests.MLXTestRunner()
