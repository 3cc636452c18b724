//! add_rms_norm (the residual add + RMS normalization primitive) against a float64 oracle and MLX's composed
//! path (`add`, then `fast::rms_norm`) over dtypes, shapes (D not a multiple of any vector width, one
//! element, thousands), with and without a weight, non-contiguous inputs; its validation errors; and its
//! derivatives against central finite differences and the composed path's own.

mod common;

use common::f64s;

use zmlx::array::to_f32_vec;
use zmlx::fused::{add_rms_norm, add_rms_norm_reference};
use zmlx::mlx_rs::ops::indexing::{IndexOp, IntoStrideBy};
use zmlx::mlx_rs::{ops, transforms, Array, Dtype};

/// Normal samples around `mean`.
fn randn(shape: &[i32], seed: u64, mean: f32, std: f32) -> Array {
    ops::add(common::randn(shape, seed, std), Array::from_f32(mean)).unwrap()
}

/// Unit roundoff of a dtype.
fn ulp(d: Dtype) -> f64 {
    match d {
        Dtype::Bfloat16 => 2f64.powi(-8),
        Dtype::Float16 => 2f64.powi(-11),
        _ => 2f64.powi(-24),
    }
}

/// The float64 oracle of y from h as the op stores it (both paths normalize the rounded h).
fn oracle_y(h: &[f64], w: Option<&[f64]>, d: usize, eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; h.len()];
    for (row, out) in h.chunks(d).zip(y.chunks_mut(d)) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        for j in 0..d {
            out[j] = row[j] * inv * w.map_or(1.0, |w| w[j]);
        }
    }
    y
}

fn max_abs_err(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn matches_oracle_and_composed() {
    common::use_test_device();
    let shapes: &[&[i32]] = &[
        &[1, 1],
        &[1, 7],
        &[3, 64],
        &[2, 5, 130],
        &[4, 1000],
        &[2, 2048],
    ];
    let mut cases = 0;
    for &dt in &[Dtype::Float32, Dtype::Float16, Dtype::Bfloat16] {
        for (si, shape) in shapes.iter().enumerate() {
            for with_weight in [true, false] {
                let d = *shape.last().unwrap() as usize;
                let seed = 100 * si as u64 + with_weight as u64;
                // Off-centre inputs with rows of different scales.
                let x = randn(shape, seed, 0.3, 2.0).as_dtype(dt).unwrap();
                let r = randn(shape, seed + 7, -0.1, 1.0).as_dtype(dt).unwrap();
                let w = randn(&[d as i32], seed + 9, 1.0, 0.3).as_dtype(dt).unwrap();
                let wt = with_weight.then_some(&w);
                let eps = 1e-5;
                let (h, y) = add_rms_norm(&x, &r, wt, eps).unwrap();
                let (hr, yr) = add_rms_norm_reference(&x, &r, wt, eps).unwrap();
                assert_eq!(h.dtype(), dt);
                assert_eq!(y.dtype(), yr.dtype());
                assert_eq!(y.shape(), x.shape());
                // h is MLX's add, bit for bit.
                assert_eq!(
                    to_f32_vec(&h).unwrap(),
                    to_f32_vec(&hr).unwrap(),
                    "{dt:?} {shape:?}"
                );
                let hv = f64s(&h);
                let wv = f64s(&w);
                let want = oracle_y(&hv, with_weight.then_some(&wv[..]), d, eps as f64);
                let ours = max_abs_err(&f64s(&y), &want);
                let mlx = max_abs_err(&f64s(&yr), &want);
                let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                // The contract: no worse than MLX's composed path (plus one rounding of the largest value).
                let bound = 1.05 * mlx + ulp(dt) * scale;
                assert!(
                    ours <= bound,
                    "{dt:?} {shape:?} weight {with_weight}: fused error {ours:.3e} > bound {bound:.3e} (MLX {mlx:.3e})"
                );
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 36);
}

#[test]
fn non_contiguous_inputs() {
    common::use_test_device();
    // x transposed, residual a strided slice, weight every other element of a longer vector.
    let x = randn(&[96, 5], 1, 0.0, 1.0).transpose().unwrap(); // [5, 96]
    let rbig = randn(&[10, 96], 2, 0.0, 1.0);
    let r = rbig.index(((..).stride_by(2), ..)); // [5, 96]
    let wbig = randn(&[192], 3, 1.0, 0.2);
    let w = wbig.index((..).stride_by(2)); // [96]
    assert_eq!(r.shape(), &[5, 96]);
    assert_eq!(w.shape(), &[96]);
    for dt in [Dtype::Float32, Dtype::Bfloat16] {
        let (xd, rd, wd) = (
            x.as_dtype(dt).unwrap(),
            r.as_dtype(dt).unwrap(),
            w.as_dtype(dt).unwrap(),
        );
        let (h, y) = add_rms_norm(&xd, &rd, Some(&wd), 1e-6).unwrap();
        // The same values laid out row-contiguously.
        let c = |a: &Array| ops::add(a, Array::from_f32(0.0).as_dtype(dt).unwrap()).unwrap();
        let (hc, yc) = add_rms_norm(&c(&xd), &c(&rd), Some(&c(&wd)), 1e-6).unwrap();
        assert_eq!(to_f32_vec(&h).unwrap(), to_f32_vec(&hc).unwrap(), "{dt:?}");
        assert_eq!(to_f32_vec(&y).unwrap(), to_f32_vec(&yc).unwrap(), "{dt:?}");
    }
}

#[test]
fn errors() {
    common::use_test_device();
    let x = randn(&[2, 8], 1, 0.0, 1.0);
    let w = randn(&[8], 2, 1.0, 0.1);
    // (what, x, residual, weight, eps, expected message)
    type Case = (&'static str, Array, Array, Option<Array>, f32, &'static str);
    let cases: Vec<Case> = vec![
        (
            "shape mismatch",
            x.clone(),
            randn(&[2, 9], 3, 0.0, 1.0),
            None,
            1e-5,
            "x and residual must have the same shape",
        ),
        (
            "scalar",
            Array::from_f32(1.0),
            Array::from_f32(2.0),
            None,
            1e-5,
            "at least one dimension",
        ),
        (
            "integer x",
            x.as_dtype(Dtype::Int32).unwrap(),
            x.as_dtype(Dtype::Int32).unwrap(),
            None,
            1e-5,
            "x must be float32, float16 or bfloat16",
        ),
        (
            "float64 residual",
            x.clone(),
            x.as_dtype(Dtype::Float64).unwrap(),
            None,
            1e-5,
            "residual must be float32, float16 or bfloat16",
        ),
        (
            "weight shape",
            x.clone(),
            x.clone(),
            Some(randn(&[9], 4, 1.0, 0.1)),
            1e-5,
            "weight must have shape [8]",
        ),
        (
            "weight rank",
            x.clone(),
            x.clone(),
            Some(randn(&[1, 8], 4, 1.0, 0.1)),
            1e-5,
            "weight must have shape [8]",
        ),
        (
            "weight dtype",
            x.clone(),
            x.clone(),
            Some(w.as_dtype(Dtype::Int32).unwrap()),
            1e-5,
            "weight must be float32, float16 or bfloat16",
        ),
        (
            "eps NaN",
            x.clone(),
            x.clone(),
            None,
            f32::NAN,
            "eps must be finite and non-negative",
        ),
        (
            "eps negative",
            x.clone(),
            x.clone(),
            Some(w.clone()),
            -1e-5,
            "eps must be finite and non-negative",
        ),
    ];
    let mut failures = Vec::new();
    for (what, x, r, w, eps, want) in &cases {
        for reference in [false, true] {
            let f = if reference {
                add_rms_norm_reference
            } else {
                add_rms_norm
            };
            match f(x, r, w.as_ref(), *eps) {
                Ok(_) => failures.push(format!("{what} (reference {reference}): no error")),
                Err(e) => {
                    let msg = e.to_string();
                    if !msg.contains(want) || !msg.contains("[add_rms_norm]") {
                        failures.push(format!("{what} (reference {reference}): {msg}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The error path many times in a row, then a good call: no state left behind.
    for _ in 0..500 {
        for (_, x, r, w, eps, _) in &cases {
            assert!(add_rms_norm(x, r, w.as_ref(), *eps).is_err());
        }
    }
    let (_, y) = add_rms_norm(&x, &x, Some(&w), 1e-5).unwrap();
    assert!(to_f32_vec(&y).unwrap().iter().all(|v| v.is_finite()));
}

/// sum(c_h * h + c_y * y) and its gradient with respect to (x, residual, weight), on either path.
fn vjp_of(
    reference: bool,
    x: &Array,
    r: &Array,
    w: &Array,
    ch: &Array,
    cy: &Array,
) -> (Vec<Array>, Vec<Array>) {
    let f = move |a: &[Array]| -> Vec<Array> {
        let op = if reference {
            add_rms_norm_reference
        } else {
            add_rms_norm
        };
        let (h, y) = op(&a[0], &a[1], Some(&a[2]), 1e-5).unwrap();
        vec![h, y]
    };
    transforms::vjp(
        f,
        &[x.clone(), r.clone(), w.clone()],
        &[ch.clone(), cy.clone()],
    )
    .unwrap()
}

#[test]
fn gradients_match_finite_differences_and_composed() {
    common::use_test_device();
    let shape = [3, 37];
    let x = randn(&shape, 11, 0.2, 1.0);
    let r = randn(&shape, 12, 0.0, 0.5);
    let w = randn(&[37], 13, 1.0, 0.2);
    let ch = randn(&shape, 14, 0.0, 1.0);
    let cy = randn(&shape, 15, 0.0, 1.0);
    let (outs, g) = vjp_of(false, &x, &r, &w, &ch, &cy);
    // The traced op's values are the plain op's, bit for bit (on CUDA streams: the same kernel).
    let (h, y) = add_rms_norm(&x, &r, Some(&w), 1e-5).unwrap();
    assert_eq!(f64s(&outs[0]), f64s(&h));
    assert_eq!(f64s(&outs[1]), f64s(&y));
    let (_, gr) = vjp_of(true, &x, &r, &w, &ch, &cy);
    for (a, b) in g.iter().zip(&gr) {
        let (av, bv) = (f64s(a), f64s(b));
        let scale = bv.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(max_abs_err(&av, &bv) <= 1e-5 * scale.max(1.0));
    }
    // Central differences of L = sum(ch * h + cy * y) along a random direction, float32.
    let loss = |x: &Array, r: &Array, w: &Array| -> f64 {
        let (h, y) = add_rms_norm(x, r, Some(w), 1e-5).unwrap();
        let l = ops::add(
            ops::sum(ops::multiply(&ch, &h).unwrap(), None).unwrap(),
            ops::sum(ops::multiply(&cy, &y).unwrap(), None).unwrap(),
        )
        .unwrap();
        to_f32_vec(&l).unwrap()[0] as f64
    };
    for (i, primal) in [&x, &r, &w].into_iter().enumerate() {
        let v = randn(primal.shape(), 20 + i as u64, 0.0, 1.0);
        let delta = 1e-2f32;
        let step = ops::multiply(&v, Array::from_f32(delta)).unwrap();
        let mut plus = [x.clone(), r.clone(), w.clone()];
        let mut minus = plus.clone();
        plus[i] = ops::add(primal, &step).unwrap();
        minus[i] = ops::subtract(primal, &step).unwrap();
        let fd = (loss(&plus[0], &plus[1], &plus[2]) - loss(&minus[0], &minus[1], &minus[2]))
            / (2.0 * delta as f64);
        let analytic: f64 = f64s(&g[i]).iter().zip(f64s(&v)).map(|(a, b)| a * b).sum();
        assert!(
            (fd - analytic).abs() <= 2e-3 * analytic.abs().max(1.0),
            "input {i}: finite differences {fd} vs vjp {analytic}"
        );
    }
    // jvp along x equals <vjp, direction> in the other order: d/dt L = ch . dh + cy . dy.
    let vx = randn(&shape, 30, 0.0, 1.0);
    let f = |a: &[Array]| -> Vec<Array> {
        let (h, y) = add_rms_norm(&a[0], &a[1], Some(&a[2]), 1e-5).unwrap();
        vec![h, y]
    };
    let zeros_r = ops::zeros_like(&r).unwrap();
    let zeros_w = ops::zeros_like(&w).unwrap();
    let (_, t) = transforms::jvp(
        f,
        &[x.clone(), r.clone(), w.clone()],
        &[vx.clone(), zeros_r, zeros_w],
    )
    .unwrap();
    let jv: f64 = f64s(&t[0])
        .iter()
        .zip(f64s(&ch))
        .chain(f64s(&t[1]).iter().zip(f64s(&cy)))
        .map(|(a, b)| a * b)
        .sum();
    let vj: f64 = f64s(&g[0]).iter().zip(f64s(&vx)).map(|(a, b)| a * b).sum();
    assert!(
        (jv - vj).abs() <= 1e-4 * vj.abs().max(1.0),
        "jvp {jv} vs vjp {vj}"
    );
}
