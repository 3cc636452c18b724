//! mlx-rs 0.33 (unmodified, from crates.io) running on our mlx-sys through `[patch.crates-io]`:
//! arrays, operations, autodiff, compilation, safetensors I/O, and errors surfacing as `Exception`s.

mod common;

use std::collections::HashMap;

use common::{assert_close, TempDir};
use mlx_rs::error::Exception;
use mlx_rs::transforms::compile::compile;
use mlx_rs::transforms::{grad, value_and_grad};
use mlx_rs::{Array, Dtype};

/// The elements in row-major order (views such as transposes and broadcasts are copied first).
fn values(a: &Array) -> Vec<f32> {
    let dense = a.contiguous().expect("contiguous copy");
    dense.to_vec_exact::<f32>().expect("a float32 array")
}

#[test]
fn arrays_and_ops() -> Result<(), Exception> {
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let b = Array::from_slice(&[0.5f32, -1.0, 2.0, 0.0, 1.5, 3.0], &[3, 2]);
    assert_eq!(a.shape(), &[2, 3]);
    assert_eq!(a.dtype(), Dtype::Float32);

    // matmul against a hand-computed f64 reference
    let c = a.matmul(&b)?;
    assert_eq!(c.shape(), &[2, 2]);
    let (av, bv) = (values(&a), values(&b));
    let mut want = vec![0.0f64; 4];
    for i in 0..2 {
        for j in 0..2 {
            want[i * 2 + j] = (0..3)
                .map(|k| f64::from(av[i * 3 + k]) * f64::from(bv[k * 2 + j]))
                .sum();
        }
    }
    assert_close(&values(&c), &want, 1e-6);

    // elementwise, broadcasting, reductions, reshape
    let row = Array::from_slice(&[10.0f32, 20.0, 30.0], &[3]);
    let s = a.add(&row)?.multiply(Array::from_f32(0.5))?;
    let want: Vec<f64> = av
        .iter()
        .enumerate()
        .map(|(i, &x)| (f64::from(x) + [10.0, 20.0, 30.0][i % 3]) * 0.5)
        .collect();
    assert_close(&values(&s), &want, 1e-6);
    let total = a.sum(None)?;
    assert_eq!(total.item_exact::<f32>(), 21.0);
    let r = a.reshape(&[3, 2])?.transpose()?;
    assert_eq!(r.shape(), &[2, 3]);
    assert_close(&values(&r), &[1.0, 3.0, 5.0, 2.0, 4.0, 6.0], 0.0);
    Ok(())
}

#[test]
fn mlx_errors_are_exceptions() {
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3]);
    let err = a
        .reshape(&[2, 2])
        .expect_err("3 elements cannot become 2x2");
    assert!(err.what().contains("reshape"), "message: {}", err.what());
    let b = Array::from_slice(&[1.0f32, 2.0], &[2, 1]);
    let err = a
        .matmul(&b)
        .expect_err("shapes (3) and (2, 1) do not multiply");
    assert!(!err.what().is_empty());
}

#[test]
fn autodiff() -> Result<(), Exception> {
    // d/dx sum(x^2) = 2x
    let x = Array::from_slice(&[1.0f32, -2.0, 0.5], &[3]);
    let f = |x: &Array| -> Result<Array, Exception> { x.square()?.sum(None) };
    let g = grad(f)(&x)?;
    assert_close(&values(&g), &[2.0, -4.0, 1.0], 1e-6);

    // value_and_grad of sum(sin(x) * y) with respect to x (argnum 0): (value, cos(x) * y)
    let xs = [0.0f32, 0.3, 1.2];
    let ys = [1.0f32, 2.0, -1.0];
    let args = [Array::from_slice(&xs, &[3]), Array::from_slice(&ys, &[3])];
    let h = |a: &[Array]| -> Result<Vec<Array>, Exception> {
        Ok(vec![mlx_rs::ops::sin(&a[0])?.multiply(&a[1])?.sum(None)?])
    };
    let (value, grads) = value_and_grad(h)(&args)?;
    let want_value: f64 = xs
        .iter()
        .zip(&ys)
        .map(|(&x, &y)| f64::from(x).sin() * f64::from(y))
        .sum();
    assert_close(&values(&value[0]), &[want_value], 1e-6);
    let want_grad: Vec<f64> = xs
        .iter()
        .zip(&ys)
        .map(|(&x, &y)| f64::from(x).cos() * f64::from(y))
        .collect();
    assert_close(&values(&grads[0]), &want_grad, 1e-6);
    Ok(())
}

#[test]
fn callback_errors_fail_the_transform() {
    // The closure fails inside MLX's tracing: the transform returns the error, the process goes on.
    let x = [Array::from_slice(&[1.0f32, 2.0], &[2])];
    let bad = |a: &[Array]| -> Result<Vec<Array>, Exception> {
        let wrong = a[0].reshape(&[3])?; // fails: 2 elements
        Ok(vec![wrong.sum(None)?])
    };
    let err = value_and_grad(bad)(&x).expect_err("the closure's error must surface");
    assert!(err.what().contains("reshape"), "message: {}", err.what());
    // Still usable afterwards.
    let ok = |a: &[Array]| -> Result<Vec<Array>, Exception> { Ok(vec![a[0].sum(None)?]) };
    let (v, g) = value_and_grad(ok)(&x).expect("a good closure after a failing one");
    assert_eq!(v[0].item_exact::<f32>(), 3.0);
    assert_close(&values(&g[0]), &[1.0, 1.0], 0.0);
}

#[test]
fn compiled_function_matches_eager() -> Result<(), Exception> {
    let f = |a: &[Array]| -> Vec<Array> {
        let prod = a[0].multiply(&a[1]).expect("multiply");
        vec![prod.add(&a[0]).expect("add").exp().expect("exp")]
    };
    let args = [
        Array::from_slice(&[0.1f32, 0.2, -0.3, 0.4], &[2, 2]),
        Array::from_slice(&[1.0f32, -1.0, 2.0, 0.5], &[2, 2]),
    ];
    let eager = f(&args);
    let mut compiled = compile(f, None);
    let first = compiled(&args)?;
    let again = compiled(&args)?; // cached trace
    let (a, b) = (values(&args[0]), values(&args[1]));
    let want: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| (f64::from(x) * f64::from(y) + f64::from(x)).exp())
        .collect();
    assert_close(&values(&eager[0]), &want, 1e-6);
    assert_close(&values(&first[0]), &want, 1e-6);
    assert_close(&values(&again[0]), &want, 1e-6);
    Ok(())
}

#[test]
fn safetensors_round_trip() -> Result<(), Box<dyn std::error::Error>> {
    let dir = TempDir::new("safetensors");
    let path = dir.0.join("weights.safetensors");
    let w = Array::from_slice(&[1.5f32, -2.25, 3.0, 4.75, 0.0, -1.0], &[2, 3]);
    let idx = Array::from_slice(&[7i32, -8, 9], &[3]);
    let metadata = HashMap::from([("format".to_string(), "zmlx-test".to_string())]);
    Array::save_safetensors([("w", &w), ("idx", &idx)], &metadata, &path)?;
    assert!(path.is_file());

    let (loaded, meta) = Array::load_safetensors_with_metadata(&path)?;
    assert_eq!(meta.get("format").map(String::as_str), Some("zmlx-test"));
    assert_eq!(loaded.len(), 2);
    let lw = &loaded["w"];
    assert_eq!((lw.shape(), lw.dtype()), (&[2, 3][..], Dtype::Float32));
    assert_eq!(values(lw), values(&w));
    let li = &loaded["idx"];
    assert_eq!((li.shape(), li.dtype()), (&[3][..], Dtype::Int32));
    assert_eq!(li.to_vec_exact::<i32>()?, vec![7, -8, 9]);

    // A missing file is an error, not an abort.
    assert!(Array::load_safetensors(dir.0.join("absent.safetensors")).is_err());
    Ok(())
}
