//! Helpers shared by the C API tests (raw FFI to our mlx-sys).
#![allow(dead_code)]

use std::ffi::{c_int, CStr, CString};
use std::path::PathBuf;

use mlx_sys as sys;

pub fn last_error() -> String {
    unsafe { CStr::from_ptr(sys::mlx_last_error()) }
        .to_string_lossy()
        .into_owned()
}

pub fn check(rc: i32, what: &str) {
    assert_eq!(rc, 0, "{what} failed: {}", last_error());
}

pub fn stream() -> sys::mlx_stream {
    unsafe { sys::mlx_default_cpu_stream_new() }
}

/// Owned array handle.
pub struct Arr(pub sys::mlx_array);

impl Drop for Arr {
    fn drop(&mut self) {
        unsafe { sys::mlx_array_free(self.0) };
    }
}

impl Arr {
    pub fn empty() -> Arr {
        Arr(unsafe { sys::mlx_array_new() })
    }
    pub fn f32(data: &[f32], shape: &[i32]) -> Arr {
        let a = unsafe {
            sys::mlx_array_new_data(
                data.as_ptr().cast(),
                shape.as_ptr(),
                shape.len() as i32,
                sys::mlx_dtype__MLX_FLOAT32,
            )
        };
        assert!(!a.ctx.is_null(), "{}", last_error());
        Arr(a)
    }
    /// Elements in row-major order, as float32.
    pub fn values(&self) -> Vec<f32> {
        unsafe {
            let s = stream();
            let mut f = Arr::empty();
            check(
                sys::mlx_astype(&mut f.0, self.0, sys::mlx_dtype__MLX_FLOAT32, s),
                "astype",
            );
            let mut c = Arr::empty();
            check(sys::mlx_contiguous(&mut c.0, f.0, false, s), "contiguous");
            sys::mlx_stream_free(s);
            check(sys::mlx_array_eval(c.0), "eval");
            let p = sys::mlx_array_data_float32(c.0);
            assert!(!p.is_null(), "{}", last_error());
            std::slice::from_raw_parts(p, sys::mlx_array_size(c.0)).to_vec()
        }
    }
}

/// Owned vector-of-arrays handle.
pub struct Vec_(pub sys::mlx_vector_array);

impl Drop for Vec_ {
    fn drop(&mut self) {
        unsafe { sys::mlx_vector_array_free(self.0) };
    }
}

impl Vec_ {
    pub fn of(arrays: &[&Arr]) -> Vec_ {
        let raw: Vec<sys::mlx_array> = arrays.iter().map(|a| a.0).collect();
        Vec_(unsafe { sys::mlx_vector_array_new_data(raw.as_ptr(), raw.len()) })
    }
    pub fn new() -> Vec_ {
        Vec_(unsafe { sys::mlx_vector_array_new() })
    }
    pub fn get(&self, i: usize) -> Arr {
        let mut a = Arr::empty();
        check(
            unsafe { sys::mlx_vector_array_get(&mut a.0, self.0, i) },
            "vector get",
        );
        a
    }
    pub fn len(&self) -> usize {
        unsafe { sys::mlx_vector_array_size(self.0) }
    }
}

pub fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}

pub fn temp_path(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("zmlx-capi-{}-{nanos}-{name}", std::process::id()))
}

pub fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

/// A one-input closure callback: res = x * x.
pub unsafe extern "C" fn square_unary(res: *mut sys::mlx_array, x: sys::mlx_array) -> c_int {
    let s = sys::mlx_default_cpu_stream_new();
    let rc = sys::mlx_square(res, x, s);
    sys::mlx_stream_free(s);
    rc
}

/// A kwargs closure callback: out = [args[0] + kwargs["bias"]].
pub unsafe extern "C" fn kwargs_cb(
    res: *mut sys::mlx_vector_array,
    args: sys::mlx_vector_array,
    kwargs: sys::mlx_map_string_to_array,
) -> c_int {
    // out = [args[0] + kwargs["bias"]]
    let mut x = sys::mlx_array_new();
    let mut b = sys::mlx_array_new();
    let key = b"bias\0";
    if sys::mlx_vector_array_get(&mut x, args, 0) != 0
        || sys::mlx_map_string_to_array_get(&mut b, kwargs, key.as_ptr().cast()) != 0
    {
        return 1;
    }
    let mut y = sys::mlx_array_new();
    let s = sys::mlx_default_cpu_stream_new();
    let rc = sys::mlx_add(&mut y, x, b, s) | sys::mlx_vector_array_set_value(res, y);
    for a in [x, b, y] {
        sys::mlx_array_free(a);
    }
    sys::mlx_stream_free(s);
    rc
}
