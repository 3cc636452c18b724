//! MoE building blocks: routers, SwitchGlu's sorted (prefill) path vs per-token path, and the reference
//! path against a float64 computation.

mod common;

use common::randn;
use zmlx::array::{to_f32_vec, to_u32_vec};
use zmlx::mlx_rs::{Array, Dtype};
use zmlx::moe::{Activation, ExpertWeight, MoePath, Router, RouterKind, SwitchGlu, SORT_THRESHOLD};
use zmlx::nn::{Linear, Weight};
use zmlx::quant::{quantize, QuantMode};

fn glu(e: i32, d: i32, i: i32, act: Activation, biases: bool) -> SwitchGlu {
    let q = |s: &[i32], seed| {
        ExpertWeight::Quantized(
            quantize(&randn(s, seed, 0.1), QuantMode::Affine, Some(64), Some(8)).unwrap(),
        )
    };
    let b = |s: &[i32], seed| biases.then(|| randn(s, seed, 0.1));
    SwitchGlu {
        gate_proj: q(&[e, i, d], 1),
        up_proj: q(&[e, i, d], 2),
        down_proj: q(&[e, d, i], 3),
        gate_bias: b(&[e, i], 4),
        up_bias: b(&[e, i], 5),
        down_bias: b(&[e, d], 6),
        activation: act,
    }
}

#[test]
fn sorted_prefill_path_equals_per_token_path() {
    for (act, biases) in [(Activation::Swiglu, false), (Activation::GPT_OSS, true)] {
        let (e, d, i, k, t) = (8, 128, 64, 4, 20);
        assert!((t * k) as usize >= SORT_THRESHOLD);
        let g = glu(e, d, i, act, biases);
        let x = randn(&[1, t, d], 9, 1.0);
        let inds: Vec<u32> = (0..(t * k) as u32)
            .map(|j| (j * 5 + j / 4) % e as u32)
            .collect();
        let inds_a = Array::from_slice(&inds, &[1, t, k]);
        let all = g.forward(&x, &inds_a).unwrap();
        assert_eq!(all.shape(), &[1, t, k, d]);
        let all = to_f32_vec(&all).unwrap();
        for tok in 0..t {
            let xt = zmlx::array::slice_axis(&x, 1, tok, tok + 1).unwrap();
            let it = zmlx::array::slice_axis(&inds_a, 1, tok, tok + 1).unwrap();
            let one = to_f32_vec(&g.forward(&xt, &it).unwrap()).unwrap();
            let off = (tok * k * d) as usize;
            let batched = &all[off..off + (k * d) as usize];
            // Bitwise equal on the CPU; MLX's CUDA backend picks different kernels for the sorted batch
            // and the single token, so allow float32 rounding there. A wrong row order is an O(1) error.
            let scale = one.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let diff = batched
                .iter()
                .zip(&one)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-4 * scale,
                "token {tok} ({act:?}): sorted batch differs from the single token by {diff} (scale {scale})"
            );
        }
    }
}

#[test]
fn reference_path_matches_float64() {
    let (e, d, i, k) = (4, 64, 64, 2);
    let g = glu(e, d, i, Activation::GPT_OSS, true);
    let f = g.to_f32().unwrap();
    let x = randn(&[1, 1, d], 11, 2.0);
    let inds = Array::from_slice(&[3u32, 1], &[1, 1, k]);
    let scores_v = [0.7f32, 0.3];
    let scores = Array::from_slice(&scores_v, &[1, 1, k]);
    let y = to_f32_vec(
        &f.forward_combined(&x, &inds, &scores, MoePath::Reference)
            .unwrap(),
    )
    .unwrap();
    let deq = |w: &ExpertWeight| match w {
        ExpertWeight::Dense(a) => to_f32_vec(a).unwrap(),
        ExpertWeight::Quantized(_) => unreachable!(),
    };
    let (wg, wu, wd) = (deq(&f.gate_proj), deq(&f.up_proj), deq(&f.down_proj));
    let bias = |b: &Option<Array>| to_f32_vec(b.as_ref().unwrap()).unwrap();
    let (bg, bu, bd) = (bias(&f.gate_bias), bias(&f.up_bias), bias(&f.down_bias));
    let xv = to_f32_vec(&x).unwrap();
    let (du, iu) = (d as usize, i as usize);
    let mut want = vec![0f64; du];
    for (slot, &ex) in [3usize, 1].iter().enumerate() {
        let mut h = vec![0f64; iu];
        for r in 0..iu {
            let dot = |w: &[f32]| {
                (0..du)
                    .map(|c| xv[c] as f64 * w[(ex * iu + r) * du + c] as f64)
                    .sum::<f64>()
            };
            let gg = (dot(&wg) + bg[ex * iu + r] as f64).min(7.0);
            let uu = (dot(&wu) + bu[ex * iu + r] as f64).clamp(-7.0, 7.0);
            h[r] = (uu + 1.0) * gg / (1.0 + (-1.702 * gg).exp());
        }
        for c in 0..du {
            let o: f64 = (0..iu)
                .map(|r| h[r] * wd[(ex * du + c) * iu + r] as f64)
                .sum::<f64>()
                + bd[ex * du + c] as f64;
            want[c] += scores_v[slot] as f64 * o;
        }
    }
    let err = y
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0f64, f64::max);
    let scale = want.iter().map(|v| v.abs()).fold(0f64, f64::max);
    assert!(
        err <= 1e-4 * scale.max(1.0),
        "max error {err} (scale {scale})"
    );
}

#[test]
fn routers_pick_the_top_experts() {
    let e = 16;
    let w = randn(&[e, 32], 21, 1.0);
    let x = randn(&[3, 32], 22, 1.0);
    let logits = to_f32_vec(&x.matmul(w.t()).unwrap()).unwrap();
    for kind in [
        RouterKind::SoftmaxTopK { renormalize: true },
        RouterKind::SoftmaxTopK { renormalize: false },
        RouterKind::TopKSoftmax,
        RouterKind::TopKSoftmaxNeg,
        RouterKind::SigmoidTopK {
            renormalize: true,
            scaling: 2.5,
            n_group: 1,
            topk_group: 1,
        },
        RouterKind::SigmoidTopK {
            renormalize: false,
            scaling: 1.0,
            n_group: 4,
            topk_group: 2,
        },
    ] {
        let r = Router {
            gate: Linear {
                weight: Weight::Dense(w.clone()),
                bias: None,
                lora: None,
            },
            top_k: 4,
            kind: kind.clone(),
            correction_bias: None,
        };
        let (inds, scores) = r.route(&x).unwrap();
        assert_eq!(inds.shape(), &[3, 4]);
        assert_eq!(inds.dtype(), Dtype::Uint32);
        let iv = to_u32_vec(&inds).unwrap();
        let sv = to_f32_vec(&scores).unwrap();
        for t in 0..3 {
            let row = &logits[t * e as usize..(t + 1) * e as usize];
            let mut order: Vec<usize> = (0..e as usize).collect();
            order.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
            let mut got: Vec<usize> = iv[t * 4..t * 4 + 4].iter().map(|&v| v as usize).collect();
            got.sort();
            let s = &sv[t * 4..t * 4 + 4];
            match &kind {
                RouterKind::SigmoidTopK { n_group: 4, .. } => {
                    // Group-limited: the picks lie in the 2 best groups (groups of 4 experts).
                    let groups: std::collections::HashSet<usize> =
                        got.iter().map(|g| g / 4).collect();
                    assert!(groups.len() <= 2, "{kind:?}: {got:?}");
                }
                _ => {
                    let mut want = order[..4].to_vec();
                    want.sort();
                    assert_eq!(got, want, "{kind:?} token {t}");
                }
            }
            let sum: f32 = s.iter().sum();
            match kind {
                RouterKind::SoftmaxTopK { renormalize: true }
                | RouterKind::TopKSoftmax
                | RouterKind::TopKSoftmaxNeg => {
                    assert!((sum - 1.0).abs() < 1e-5, "{kind:?}: {sum}")
                }
                RouterKind::SigmoidTopK {
                    renormalize: true,
                    scaling,
                    ..
                } => {
                    assert!((sum - scaling).abs() < 1e-4, "{kind:?}: {sum}")
                }
                _ => assert!(sum > 0.0 && sum < 4.0 + 1e-5),
            }
        }
    }
    // top_k larger than the experts is an error.
    let r = Router {
        gate: Linear {
            weight: Weight::Dense(w),
            bias: None,
            lora: None,
        },
        top_k: 17,
        kind: RouterKind::TopKSoftmax,
        correction_bias: None,
    };
    assert!(r.route(&x).is_err());
}

#[test]
fn switch_glu_rejects_mismatched_inputs() {
    let g = glu(4, 64, 64, Activation::Swiglu, false);
    let x = randn(&[2, 32], 1, 1.0);
    let inds = Array::from_slice(&[0u32, 1, 2, 3], &[2, 2]);
    assert!(g
        .forward(&x, &inds)
        .unwrap_err()
        .to_string()
        .contains("input dim 64"));
    let x = randn(&[2, 64], 1, 1.0);
    let inds3 = Array::from_slice(&[0u32, 1, 2], &[3, 1]);
    assert!(g.forward(&x, &inds3).is_err());
    let scores = Array::from_slice(&[0.5f32; 6], &[2, 3]);
    assert!(g
        .forward_combined(&x, &inds, &scores, MoePath::Reference)
        .is_err());
}
