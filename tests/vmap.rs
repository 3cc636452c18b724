//! vmap of the fused ops through MLX's C API (`mlx_detail_vmap_trace` / `mlx_detail_vmap_replace`, what
//! `mlx.core.vmap` does): add_rms_norm maps (its composed graph has vmap rules everywhere) and gives the
//! unmapped op's result; the MoE ops fail with their own tag, since MLX's gather_qmm has no vmap rule.

mod common;

use common::ffi::last_error;

use std::os::raw::{c_int, c_void};

use zmlx::array::to_f32_vec;
use zmlx::fused::{add_rms_norm, gather_qmm_combine};
use zmlx::mlx_rs::{ops, Array};
use zmlx::quant::{quantize, QuantMode};
use zmlx::sys;

fn randn(shape: &[i32], seed: u64) -> Array {
    common::randn(shape, seed, 1.0)
}

/// What the closure computes on its inputs.
type Body = Box<dyn Fn(&[Array]) -> zmlx::Result<Array>>;

unsafe extern "C" fn call_body(
    out: *mut sys::mlx_vector_array,
    inputs: sys::mlx_vector_array,
    payload: *mut c_void,
) -> c_int {
    let body = &*(payload as *const Body);
    let n = sys::mlx_vector_array_size(inputs);
    let mut args = Vec::with_capacity(n);
    for i in 0..n {
        let mut a = sys::mlx_array_new();
        if sys::mlx_vector_array_get(&mut a, inputs, i) != 0 {
            return 1;
        }
        args.push(Array::from_ptr(a));
    }
    match body(&args) {
        Ok(r) => {
            *out = sys::mlx_vector_array_new_data(&r.as_ptr(), 1);
            0
        }
        Err(e) => {
            // The message reaches the caller through the C API's error state.
            eprintln!("closure error: {e}");
            1
        }
    }
}

unsafe extern "C" fn drop_body(p: *mut c_void) {
    drop(Box::from_raw(p as *mut Body));
}

/// vmap(body, in_axes)(inputs) with outputs mapped on axis 0; Err(message) when MLX refuses.
fn vmap(body: Body, inputs: &[&Array], in_axes: &[c_int]) -> Result<Array, String> {
    unsafe {
        let cls = sys::mlx_closure_new_func_payload(
            Some(call_body),
            Box::into_raw(Box::new(body)).cast(),
            Some(drop_body),
        );
        let ptrs: Vec<sys::mlx_array> = inputs.iter().map(|a| a.as_ptr()).collect();
        let ins = sys::mlx_vector_array_new_data(ptrs.as_ptr(), ptrs.len());
        let mut s_in = sys::mlx_vector_array_new();
        let mut s_out = sys::mlx_vector_array_new();
        let mut out = sys::mlx_vector_array_new();
        let mut result = Err(String::new());
        let rc = sys::mlx_detail_vmap_trace(
            &mut s_in,
            &mut s_out,
            cls,
            ins,
            in_axes.as_ptr(),
            in_axes.len(),
        );
        if rc != 0 {
            result = Err(last_error());
        } else {
            let out_axes = [0 as c_int];
            let rc = sys::mlx_detail_vmap_replace(
                &mut out,
                ins,
                s_in,
                s_out,
                in_axes.as_ptr(),
                in_axes.len(),
                out_axes.as_ptr(),
                1,
            );
            if rc != 0 {
                result = Err(last_error());
            } else {
                let mut a = sys::mlx_array_new();
                if sys::mlx_vector_array_get(&mut a, out, 0) == 0 {
                    result = Ok(Array::from_ptr(a));
                }
            }
        }
        sys::mlx_vector_array_free(out);
        sys::mlx_vector_array_free(s_out);
        sys::mlx_vector_array_free(s_in);
        sys::mlx_vector_array_free(ins);
        sys::mlx_closure_free(cls);
        result
    }
}

#[test]
fn add_rms_norm_maps() {
    common::use_test_device();
    // x and residual mapped on axis 1 ([2, 3, 16] -> three [2, 16] problems), the weight not mapped.
    let x = randn(&[2, 3, 16], 1);
    let r = randn(&[2, 3, 16], 2);
    let w = randn(&[16], 3);
    let w2 = w.clone();
    let body: Body =
        Box::new(move |a: &[Array]| Ok(add_rms_norm(&a[0], &a[1], Some(&w2), 1e-5)?.1));
    let y = vmap(body, &[&x, &r], &[1, 1]).expect("vmap of add_rms_norm");
    assert_eq!(y.shape(), &[3, 2, 16]);
    let want = add_rms_norm(&x, &r, Some(&w), 1e-5)
        .unwrap()
        .1
        .transpose_axes(&[1, 0, 2])
        .unwrap();
    let (a, b) = (to_f32_vec(&y).unwrap(), to_f32_vec(&want).unwrap());
    let err = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(err <= 1e-5, "vmapped add_rms_norm differs by {err}");
}

#[test]
fn moe_ops_refuse_vmap_clearly() {
    common::use_test_device();
    let w = randn(&[4, 32, 64], 4);
    let down = quantize(&w, QuantMode::Affine, Some(64), Some(4)).unwrap();
    let idx = Array::from_slice(&[0u32, 2, 1, 3], &[2, 2]);
    let scores = ops::softmax_axis(randn(&[2, 2], 5), -1, None).unwrap();
    let h = randn(&[5, 2, 2, 1, 64], 6);
    let body: Body =
        Box::new(move |a: &[Array]| gather_qmm_combine(&a[0], &down, &idx, &scores, None));
    let err = vmap(body, &[&h], &[0]).expect_err("vmap through gather_qmm has no rule");
    assert!(err.contains("[gather_qmm_combine] vmap"), "{err}");
}
