//! Hostile inputs that used to crash (a signal, an abort, a panic) and must be errors: configs with zero or
//! absurd sizes, zero-size quantized weights, C API array shapes whose byte size overflows. (The hang under
//! repeated bad indices is tests/fused_ops.rs `bad_indices_never_wedge_the_stream`.)

use mlx_sys as sys;
use zmlx::mlx_rs::{Array, Dtype};
use zmlx::models::{self, qwen3_moe};
use zmlx::quant::{quantize, quantized_matmul, QuantMode, QuantizedWeight};

fn tiny_config() -> serde_json::Value {
    qwen3_moe::config_json(64, 2, 4, 2, 16, 4, 2, 32, 128, "bfloat16")
}

fn config_error(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut c = tiny_config();
    edit(&mut c);
    match models::ModelConfig::from_json(&c) {
        Ok(_) => panic!("config accepted: {c}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_sizes_are_checked_before_anything_is_allocated() {
    assert!(models::ModelConfig::from_json(&tiny_config()).is_ok());
    // A division by zero before.
    let e = config_error(|c| c["num_key_value_heads"] = 0.into());
    assert!(e.contains("num_key_value_heads"), "{e}");
    // Zero-size dense MLP weights (SIGFPE in the quantized matmul before).
    let e = config_error(|c| {
        c["intermediate_size"] = 0.into();
        c["mlp_only_layers"] = serde_json::json!([0]);
    });
    assert!(e.contains("intermediate_size"), "{e}");
    // A 608 GB allocation before any tensor was read.
    let e = config_error(|c| c["num_hidden_layers"] = 1_000_000_000.into());
    assert!(e.contains("num_hidden_layers") && e.contains("4096"), "{e}");
    for (field, value) in [
        ("hidden_size", 1 << 30),
        ("vocab_size", 1 << 30),
        ("num_attention_heads", 1 << 20),
        ("head_dim", 0),
    ] {
        let e = config_error(|c| c[field] = value.into());
        assert!(e.contains(field), "{field}: {e}");
    }
}

#[test]
fn zero_size_quantized_weights_are_errors() {
    let w = Array::zeros::<f32>(&[0, 64]).unwrap();
    let e = quantize(&w, QuantMode::Affine, Some(64), Some(4)).unwrap_err();
    assert!(e.to_string().contains("non-empty"), "{e}");
    let packed = Array::zeros::<u32>(&[0, 8]).unwrap();
    let scales = Array::zeros::<f32>(&[0, 1]).unwrap();
    let biases = Array::zeros::<f32>(&[0, 1]).unwrap();
    let e =
        QuantizedWeight::new(packed, scales, Some(biases), QuantMode::Affine, 64, 4).unwrap_err();
    assert!(e.to_string().contains("zero dimension"), "{e}");
    // A weight assembled field by field reaches quantized_matmul's own check.
    let ok = quantize(
        &Array::ones::<f32>(&[4, 64]).unwrap(),
        QuantMode::Affine,
        Some(64),
        Some(4),
    )
    .unwrap();
    let empty = QuantizedWeight {
        w: Array::zeros::<u32>(&[0, 8]).unwrap(),
        scales: Array::zeros::<f32>(&[0, 1]).unwrap(),
        biases: Some(Array::zeros::<f32>(&[0, 1]).unwrap()),
        ..ok
    };
    let x = Array::ones::<f32>(&[1, 64])
        .unwrap()
        .as_dtype(Dtype::Float32)
        .unwrap();
    let e = quantized_matmul(&x, &empty, true).unwrap_err();
    assert!(e.to_string().contains("zero dimension"), "{e}");
}

fn last_error() -> String {
    unsafe { std::ffi::CStr::from_ptr(sys::mlx_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn c_api_array_shapes_that_overflow_or_are_negative_are_errors() {
    let data = [1.0f32; 4];
    // 2^64 elements: the element count overflows (it wrapped to 0 before: a 0-byte array of that shape).
    let huge = [65536, 65536, 65536, 65536];
    let a = unsafe {
        sys::mlx_array_new_data(
            data.as_ptr().cast(),
            huge.as_ptr(),
            4,
            sys::mlx_dtype__MLX_FLOAT32,
        )
    };
    assert!(a.ctx.is_null(), "an overflowing shape was accepted");
    assert!(last_error().contains("overflows"), "{}", last_error());
    // 2^62 elements of 4 bytes: the byte size overflows.
    let big = [1 << 30, 1 << 30, 4];
    let a = unsafe {
        sys::mlx_array_new_data(
            data.as_ptr().cast(),
            big.as_ptr(),
            3,
            sys::mlx_dtype__MLX_FLOAT32,
        )
    };
    assert!(a.ctx.is_null());
    assert!(last_error().contains("overflows"), "{}", last_error());
    // Managed data with a negative dimension.
    let mut owned = vec![1.0f32; 4];
    let neg = [2, -2];
    let a = unsafe {
        sys::mlx_array_new_data_managed(
            owned.as_mut_ptr().cast(),
            neg.as_ptr(),
            2,
            sys::mlx_dtype__MLX_FLOAT32,
            None,
        )
    };
    assert!(a.ctx.is_null(), "a negative dimension was accepted");
    assert!(last_error().contains("negative"), "{}", last_error());
    // A good shape still works.
    let ok = [2, 2];
    let a = unsafe {
        sys::mlx_array_new_data(
            data.as_ptr().cast(),
            ok.as_ptr(),
            2,
            sys::mlx_dtype__MLX_FLOAT32,
        )
    };
    assert!(!a.ctx.is_null(), "{}", last_error());
    unsafe { sys::mlx_array_free(a) };
}
