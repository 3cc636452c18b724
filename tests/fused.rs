//! The safe fused-op surface: SwitchGlu's fused path (gather_qmm_swiglu + gather_qmm_combine) against its
//! reference path and the float32 oracle on the same input and routing, for the three quantization setups
//! of the fidelity configs, at decode (unsorted) and prefill (sorted) sizes; the raw wrappers against their
//! `_reference` twins; and the errors the wrappers return.

mod common;

use common::randn;
use zmlx::array::to_f32_vec;
use zmlx::fused::{
    gather_qmm_combine, gather_qmm_combine_reference, gather_qmm_swiglu,
    gather_qmm_swiglu_reference, switch_glu_combine, SwigluArgs,
};
use zmlx::mlx_rs::{Array, Dtype};
use zmlx::moe::{Activation, ExpertWeight, MoePath, SwitchGlu};
use zmlx::quant::{quantize, QuantMode, QuantizedWeight};

struct Setup {
    name: &'static str,
    dtype: Dtype,
    mode: QuantMode,
    group: i32,
    bits: i32,
    act: Activation,
    biases: bool,
}

const SETUPS: &[Setup] = &[
    Setup {
        name: "bf16 affine 4-bit g64",
        dtype: Dtype::Bfloat16,
        mode: QuantMode::Affine,
        group: 64,
        bits: 4,
        act: Activation::Swiglu,
        biases: false,
    },
    Setup {
        name: "bf16 mxfp4 gpt-oss",
        dtype: Dtype::Bfloat16,
        mode: QuantMode::Mxfp4,
        group: 32,
        bits: 4,
        act: Activation::GPT_OSS,
        biases: true,
    },
    Setup {
        name: "f16 affine 8-bit g32",
        dtype: Dtype::Float16,
        mode: QuantMode::Affine,
        group: 32,
        bits: 8,
        act: Activation::Swiglu,
        biases: false,
    },
    Setup {
        name: "f32 affine 4-bit g64",
        dtype: Dtype::Float32,
        mode: QuantMode::Affine,
        group: 64,
        bits: 4,
        act: Activation::Swiglu,
        biases: false,
    },
];

fn build(s: &Setup, e: i32, d: i32, i: i32) -> SwitchGlu {
    let q = |shape: &[i32], seed, std| {
        let w = randn(shape, seed, std).as_dtype(s.dtype).unwrap();
        ExpertWeight::Quantized(quantize(&w, s.mode, Some(s.group), Some(s.bits)).unwrap())
    };
    let b = |shape: &[i32], seed| {
        s.biases
            .then(|| randn(shape, seed, 0.1).as_dtype(s.dtype).unwrap())
    };
    SwitchGlu {
        gate_proj: q(&[e, i, d], 1, 1.0 / (d as f32).sqrt()),
        up_proj: q(&[e, i, d], 2, 1.0 / (d as f32).sqrt()),
        down_proj: q(&[e, d, i], 3, 1.0 / (i as f32).sqrt()),
        gate_bias: b(&[e, i], 4),
        up_bias: b(&[e, i], 5),
        down_bias: b(&[e, d], 6),
        activation: s.act,
    }
}

/// Signature shared by `gather_qmm_swiglu` and its reference twin.
type SwigluFn = fn(&Array, &QuantizedWeight, &QuantizedWeight, &SwigluArgs) -> zmlx::Result<Array>;

fn rel_err(a: &[f32], oracle: &[f32]) -> f64 {
    let scale = oracle
        .iter()
        .map(|v| v.abs() as f64)
        .fold(0.0, f64::max)
        .max(1e-30);
    a.iter()
        .zip(oracle)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
        / scale
}

#[test]
fn fused_path_is_at_least_as_accurate_as_the_reference() {
    // CPU unless ZMLX_TEST_DEVICE=gpu (then the CUDA kernels).
    common::use_test_device();
    let (e, d, i, k) = (16, 256, 128, 4);
    for s in SETUPS {
        let g = build(s, e, d, i);
        let oracle = g.to_f32().unwrap();
        for t in [1, 24] {
            // t = 24: 96 (token, expert) rows >= 64, so both paths sort as mlx-lm does.
            let x = randn(&[1, t, d], 10 + t as u64, 1.0)
                .as_dtype(s.dtype)
                .unwrap();
            let inds: Vec<u32> = (0..(t * k) as u32)
                .map(|j| (j * 7 + j / 3) % e as u32)
                .collect();
            let inds = Array::from_slice(&inds, &[1, t, k]);
            let sc = zmlx::mlx_rs::ops::softmax_axis(randn(&[1, t, k], 20, 1.0), -1, true).unwrap();
            let scores = sc.as_dtype(s.dtype).unwrap();
            let xo = x.as_dtype(Dtype::Float32).unwrap();
            let so = scores.as_dtype(Dtype::Float32).unwrap();
            let yo = to_f32_vec(
                &oracle
                    .forward_combined(&xo, &inds, &so, MoePath::Reference)
                    .unwrap(),
            )
            .unwrap();
            let yr = g
                .forward_combined(&x, &inds, &scores, MoePath::Reference)
                .unwrap();
            let yf = g
                .forward_combined(&x, &inds, &scores, MoePath::Fused)
                .unwrap();
            assert_eq!(yf.shape(), &[1, t, d]);
            assert_eq!(yf.shape(), yr.shape());
            assert_eq!(yf.dtype(), yr.dtype(), "{}", s.name);
            let er = rel_err(&to_f32_vec(&yr).unwrap(), &yo);
            let ef = rel_err(&to_f32_vec(&yf).unwrap(), &yo);
            eprintln!(
                "{} T={t}: relative error vs f32 oracle: reference {er:.2e}, fused {ef:.2e}",
                s.name
            );
            // The fused kernels accumulate in float32 and round once: never worse than the composed path
            // (beyond 5 % + float32 noise), and within a few roundings of the output dtype.
            assert!(
                ef <= 1.05 * er + 1e-5,
                "{} T={t}: fused {ef} vs reference {er}",
                s.name
            );
            let ulp = match s.dtype {
                Dtype::Bfloat16 => 2f64.powi(-8),
                Dtype::Float16 => 2f64.powi(-11),
                _ => 2f64.powi(-23),
            };
            assert!(ef <= 4.0 * ulp + 1e-5, "{} T={t}: fused error {ef}", s.name);
        }
    }
}

#[test]
fn raw_wrappers_match_their_reference_twins() {
    common::use_test_device();
    let (e, d, i) = (8, 128, 64);
    for s in SETUPS {
        let g = build(s, e, d, i);
        let (gq, uq, dq) = (
            g.gate_proj.quantized().unwrap(),
            g.up_proj.quantized().unwrap(),
            g.down_proj.quantized().unwrap(),
        );
        let x = randn(&[3, 1, 1, d], 31, 1.0)
            .as_dtype(Dtype::Float32)
            .unwrap();
        let idx = Array::from_slice(&[1u32, 5, 7, 0, 2, 2], &[3, 2]);
        let args = |f: SwigluFn| {
            let a = SwigluArgs {
                rhs_indices: Some(&idx),
                activation: s.act,
                gate_bias: g.gate_bias.as_ref(),
                up_bias: g.up_bias.as_ref(),
                ..Default::default()
            };
            f(&x, gq, uq, &a).unwrap()
        };
        let hf = args(gather_qmm_swiglu);
        let hr = args(gather_qmm_swiglu_reference);
        assert_eq!(hf.shape(), &[3, 2, 1, i]);
        assert_eq!(hf.shape(), hr.shape());
        let (hf_v, hr_v) = (to_f32_vec(&hf).unwrap(), to_f32_vec(&hr).unwrap());
        let d1 = rel_err(&hf_v, &hr_v);
        assert!(d1 < 1e-3, "{}: swiglu fused vs reference {d1}", s.name);

        let sc = Array::from_slice(&[0.25f32, 0.75, 0.5, 0.5, 1.0, 0.0], &[3, 2]);
        let yf = gather_qmm_combine(&hr, dq, &idx, &sc, g.down_bias.as_ref()).unwrap();
        let yr = gather_qmm_combine_reference(&hr, dq, &idx, &sc, g.down_bias.as_ref()).unwrap();
        assert_eq!(yf.shape(), &[3, 1, d]);
        let d2 = rel_err(&to_f32_vec(&yf).unwrap(), &to_f32_vec(&yr).unwrap());
        assert!(d2 < 1e-3, "{}: combine fused vs reference {d2}", s.name);
    }
}

#[test]
fn switch_glu_combine_is_the_two_fused_ops() {
    // On CUDA streams (ZMLX_TEST_DEVICE=gpu) the one-launch layer kernel against the two fused kernels;
    // on CPU the op composes them. Decode and prefill sizes, expert batches of several dimensions,
    // indices repeated within a token and between tokens.
    common::use_test_device();
    let (e, d, i, k) = (16, 256, 128, 4);
    for s in SETUPS {
        let g = build(s, e, d, i);
        let (gq, uq, dq) = (
            g.gate_proj.quantized().unwrap(),
            g.up_proj.quantized().unwrap(),
            g.down_proj.quantized().unwrap(),
        );
        for (lead, seed) in [(vec![1], 1u64), (vec![5], 2), (vec![2, 40], 3)] {
            let t: i32 = lead.iter().product();
            let mut xs = lead.clone();
            xs.push(d);
            let x = randn(&xs, 40 + seed, 1.0).as_dtype(s.dtype).unwrap();
            let mut is = lead.clone();
            is.push(k);
            let inds: Vec<u32> = (0..(t * k) as u32)
                .map(|j| (j * 5 + j / 7 + seed as u32) % e as u32)
                .collect();
            let inds = Array::from_slice(&inds, &is);
            let scores = zmlx::mlx_rs::ops::softmax_axis(randn(&is, 50 + seed, 1.0), -1, true)
                .unwrap()
                .as_dtype(s.dtype)
                .unwrap();
            let y = switch_glu_combine(
                &x,
                gq,
                uq,
                dq,
                &inds,
                &scores,
                s.act,
                g.gate_bias.as_ref(),
                g.up_bias.as_ref(),
                g.down_bias.as_ref(),
            )
            .unwrap();
            let xe = x.expand_dims_axes(&[-2, -3]).unwrap();
            let h = gather_qmm_swiglu(
                &xe,
                gq,
                uq,
                &SwigluArgs {
                    rhs_indices: Some(&inds),
                    activation: s.act,
                    gate_bias: g.gate_bias.as_ref(),
                    up_bias: g.up_bias.as_ref(),
                    ..Default::default()
                },
            )
            .unwrap();
            let want = gather_qmm_combine(&h, dq, &inds, &scores, g.down_bias.as_ref())
                .unwrap()
                .squeeze_axes(&[-2])
                .unwrap();
            assert_eq!(y.shape(), want.shape(), "{} {lead:?}", s.name);
            assert_eq!(y.shape(), x.shape(), "{} {lead:?}", s.name);
            assert_eq!(y.dtype(), want.dtype(), "{} {lead:?}", s.name);
            let (yv, wv) = (to_f32_vec(&y).unwrap(), to_f32_vec(&want).unwrap());
            assert!(yv.iter().all(|v| v.is_finite()), "{} {lead:?}", s.name);
            // The same float32 sums in the same order: equal up to the rounding of the output.
            let ulp = match s.dtype {
                Dtype::Bfloat16 => 2f64.powi(-8),
                Dtype::Float16 => 2f64.powi(-11),
                _ => 2f64.powi(-20),
            };
            let err = rel_err(&yv, &wv);
            assert!(err <= ulp, "{} {lead:?}: {err}", s.name);
        }
    }
}

#[test]
fn switch_glu_combine_validates_its_arguments() {
    common::use_test_device();
    let s = &SETUPS[0];
    let g = build(s, 4, 64, 64);
    let (gq, uq, dq) = (
        g.gate_proj.quantized().unwrap(),
        g.up_proj.quantized().unwrap(),
        g.down_proj.quantized().unwrap(),
    );
    let x = randn(&[2, 64], 1, 1.0);
    let idx = Array::from_slice(&[0u32, 1, 2, 3], &[2, 2]);
    let sc = Array::from_slice(&[0.5f32, 0.5, 0.5, 0.5], &[2, 2]);
    let run = |x: &Array, d: &QuantizedWeight, idx: &Array, sc: &Array| {
        switch_glu_combine(x, gq, uq, d, idx, sc, s.act, None, None, None)
    };
    let down8 = quantize(
        &randn(&[4, 64, 64], 3, 0.1),
        QuantMode::Affine,
        Some(64),
        Some(8),
    )
    .unwrap();
    let e = run(&x, &down8, &idx, &sc).unwrap_err().to_string();
    assert!(e.contains("must share the quantization"), "{e}");
    let e = run(&Array::from_f32(1.0), dq, &idx, &sc)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least one dimension"), "{e}");
    let e = run(&randn(&[2, 32], 1, 1.0), dq, &idx, &sc)
        .unwrap_err()
        .to_string();
    assert!(e.contains("switch_glu") || e.contains("gather_qmm"), "{e}");
    let bad_sc = Array::from_slice(&[0.5f32, 0.5, 0.5], &[1, 3]);
    let e = run(&x, dq, &idx, &bad_sc).unwrap_err().to_string();
    assert!(e.contains("scores"), "{e}");
    let e = run(&x, dq, &Array::from_slice(&[0.5f32, 1.0], &[1, 2]), &sc)
        .unwrap_err()
        .to_string();
    assert!(!e.is_empty());
}

#[test]
fn wrapper_errors_are_results() {
    common::use_test_device();
    let s = &SETUPS[0];
    let g = build(s, 4, 64, 64);
    let gq = g.gate_proj.quantized().unwrap();
    // gate and up with different quantization.
    let up8 = quantize(
        &randn(&[4, 64, 64], 3, 0.1),
        QuantMode::Affine,
        Some(64),
        Some(8),
    )
    .unwrap();
    let x = randn(&[1, 1, 1, 64], 1, 1.0);
    let idx = Array::from_slice(&[0u32], &[1, 1]);
    let e = gather_qmm_swiglu(
        &x,
        gq,
        &up8,
        &SwigluArgs {
            rhs_indices: Some(&idx),
            activation: Activation::Swiglu,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("must share their quantization"),
        "{e}"
    );
    // Wrong input width: MLX's message, as an error.
    let x_bad = randn(&[1, 1, 1, 32], 1, 1.0);
    let e = gather_qmm_swiglu(
        &x_bad,
        gq,
        gq,
        &SwigluArgs {
            rhs_indices: Some(&idx),
            activation: Activation::Swiglu,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("MLX:"), "{e}");
    // MLX's errors carry the caller's location (the wrappers are #[track_caller]).
    assert!(e.to_string().contains("tests/fused.rs"), "{e}");
    // The fused path needs quantized experts.
    let dense = g.to_f32().unwrap();
    let xs = randn(&[1, 64], 2, 1.0);
    let inds = Array::from_slice(&[0u32, 1], &[1, 2]);
    let sc = Array::from_slice(&[0.5f32, 0.5], &[1, 2]);
    let e = dense
        .forward_combined(&xs, &inds, &sc, MoePath::Fused)
        .unwrap_err();
    assert!(
        e.to_string().contains("needs quantized expert weights"),
        "{e}"
    );
    // Threads and SIMD level are queryable.
    assert!(zmlx::fused::num_threads().unwrap() >= 1);
    assert!(!zmlx::fused::simd_level().unwrap().is_empty());
    assert!(zmlx::fused::set_simd_level("no-such-level").is_err());
}
