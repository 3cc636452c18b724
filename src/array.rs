//! Small helpers around `mlx_rs::Array` for calling MLX's C API directly (for what mlx-rs does not expose
//! or hard-codes), plus a few array utilities used throughout the crate.

use std::ffi::CStr;

use mlx_rs::{Array, Dtype, Stream};

use crate::error::{Error, Result};

/// The last error message MLX's C API recorded on this thread.
pub(crate) fn last_mlx_error() -> String {
    // SAFETY: mlx_last_error returns a pointer to a thread-local NUL-terminated string owned by the library.
    let p = unsafe { mlx_sys::mlx_last_error() };
    if p.is_null() {
        return "unknown MLX error".to_string();
    }
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    if s.is_empty() {
        "unknown MLX error".to_string()
    } else {
        s
    }
}

/// Runs a C-API call that writes one array into `res`; turns a non-zero status into [`Error::Mlx`] (with the caller's location).
#[track_caller]
pub(crate) fn array_op(f: impl FnOnce(&mut mlx_sys::mlx_array) -> i32) -> Result<Array> {
    // SAFETY: a fresh empty handle; freed on error, owned by the returned Array otherwise.
    let mut res = unsafe { mlx_sys::mlx_array_new() };
    let rc = f(&mut res);
    if rc != 0 {
        unsafe { mlx_sys::mlx_array_free(res) };
        return Err(Error::mlx(last_mlx_error()));
    }
    if res.ctx.is_null() {
        return Err(Error::Internal(
            "an MLX operation reported success but returned no array".into(),
        ));
    }
    Ok(unsafe { Array::from_ptr(res) })
}

/// Runs a C-API call that writes two arrays (`res_0`, `res_1`); as [`array_op`].
#[track_caller]
pub(crate) fn pair_op(
    f: impl FnOnce(&mut mlx_sys::mlx_array, &mut mlx_sys::mlx_array) -> i32,
) -> Result<(Array, Array)> {
    // SAFETY: fresh empty handles; freed on error, owned by the returned Arrays otherwise.
    let (mut a, mut b) = unsafe { (mlx_sys::mlx_array_new(), mlx_sys::mlx_array_new()) };
    let rc = f(&mut a, &mut b);
    if rc != 0 || a.ctx.is_null() || b.ctx.is_null() {
        unsafe {
            mlx_sys::mlx_array_free(a);
            mlx_sys::mlx_array_free(b);
        }
        return Err(if rc != 0 {
            Error::mlx(last_mlx_error())
        } else {
            Error::Internal("an MLX operation reported success but returned no array".into())
        });
    }
    Ok(unsafe { (Array::from_ptr(a), Array::from_ptr(b)) })
}

/// Runs a C-API call that writes a vector of arrays; returns them in order.
#[track_caller]
pub(crate) fn vector_op(
    f: impl FnOnce(&mut mlx_sys::mlx_vector_array) -> i32,
) -> Result<Vec<Array>> {
    let mut res = unsafe { mlx_sys::mlx_vector_array_new() };
    let rc = f(&mut res);
    if rc != 0 {
        unsafe { mlx_sys::mlx_vector_array_free(res) };
        return Err(Error::mlx(last_mlx_error()));
    }
    let n = unsafe { mlx_sys::mlx_vector_array_size(res) };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut a = unsafe { mlx_sys::mlx_array_new() };
        let rc = unsafe { mlx_sys::mlx_vector_array_get(&mut a, res, i) };
        if rc != 0 {
            unsafe {
                mlx_sys::mlx_array_free(a);
                mlx_sys::mlx_vector_array_free(res);
            }
            return Err(Error::mlx(last_mlx_error()));
        }
        out.push(unsafe { Array::from_ptr(a) });
    }
    unsafe { mlx_sys::mlx_vector_array_free(res) };
    Ok(out)
}

/// The stream ops run on: the thread-local default set by `mlx_rs::with_stream`/`with_device`, else the
/// default device's stream.
pub(crate) fn stream() -> Stream {
    Stream::thread_local_or_default()
}

/// The empty ("absent") array handle of the C API.
pub(crate) fn none() -> mlx_sys::mlx_array {
    mlx_sys::mlx_array {
        ctx: std::ptr::null_mut(),
    }
}

/// Handle of an optional array (absent = empty handle).
pub(crate) fn opt_ptr(a: Option<&Array>) -> mlx_sys::mlx_array {
    a.map(Array::as_ptr).unwrap_or_else(none)
}

pub(crate) fn opt_int(v: Option<i32>) -> mlx_sys::mlx_optional_int {
    mlx_sys::mlx_optional_int {
        value: v.unwrap_or(0),
        has_value: v.is_some(),
    }
}

pub(crate) fn opt_dtype(d: Option<Dtype>) -> mlx_sys::mlx_optional_dtype {
    mlx_sys::mlx_optional_dtype {
        value: d.unwrap_or(Dtype::Float32).into(),
        has_value: d.is_some(),
    }
}

/// `a[..., start:stop, ...]` along one axis (negative axis counts from the end; bounds are clamped).
#[track_caller]
pub fn slice_axis(a: &Array, axis: i32, start: i32, stop: i32) -> Result<Array> {
    let nd = a.ndim() as i32;
    let ax = if axis < 0 { axis + nd } else { axis };
    if ax < 0 || ax >= nd {
        return Err(Error::invalid(format!(
            "slice axis {axis} out of range for {nd}-d array"
        )));
    }
    let shape = a.shape();
    let mut starts = vec![0i32; nd as usize];
    let mut stops: Vec<i32> = shape.to_vec();
    let len = shape[ax as usize];
    starts[ax as usize] = start.clamp(0, len);
    stops[ax as usize] = stop.clamp(starts[ax as usize], len);
    let strides = vec![1i32; nd as usize];
    let s = stream();
    array_op(|res| unsafe {
        mlx_sys::mlx_slice(
            res,
            a.as_ptr(),
            starts.as_ptr(),
            starts.len(),
            stops.as_ptr(),
            stops.len(),
            strides.as_ptr(),
            strides.len(),
            s.as_ptr(),
        )
    })
}

/// Evaluates `a` as float32 and copies it out (any float or integer dtype).
pub fn to_f32_vec(a: &Array) -> Result<Vec<f32>> {
    let f = if a.dtype() == Dtype::Float32 {
        a.contiguous()?
    } else {
        a.as_dtype(Dtype::Float32)?.contiguous()?
    };
    f.eval()?;
    Ok(f.try_as_slice::<f32>()
        .map_err(|e| Error::Conversion(e.to_string()))?
        .to_vec())
}

/// Evaluates `a` as uint32 and copies it out.
pub fn to_u32_vec(a: &Array) -> Result<Vec<u32>> {
    let f = if a.dtype() == Dtype::Uint32 {
        a.contiguous()?
    } else {
        a.as_dtype(Dtype::Uint32)?.contiguous()?
    };
    f.eval()?;
    Ok(f.try_as_slice::<u32>()
        .map_err(|e| Error::Conversion(e.to_string()))?
        .to_vec())
}

/// Whether a dtype is a floating-point type.
pub fn is_float(d: Dtype) -> bool {
    matches!(
        d,
        Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float32 | Dtype::Float64
    )
}

/// Parses `float32|float16|bfloat16` (and common short forms).
pub fn parse_dtype(name: &str) -> Result<Dtype> {
    match name.to_ascii_lowercase().as_str() {
        "float32" | "f32" | "fp32" => Ok(Dtype::Float32),
        "float16" | "f16" | "fp16" | "half" => Ok(Dtype::Float16),
        "bfloat16" | "bf16" => Ok(Dtype::Bfloat16),
        other => Err(Error::invalid(format!(
            "unknown float dtype '{other}' (expected float32, float16 or bfloat16)"
        ))),
    }
}

/// The canonical name of a float dtype (as in config.json's `torch_dtype`).
pub fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::Float32 => "float32",
        Dtype::Float16 => "float16",
        Dtype::Bfloat16 => "bfloat16",
        Dtype::Float64 => "float64",
        Dtype::Uint8 => "uint8",
        Dtype::Uint32 => "uint32",
        Dtype::Int32 => "int32",
        _ => "other",
    }
}
