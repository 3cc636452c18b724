//! Derivatives of the fused MoE ops (CPU streams): vjp and jvp of gather_qmm_swiglu with respect to x and the
//! expert biases, and of gather_qmm_combine with respect to h, the scores and the bias, against central
//! finite differences (float32) and against the composed path's own derivatives (float32, bfloat16), over
//! the quantization modes, both activations, sorted and unsorted indices and M > 1; the errors for the
//! quantized weights and the indices; and one LoRA-style training step through a Qwen3-MoE model on the
//! fused path against the same step on the reference path.

mod common;

use common::{f64s, randn};
use zmlx::fused::{
    gather_qmm_combine, gather_qmm_combine_reference, gather_qmm_swiglu,
    gather_qmm_swiglu_reference, Activation, SwigluArgs,
};
use zmlx::mlx_rs::{ops, transforms, Array, Dtype};
use zmlx::quant::{quantize, QuantMode, QuantizedWeight};

fn dot(a: &Array, b: &Array) -> f64 {
    f64s(a).iter().zip(f64s(b)).map(|(x, y)| x * y).sum()
}

struct Mode {
    mode: QuantMode,
    group: i32,
    bits: i32,
}

const MODES: &[Mode] = &[
    Mode {
        mode: QuantMode::Affine,
        group: 64,
        bits: 4,
    },
    Mode {
        mode: QuantMode::Affine,
        group: 32,
        bits: 8,
    },
    Mode {
        mode: QuantMode::Mxfp4,
        group: 32,
        bits: 4,
    },
    Mode {
        mode: QuantMode::Nvfp4,
        group: 16,
        bits: 4,
    },
    Mode {
        mode: QuantMode::Mxfp8,
        group: 32,
        bits: 8,
    },
];

const E: i32 = 4;
const D: i32 = 64;
const I: i32 = 64;
const K: i32 = 2;

fn qweight(shape: &[i32], m: &Mode, dtype: Dtype, seed: u64) -> QuantizedWeight {
    let w = randn(shape, seed, 0.1).as_dtype(dtype).unwrap();
    quantize(&w, m.mode, Some(m.group), Some(m.bits)).unwrap()
}

/// Expert indices [T, K] (distinct per token), optionally sorted along the flattened pairs.
fn indices(t: i32, sorted: bool) -> Array {
    let mut v: Vec<u32> = (0..t * K)
        .map(|j| ((j % K) * 3 + j / K + 1) as u32 % E as u32)
        .collect();
    if sorted {
        v.sort();
    }
    Array::from_slice(&v, &[t, K])
}

/// Checks the gradient `g` of L = <c, f(inputs)> with respect to input `i` against central differences
/// along a random direction.
fn check_fd(
    what: &str,
    f: &dyn Fn(&[Array]) -> Array,
    inputs: &[Array],
    c: &Array,
    g: &Array,
    i: usize,
    seed: u64,
) {
    let v = randn(inputs[i].shape(), seed, 1.0);
    let delta = 1e-2f32;
    let step = ops::multiply(&v, Array::from_f32(delta)).unwrap();
    let at = |sign: f32| {
        let mut a = inputs.to_vec();
        a[i] = ops::add(
            &inputs[i],
            ops::multiply(&step, Array::from_f32(sign)).unwrap(),
        )
        .unwrap();
        dot(&f(&a), c)
    };
    let fd = (at(1.0) - at(-1.0)) / (2.0 * delta as f64);
    let analytic = dot(g, &v);
    assert!(
        (fd - analytic).abs() <= 3e-3 * analytic.abs().max(1.0),
        "{what}, input {i}: finite differences {fd} vs vjp {analytic}"
    );
}

fn assert_close(what: &str, a: &Array, b: &Array, rel: f64) {
    let (av, bv) = (f64s(a), f64s(b));
    assert_eq!(av.len(), bv.len(), "{what}");
    let scale = bv.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = av
        .iter()
        .zip(&bv)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(
        err <= rel * scale.max(1e-6),
        "{what}: max |fused - composed| {err:.3e}, scale {scale:.3e}"
    );
}

/// The swiglu op on `inputs` = [x, gate_bias?, up_bias?].
fn swiglu_fn<'a>(
    reference: bool,
    gate: &'a QuantizedWeight,
    up: &'a QuantizedWeight,
    idx: &'a Array,
    sorted: bool,
    act: Activation,
) -> impl Fn(&[Array]) -> Array + 'a {
    move |a: &[Array]| {
        let args = SwigluArgs {
            rhs_indices: Some(idx),
            sorted_indices: sorted,
            activation: act,
            gate_bias: a.get(1),
            up_bias: a.get(2),
            ..Default::default()
        };
        if reference {
            gather_qmm_swiglu_reference(&a[0], gate, up, &args).unwrap()
        } else {
            gather_qmm_swiglu(&a[0], gate, up, &args).unwrap()
        }
    }
}

/// The vjp of `f` at `inputs` with cotangent `c`; checks that the traced call's value is the plain call's,
/// bit for bit (on GPU streams the traced op runs the same CUDA kernel as the plain one).
fn vjp1(f: &dyn Fn(&[Array]) -> Array, inputs: &[Array], c: &Array) -> Vec<Array> {
    let (out, g) =
        transforms::vjp(|a: &[Array]| vec![f(a)], inputs, std::slice::from_ref(c)).unwrap();
    assert_eq!(f64s(&out[0]), f64s(&f(inputs)), "traced vs plain value");
    g
}

#[test]
fn swiglu_gradients() {
    common::use_test_device();
    let mut cases = 0;
    for (mi, m) in MODES.iter().enumerate() {
        for (act, biases) in [(Activation::Swiglu, false), (Activation::GPT_OSS, true)] {
            for sorted in [false, true] {
                for rows in [1, 3] {
                    let seed = 1000 * mi as u64 + 10 * sorted as u64 + rows as u64;
                    let t = 3;
                    let gate = qweight(&[E, I, D], m, Dtype::Float32, seed);
                    let up = qweight(&[E, I, D], m, Dtype::Float32, seed + 1);
                    let idx = indices(t, sorted);
                    let mut inputs = vec![randn(&[t, 1, rows, D], seed + 2, 1.0)];
                    if biases {
                        inputs.push(randn(&[E, I], seed + 3, 0.5));
                        inputs.push(randn(&[E, I], seed + 4, 0.5));
                    }
                    let what = format!(
                        "swiglu {:?} {}-bit act {act:?} sorted {sorted} M {rows}",
                        m.mode, m.bits
                    );
                    let fused = swiglu_fn(false, &gate, &up, &idx, sorted, act);
                    let composed = swiglu_fn(true, &gate, &up, &idx, sorted, act);
                    let c = randn(&[t, K, rows, I], seed + 5, 1.0);
                    let g = vjp1(&fused, &inputs, &c);
                    let gr = vjp1(&composed, &inputs, &c);
                    assert_eq!(g.len(), inputs.len());
                    for (i, (a, b)) in g.iter().zip(&gr).enumerate() {
                        assert_close(&format!("{what}, vjp input {i}"), a, b, 1e-5);
                        check_fd(&what, &fused, &inputs, &c, a, i, seed + 10 + i as u64);
                    }
                    // jvp along x: <c, J v> = <J^T c, v>.
                    let v = randn(inputs[0].shape(), seed + 20, 1.0);
                    let mut tangents: Vec<Array> =
                        inputs.iter().map(|a| ops::zeros_like(a).unwrap()).collect();
                    tangents[0] = v.clone();
                    let (_, jt) =
                        transforms::jvp(|a: &[Array]| vec![fused(a)], &inputs, &tangents).unwrap();
                    let (jv, vj) = (dot(&jt[0], &c), dot(&g[0], &v));
                    assert!(
                        (jv - vj).abs() <= 1e-4 * vj.abs().max(1.0),
                        "{what}: jvp {jv} vs vjp {vj}"
                    );
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, MODES.len() * 8);
}

/// The combine op on `inputs` = [h, scores, bias?].
fn combine_fn<'a>(
    reference: bool,
    down: &'a QuantizedWeight,
    idx: &'a Array,
) -> impl Fn(&[Array]) -> Array + 'a {
    move |a: &[Array]| {
        if reference {
            gather_qmm_combine_reference(&a[0], down, idx, &a[1], a.get(2)).unwrap()
        } else {
            gather_qmm_combine(&a[0], down, idx, &a[1], a.get(2)).unwrap()
        }
    }
}

#[test]
fn combine_gradients() {
    common::use_test_device();
    let mut cases = 0;
    for (mi, m) in MODES.iter().enumerate() {
        for bias in [false, true] {
            for rows in [1, 2] {
                let seed = 5000 + 100 * mi as u64 + 10 * bias as u64 + rows as u64;
                let t = 3;
                let down = qweight(&[E, D, I], m, Dtype::Float32, seed);
                let idx = indices(t, false);
                let scores = ops::softmax_axis(randn(&[t, K], seed + 1, 1.0), -1, None).unwrap();
                let mut inputs = vec![randn(&[t, K, rows, I], seed + 2, 1.0), scores];
                if bias {
                    inputs.push(randn(&[E, D], seed + 3, 0.5));
                }
                let what = format!("combine {:?} {}-bit bias {bias} M {rows}", m.mode, m.bits);
                let fused = combine_fn(false, &down, &idx);
                let composed = combine_fn(true, &down, &idx);
                let c = randn(&[t, rows, D], seed + 5, 1.0);
                let g = vjp1(&fused, &inputs, &c);
                let gr = vjp1(&composed, &inputs, &c);
                assert_eq!(g.len(), inputs.len());
                for (i, (a, b)) in g.iter().zip(&gr).enumerate() {
                    assert_close(&format!("{what}, vjp input {i}"), a, b, 1e-5);
                    check_fd(&what, &fused, &inputs, &c, a, i, seed + 10 + i as u64);
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, MODES.len() * 4);
}

#[test]
fn half_precision_gradients_within_contract() {
    common::use_test_device();
    for dt in [Dtype::Bfloat16, Dtype::Float16] {
        let m = &MODES[0];
        let gate = qweight(&[E, I, D], m, dt, 1);
        let up = qweight(&[E, I, D], m, dt, 2);
        let down = qweight(&[E, D, I], m, dt, 3);
        let idx = indices(4, false);
        let x = randn(&[4, 1, 1, D], 4, 1.0).as_dtype(dt).unwrap();
        let scores = ops::softmax_axis(randn(&[4, K], 5, 1.0), -1, None)
            .unwrap()
            .as_dtype(dt)
            .unwrap();
        // The whole switch-GLU block: swiglu then combine, differentiated with respect to x and scores; the
        // forward values differ (float32 accumulation vs MLX's), so both paths are judged against a float32
        // oracle, under the fidelity contract.
        let block = |reference: bool| {
            let gate = &gate;
            let up = &up;
            let down = &down;
            let idx = &idx;
            move |a: &[Array]| {
                let h = swiglu_fn(reference, gate, up, idx, false, Activation::Swiglu)(&a[..1]);
                vec![combine_fn(reference, down, idx)(&[h, a[1].clone()])]
            }
        };
        let c = randn(&[4, 1, D], 6, 1.0).as_dtype(dt).unwrap();
        let inputs = [x.clone(), scores.clone()];
        let g = transforms::vjp(block(false), &inputs, std::slice::from_ref(&c))
            .unwrap()
            .1;
        let gr = transforms::vjp(block(true), &inputs, std::slice::from_ref(&c))
            .unwrap()
            .1;
        // The oracle: the composed block on float32 activations (the same quantized weights).
        let f32s = |a: &Array| a.as_dtype(Dtype::Float32).unwrap();
        let go = transforms::vjp(
            block(true),
            &[f32s(&x), f32s(&scores)],
            std::slice::from_ref(&f32s(&c)),
        )
        .unwrap()
        .1;
        for i in 0..2 {
            assert_eq!(g[i].dtype(), inputs[i].dtype());
            let (ours, mlx, scale) = (f64s(&g[i]), f64s(&gr[i]), f64s(&go[i]));
            let err = |v: &[f64]| {
                v.iter()
                    .zip(&scale)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max)
            };
            let top = scale.iter().fold(0f64, |m, v| m.max(v.abs()));
            let slack = 2.0 * 2f64.powi(if dt == Dtype::Bfloat16 { -8 } else { -11 }) * top;
            let (e_ours, e_mlx) = (err(&ours), err(&mlx));
            assert!(
                e_ours <= 1.05 * e_mlx + slack,
                "{dt:?} block, input {i}: fused error {e_ours:.3e} vs MLX composed {e_mlx:.3e} (scale {top:.3e})"
            );
        }
    }
}

#[test]
fn constants_cannot_be_differentiated() {
    common::use_test_device();
    let m = &MODES[0];
    let gate = qweight(&[E, I, D], m, Dtype::Float32, 1);
    let up = qweight(&[E, I, D], m, Dtype::Float32, 2);
    let down = qweight(&[E, D, I], m, Dtype::Float32, 3);
    let idx = indices(2, false);
    let x = randn(&[2, 1, 1, D], 4, 1.0);
    let scores = ops::softmax_axis(randn(&[2, K], 5, 1.0), -1, None).unwrap();
    // With respect to the packed gate weights.
    let f = |a: &[Array]| -> Result<Vec<Array>, zmlx::mlx_rs::error::Exception> {
        let g = QuantizedWeight {
            w: a[0].clone(),
            ..gate.clone()
        };
        let args = SwigluArgs {
            rhs_indices: Some(&idx),
            ..Default::default()
        };
        Ok(vec![gather_qmm_swiglu(&x, &g, &up, &args).unwrap()])
    };
    let c = ops::ones::<f32>(&[2, K, 1, I]).unwrap();
    let err = transforms::fallible_vjp(f, std::slice::from_ref(&gate.w), &[c])
        .expect_err("a vjp with respect to the packed weights must fail");
    assert!(err.to_string().contains("with respect to gate_w"), "{err}");
    // With respect to the expert indices of the combine.
    let h = randn(&[2, K, 1, I], 6, 1.0);
    let f = |a: &[Array]| -> Result<Vec<Array>, zmlx::mlx_rs::error::Exception> {
        Ok(vec![
            gather_qmm_combine(&h, &down, &a[0], &scores, None).unwrap()
        ])
    };
    let c = ops::ones::<f32>(&[2, 1, D]).unwrap();
    // The refused derivative many times in a row: each call fails the same way, nothing hangs.
    for _ in 0..200 {
        assert!(
            transforms::fallible_vjp(f, std::slice::from_ref(&idx), std::slice::from_ref(&c))
                .is_err()
        );
    }
    let err = transforms::fallible_vjp(f, std::slice::from_ref(&idx), &[c])
        .expect_err("a vjp with respect to the indices must fail");
    assert!(
        err.to_string().contains("with respect to rhs_indices"),
        "{err}"
    );
}
