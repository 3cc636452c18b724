//! `fused::quantized_linear` (one quantized linear layer accumulated in float32) and
//! `quant::dequantize_f32` (exact float32 weights), checked against float64 sums over the exact weights;
//! the model-level fused path (float32 activations through attention, dense MLP, router, experts and a tied
//! quantized embedding used as lm_head) against the float32 oracle.

mod common;

use common::randn;
use zmlx::array::to_f32_vec;
use zmlx::fused::quantized_linear;
use zmlx::generate::random_tokens;
use zmlx::mlx_rs::{Array, Dtype};
use zmlx::models::synthetic::{qwen3_quant, with_quant};
use zmlx::models::{self, qwen3_moe};
use zmlx::moe::MoePath;
use zmlx::quant::{
    dequantize, dequantize_f32, quantize, quantized_matmul, QuantMode, QuantizedWeight,
};

/// Exact weights `[N, K]` as float64: affine from the integer codes (dequantized with scale 1 and bias 0,
/// exact in float32) times the stored scales plus the stored biases; fp modes from MLX's float32
/// dequantization (a power-of-two or fp8 scale times a 4/8-bit float code: exact).
fn exact_weights(q: &QuantizedWeight) -> Vec<f64> {
    if q.mode != QuantMode::Affine {
        return to_f32_vec(&dequantize(q, Some(Dtype::Float32)).unwrap())
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
    }
    let ones = zmlx::mlx_rs::ops::ones_like(q.scales.as_dtype(Dtype::Float32).unwrap()).unwrap();
    let zeros = zmlx::mlx_rs::ops::zeros_like(&ones).unwrap();
    let unit =
        QuantizedWeight::new(q.w.clone(), ones, Some(zeros), q.mode, q.group_size, q.bits).unwrap();
    let codes = to_f32_vec(&dequantize(&unit, Some(Dtype::Float32)).unwrap()).unwrap();
    let scales = to_f32_vec(&q.scales).unwrap();
    let biases = to_f32_vec(q.biases.as_ref().unwrap()).unwrap();
    let per_group = q.group_size as usize;
    codes
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let g = i / per_group;
            c as f64 * scales[g] as f64 + biases[g] as f64
        })
        .collect()
}

/// Relative precision of a float dtype (half an ulp at 1).
fn half_ulp(dt: Dtype) -> f64 {
    match dt {
        Dtype::Bfloat16 => 2f64.powi(-8),
        Dtype::Float16 => 2f64.powi(-11),
        _ => 2f64.powi(-24),
    }
}

#[test]
fn dequantize_f32_is_exact_where_mlx_rounds_to_the_scales_dtype() {
    common::use_test_device();
    for (dt, bits, group) in [
        (Dtype::Bfloat16, 4, 64),
        (Dtype::Float16, 8, 32),
        (Dtype::Float32, 4, 64),
    ] {
        let w = randn(&[48, 256], 7, 0.3).as_dtype(dt).unwrap();
        let q = quantize(&w, QuantMode::Affine, Some(group), Some(bits)).unwrap();
        assert_eq!(q.scales.dtype(), dt);
        let exact = exact_weights(&q);
        let ours = to_f32_vec(&dequantize_f32(&q).unwrap()).unwrap();
        let mlx = to_f32_vec(&dequantize(&q, Some(Dtype::Float32)).unwrap()).unwrap();
        // Errors relative to the largest weight: `scale * code + bias` rounds at most twice in float32.
        let wmax = exact.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = |v: &[f32]| {
            v.iter()
                .zip(&exact)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max)
                / wmax
        };
        let (e_ours, e_mlx) = (err(&ours), err(&mlx));
        eprintln!("{dt:?} {bits}-bit: max error / max |w|: dequantize_f32 {e_ours:.2e}, MLX's float32 dequantize {e_mlx:.2e}");
        assert!(e_ours <= 2f64.powi(-21), "{dt:?}: {e_ours}");
    }
}

#[test]
fn quantized_linear_accumulates_in_float32_for_every_mode_and_shape() {
    common::use_test_device();
    let (n, k) = (40, 256);
    let modes: &[(QuantMode, Option<i32>, Option<i32>)] = &[
        (QuantMode::Affine, Some(64), Some(4)),
        (QuantMode::Affine, Some(32), Some(8)),
        (QuantMode::Mxfp4, None, None),
        (QuantMode::Nvfp4, None, None),
        (QuantMode::Mxfp8, None, None),
    ];
    // Decode (one row), a batch of rows, and a prefill longer than the kernel's row chunk (256).
    let shapes: &[&[i32]] = &[&[1, 1, k], &[2, 3, k], &[1, 300, k]];
    for (mi, &(mode, g, b)) in modes.iter().enumerate() {
        for dt in [Dtype::Bfloat16, Dtype::Float16, Dtype::Float32] {
            let w = randn(&[n, k], 10 + mi as u64, 0.2).as_dtype(dt).unwrap();
            let q = quantize(&w, mode, g, b).unwrap();
            let wx = exact_weights(&q);
            for (si, shape) in shapes.iter().enumerate() {
                for with_bias in [false, true] {
                    let what = format!("{mode} {dt:?} x{shape:?} bias {with_bias}");
                    let x = randn(shape, 50 + si as u64, 1.0).as_dtype(dt).unwrap();
                    let bias = with_bias.then(|| randn(&[n], 90, 0.5).as_dtype(dt).unwrap());
                    let y = quantized_linear(&x, &q, bias.as_ref()).unwrap();
                    // Drop-in for mlx-lm's `quantized_matmul (+ bias)`: same shape and dtype.
                    let mut yr = quantized_matmul(&x, &q, true).unwrap();
                    if let Some(bb) = &bias {
                        yr = zmlx::mlx_rs::ops::add(&yr, bb).unwrap();
                    }
                    assert_eq!(y.shape(), yr.shape(), "{what}");
                    assert_eq!(y.dtype(), yr.dtype(), "{what}");
                    let mut want = shape[..shape.len() - 1].to_vec();
                    want.push(n);
                    assert_eq!(y.shape(), &want[..], "{what}");

                    let xv = to_f32_vec(&x).unwrap();
                    let bv = bias.as_ref().map(|bb| to_f32_vec(bb).unwrap());
                    let (yv, yrv) = (to_f32_vec(&y).unwrap(), to_f32_vec(&yr).unwrap());
                    let rows = xv.len() / k as usize;
                    let (mut e_f, mut e_r) = (0f64, 0f64);
                    for r in 0..rows {
                        for j in 0..n as usize {
                            let xr = &xv[r * k as usize..(r + 1) * k as usize];
                            let wr = &wx[j * k as usize..(j + 1) * k as usize];
                            let mut s: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * b).sum();
                            let mag: f64 =
                                xr.iter().zip(wr).map(|(a, b)| (*a as f64 * b).abs()).sum();
                            if let Some(bv) = &bv {
                                s += bv[j] as f64;
                            }
                            let got = yv[r * n as usize + j] as f64;
                            // One rounding to the output dtype plus float32 accumulation noise.
                            let tol = half_ulp(dt) * s.abs() + 2e-5 * mag + 1e-6;
                            assert!(
                                (got - s).abs() <= tol,
                                "{what} row {r} col {j}: got {got}, exact {s}, tolerance {tol}"
                            );
                            e_f = e_f.max((got - s).abs());
                            e_r = e_r.max((yrv[r * n as usize + j] as f64 - s).abs());
                        }
                    }
                    if dt != Dtype::Float32 {
                        // MLX's CPU kernel accumulates half-precision dot products in half precision.
                        assert!(e_f <= e_r, "{what}: fused max error {e_f} > MLX {e_r}");
                    }
                }
            }
        }
    }
}

#[test]
fn quantized_linear_rejects_bad_inputs() {
    common::use_test_device();
    let q = quantize(
        &randn(&[16, 64], 1, 0.2),
        QuantMode::Affine,
        Some(64),
        Some(4),
    )
    .unwrap();
    let x = randn(&[1, 2, 64], 2, 1.0);
    assert!(quantized_linear(&x, &q, None).is_ok());
    // Wrong input dimension.
    assert!(quantized_linear(&randn(&[1, 2, 32], 3, 1.0), &q, None).is_err());
    // Integer input.
    let xi = Array::from_slice(&[1i32; 64], &[1, 64]);
    assert!(quantized_linear(&xi, &q, None).is_err());
    // Bias of the wrong length or type.
    assert!(quantized_linear(&x, &q, Some(&randn(&[15], 4, 1.0))).is_err());
    let bi = Array::from_slice(&[1i32; 16], &[16]);
    assert!(quantized_linear(&x, &q, Some(&bi)).is_err());
    // A stack of experts is not one linear layer.
    let stack = quantize(
        &randn(&[2, 16, 64], 5, 0.2),
        QuantMode::Affine,
        Some(64),
        Some(4),
    )
    .unwrap();
    assert!(quantized_linear(&x, &stack, None).is_err());
}

#[test]
fn fused_model_path_runs_float32_activations_close_to_the_oracle() {
    common::use_test_device();
    // Qwen3-like bf16 4-bit with a dense MLP layer and tied (quantized) embeddings, so that every kind of
    // quantized linear layer runs: attention, router, experts, dense MLP and the embedding as lm_head.
    let mut c = qwen3_moe::config_json(128, 2, 4, 2, 32, 8, 2, 64, 512, "bfloat16");
    c["tie_word_embeddings"] = serde_json::json!(true);
    c["mlp_only_layers"] = serde_json::json!([0]);
    let (model, _) =
        models::synthesize(&with_quant(c, qwen3_quant(2, 4, 64)), 11, &mut |_, _, _| {}).unwrap();
    assert!(model.lm_head.is_none() && model.embed.weight.quantized().is_some());
    assert_eq!(model.num_moe_layers(), 1);
    let oracle = model.to_oracle().unwrap();
    let ids = Array::from_slice(&random_tokens(12, 512, 3), &[1, 12]);
    let lo = oracle
        .forward(&ids, &mut oracle.new_cache(), MoePath::Reference)
        .unwrap();
    let lr = model
        .forward(&ids, &mut model.new_cache(), MoePath::Reference)
        .unwrap();
    let lf = model
        .forward(&ids, &mut model.new_cache(), MoePath::Fused)
        .unwrap();
    assert_eq!(lr.dtype(), Dtype::Bfloat16);
    assert_eq!(lf.dtype(), Dtype::Float32);
    let (vo, vr, vf) = (
        to_f32_vec(&lo).unwrap(),
        to_f32_vec(&lr).unwrap(),
        to_f32_vec(&lf).unwrap(),
    );
    let scale = vo.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = |v: &[f32]| {
        v.iter()
            .zip(&vo)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
    };
    let (er, ef) = (err(&vr), err(&vf));
    eprintln!("logit scale {scale}: max error reference {er:.3e}, fused {ef:.3e}");
    assert!(ef <= 1e-4 * scale, "fused {ef} vs scale {scale}");
    assert!(ef * 10.0 <= er, "fused {ef} reference {er}");
}
