//! quantize / dequantize / quantized_matmul / gather_qmm in every MLX mode, checked against float64 sums
//! over the dequantized weights; QuantizedWeight validation.

mod common;

use common::randn;
use zmlx::array::{to_f32_vec, to_u32_vec};
use zmlx::mlx_rs::{Array, Dtype};
use zmlx::quant::{dequantize, gather_qmm, quantize, quantized_matmul, QuantMode, QuantizedWeight};

/// (mode, group, bits) combinations MLX accepts, `None` = MLX's default for the mode.
const CASES: &[(QuantMode, Option<i32>, Option<i32>)] = &[
    (QuantMode::Affine, None, None),
    (QuantMode::Affine, Some(32), Some(8)),
    (QuantMode::Affine, Some(128), Some(3)),
    (QuantMode::Affine, Some(64), Some(6)),
    (QuantMode::Mxfp4, None, None),
    (QuantMode::Nvfp4, None, None),
    (QuantMode::Mxfp8, None, None),
];

#[test]
fn every_mode_round_trips_and_gather_qmm_matches_float64() {
    let (e, n, k, t) = (4, 24, 256, 6);
    for (ci, &(mode, g, b)) in CASES.iter().enumerate() {
        let w = randn(&[e, n, k], 100 + ci as u64, 1.0);
        let q = quantize(&w, mode, g, b).unwrap_or_else(|err| panic!("{mode}: {err}"));
        assert_eq!(q.mode, mode);
        assert_eq!(q.in_dims(), k);
        assert_eq!(q.out_dims(), n);
        assert_eq!(q.num_experts(), e);
        if let Some(g) = g {
            assert_eq!(q.group_size, g);
        }
        if let Some(b) = b {
            assert_eq!(q.bits, b);
        }
        assert_eq!(q.biases.is_some(), mode == QuantMode::Affine);
        let wd = to_f32_vec(&dequantize(&q, Some(Dtype::Float32)).unwrap()).unwrap();
        let w0 = to_f32_vec(&w).unwrap();
        // Quantization error is bounded (loose: 3-bit affine and fp4 are coarse).
        let rms_err = (w0
            .iter()
            .zip(&wd)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / w0.len() as f64)
            .sqrt();
        assert!(
            rms_err < 0.35,
            "{mode} g{:?} b{:?}: rms error {rms_err}",
            g,
            b
        );

        let x = randn(&[t, 1, k], 200 + ci as u64, 1.0);
        let idx_v: Vec<u32> = (0..t as u32).map(|i| (i * 3 + 1) % e as u32).collect();
        let idx = Array::from_slice(&idx_v, &[t]);
        let out = gather_qmm(&x, &q, None, Some(&idx), true, false).unwrap();
        assert_eq!(out.shape(), &[t, 1, n]);
        let got = to_f32_vec(&out).unwrap();
        let xv = to_f32_vec(&x).unwrap();
        let (ku, nu) = (k as usize, n as usize);
        let mut max_err = 0f64;
        let mut scale = 0f64;
        for ti in 0..t as usize {
            let ex = idx_v[ti] as usize;
            for ni in 0..nu {
                let acc: f64 = (0..ku)
                    .map(|kk| xv[ti * ku + kk] as f64 * wd[(ex * nu + ni) * ku + kk] as f64)
                    .sum();
                scale = scale.max(acc.abs());
                max_err = max_err.max((acc - got[ti * nu + ni] as f64).abs());
            }
        }
        assert!(
            max_err <= 1e-4 * scale.max(1.0),
            "{mode}: gather_qmm error {max_err} (scale {scale})"
        );

        // Sorted indices give the same result.
        let mut sorted = idx_v.clone();
        sorted.sort();
        let sidx = Array::from_slice(&sorted, &[t]);
        let a = to_f32_vec(&gather_qmm(&x, &q, None, Some(&sidx), true, true).unwrap()).unwrap();
        let b2 = to_f32_vec(&gather_qmm(&x, &q, None, Some(&sidx), true, false).unwrap()).unwrap();
        assert_eq!(a, b2, "{mode}: sorted flag changed the result");

        // quantized_matmul on one expert equals gather_qmm with that expert.
        let one = QuantizedWeight {
            w: q.w.take_axis(Array::from_int(2), 0).unwrap(),
            scales: q.scales.take_axis(Array::from_int(2), 0).unwrap(),
            biases: q
                .biases
                .as_ref()
                .map(|b| b.take_axis(Array::from_int(2), 0).unwrap()),
            ..q.clone()
        };
        let x2 = randn(&[3, k], 300 + ci as u64, 1.0);
        let qm = to_f32_vec(&quantized_matmul(&x2, &one, true).unwrap()).unwrap();
        let x3 = x2.reshape(&[3, 1, k]).unwrap();
        let two = Array::from_slice(&[2u32, 2, 2], &[3]);
        let gq = to_f32_vec(&gather_qmm(&x3, &q, None, Some(&two), true, false).unwrap()).unwrap();
        let d = qm
            .iter()
            .zip(&gq)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 1e-3,
            "{mode}: quantized_matmul vs gather_qmm differ by {d}"
        );
    }
}

#[test]
fn modes_parse_and_bad_inputs_are_errors() {
    for m in QuantMode::ALL {
        assert_eq!(m.name().parse::<QuantMode>().unwrap(), m);
    }
    assert!("MXFP4".parse::<QuantMode>().is_ok());
    let e = "int4".parse::<QuantMode>().unwrap_err().to_string();
    assert!(e.contains("unknown quantization mode 'int4'"), "{e}");

    // MLX rejects group sizes / bits a mode does not have: an error, not an abort.
    let w = randn(&[8, 64], 1, 1.0);
    assert!(quantize(&w, QuantMode::Mxfp4, Some(64), Some(4)).is_err());
    assert!(quantize(&w, QuantMode::Affine, Some(64), Some(7)).is_err());
    // A 1-d array or integer array is rejected up front.
    assert!(quantize(&randn(&[64], 1, 1.0), QuantMode::Affine, None, None).is_err());
    let ints = Array::from_slice(&[1i32; 64], &[1, 64]);
    assert!(quantize(&ints, QuantMode::Affine, None, None).is_err());

    let q = quantize(&w, QuantMode::Affine, Some(64), Some(4)).unwrap();
    // Parts that disagree are refused.
    let bad = QuantizedWeight::new(
        q.w.clone(),
        q.scales.clone(),
        q.biases.clone(),
        QuantMode::Affine,
        32,
        4,
    );
    assert!(bad.is_err());
    let bad = QuantizedWeight::new(
        q.w.clone(),
        q.scales.clone(),
        None,
        QuantMode::Affine,
        64,
        4,
    );
    assert!(bad.unwrap_err().to_string().contains("needs biases"));
    let bad = QuantizedWeight::new(
        q.w.clone(),
        q.scales.clone(),
        q.biases.clone(),
        QuantMode::Mxfp4,
        64,
        4,
    );
    assert!(bad.is_err());
    let floats = q.w.as_dtype(Dtype::Float32).unwrap();
    assert!(QuantizedWeight::new(
        floats,
        q.scales.clone(),
        q.biases.clone(),
        QuantMode::Affine,
        64,
        4
    )
    .is_err());
    // gather_qmm with a mismatched input dim is an MLX error, not a crash.
    let x = randn(&[2, 1, 32], 3, 1.0);
    let idx = Array::from_slice(&[0u32, 0], &[2]);
    let q3 = quantize(&randn(&[2, 8, 64], 4, 1.0), QuantMode::Affine, None, None).unwrap();
    let e = gather_qmm(&x, &q3, None, Some(&idx), true, false).unwrap_err();
    assert!(e.to_string().starts_with("MLX:"), "{e}");
    // Indices are uint32 expert ids.
    assert_eq!(to_u32_vec(&idx).unwrap(), vec![0, 0]);
}
