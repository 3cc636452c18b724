//! Helpers for tests that call the C API through raw FFI: owning wrappers that free MLX handles on drop,
//! array constructors and readers, and the temp-path helpers. mlx-sys's own tests include it with
//! `mod common;`; the zmlx crate's tests reach it as `common::ffi` (tests/common/mod.rs), so the
//! wrappers exist once.
#![allow(dead_code)]

use std::ffi::{c_int, c_void, CStr, CString};
use std::path::PathBuf;

use mlx_sys as sys;

// --- errors ---------------------------------------------------------------------------------------------

/// The message of the last failed C API call.
pub fn last_error() -> String {
    unsafe { CStr::from_ptr(sys::mlx_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Panics with the C API's message unless `rc` is 0.
pub fn check(rc: c_int, what: &str) {
    assert_eq!(rc, 0, "{what} failed: {}", last_error());
}

// --- owned handles --------------------------------------------------------------------------------------

/// Owned array handle, freed on drop (the empty handle, `ctx == NULL`, is left alone).
pub struct Arr(pub sys::mlx_array);

impl Drop for Arr {
    fn drop(&mut self) {
        if !self.0.ctx.is_null() {
            unsafe { sys::mlx_array_free(self.0) };
        }
    }
}

impl Arr {
    /// A new empty array handle, for an op's result out-parameter.
    pub fn empty() -> Arr {
        Arr(unsafe { sys::mlx_array_new() })
    }

    /// Elements in row-major order, as float32, evaluated on the CPU.
    pub fn values(&self) -> Vec<f32> {
        read(self, &Stream::cpu()).unwrap_or_else(|e| panic!("reading an array: {e}"))
    }
}

/// Owned stream handle, freed on drop.
pub struct Stream(pub sys::mlx_stream);

impl Drop for Stream {
    fn drop(&mut self) {
        unsafe { sys::mlx_stream_free(self.0) };
    }
}

impl Stream {
    /// The default CPU stream.
    pub fn cpu() -> Stream {
        Stream(unsafe { sys::mlx_default_cpu_stream_new() })
    }

    /// The default GPU stream.
    pub fn gpu() -> Stream {
        Stream(unsafe { sys::mlx_default_gpu_stream_new() })
    }
}

/// A raw default CPU stream handle that the caller frees (the C API tests free their handles by hand,
/// as mlx-c's users do).
pub fn stream() -> sys::mlx_stream {
    unsafe { sys::mlx_default_cpu_stream_new() }
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

// --- optional arguments ---------------------------------------------------------------------------------

/// The empty array handle: an absent optional array argument.
pub fn none() -> sys::mlx_array {
    sys::mlx_array {
        ctx: std::ptr::null_mut(),
    }
}

/// The handle of an optional owned array (the empty handle for `None`).
pub fn opt(a: &Option<Arr>) -> sys::mlx_array {
    a.as_ref().map_or_else(none, |a| a.0)
}

pub fn oi(v: Option<i32>) -> sys::mlx_optional_int {
    sys::mlx_optional_int {
        value: v.unwrap_or(0),
        has_value: v.is_some(),
    }
}

pub fn of(v: Option<f32>) -> sys::mlx_optional_float {
    sys::mlx_optional_float {
        value: v.unwrap_or(0.0),
        has_value: v.is_some(),
    }
}

// --- arrays ---------------------------------------------------------------------------------------------

/// A new array of `dtype` holding a copy of `data` (its elements must be of that dtype).
pub fn new_arr<T>(data: &[T], shape: &[i32], dtype: sys::mlx_dtype) -> Arr {
    let n: i64 = shape.iter().map(|&d| d as i64).product();
    assert_eq!(n as usize, data.len(), "data/shape mismatch");
    let a = unsafe {
        sys::mlx_array_new_data(
            data.as_ptr().cast::<c_void>(),
            shape.as_ptr(),
            shape.len() as c_int,
            dtype,
        )
    };
    assert!(!a.ctx.is_null(), "mlx_array_new_data: {}", last_error());
    Arr(a)
}

pub fn f32s(data: &[f32], shape: &[i32]) -> Arr {
    new_arr(data, shape, sys::mlx_dtype__MLX_FLOAT32)
}

pub fn u32s(data: &[u32], shape: &[i32]) -> Arr {
    new_arr(data, shape, sys::mlx_dtype__MLX_UINT32)
}

pub fn i32s(data: &[i32], shape: &[i32]) -> Arr {
    new_arr(data, shape, sys::mlx_dtype__MLX_INT32)
}

pub fn shape_of(a: &Arr) -> Vec<i32> {
    unsafe {
        let n = sys::mlx_array_ndim(a.0);
        std::slice::from_raw_parts(sys::mlx_array_shape(a.0), n).to_vec()
    }
}

pub fn dtype_of(a: &Arr) -> sys::mlx_dtype {
    unsafe { sys::mlx_array_dtype(a.0) }
}

pub fn astype(a: &Arr, t: sys::mlx_dtype, s: &Stream) -> Arr {
    let mut r = Arr::empty();
    check(unsafe { sys::mlx_astype(&mut r.0, a.0, t, s.0) }, "astype");
    r
}

/// Evaluates `a`; the C API's message on failure.
pub fn eval(a: &Arr) -> Result<(), String> {
    if unsafe { sys::mlx_array_eval(a.0) } != 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

/// Evaluates `a` on `s` and returns its elements in row-major order as float32 (exact for every float
/// dtype); the C API's message on failure.
pub fn read(a: &Arr, s: &Stream) -> Result<Vec<f32>, String> {
    let f = astype(a, sys::mlx_dtype__MLX_FLOAT32, s);
    // Row-major whatever the layout of `a` (a transposed float32 array comes out of astype unchanged).
    let mut c = Arr::empty();
    if unsafe { sys::mlx_contiguous(&mut c.0, f.0, false, s.0) } != 0 {
        return Err(last_error());
    }
    eval(&c)?;
    unsafe {
        let n = sys::mlx_array_size(c.0);
        let p = sys::mlx_array_data_float32(c.0);
        if p.is_null() {
            return Err(last_error());
        }
        Ok(std::slice::from_raw_parts(p, n).to_vec())
    }
}

/// Every element of `got` within `tol * (1 + |want|)` of `want`.
pub fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}

// --- fuzzing --------------------------------------------------------------------------------------------

/// The fuzz harnesses' generator (xorshift64: small, fast, and a seed replays a run exactly).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `0..n` (0 for n = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability 1/n.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// Time per fuzz harness: `ZMLX_FUZZ_SECS` (default 3, what CI runs).
pub fn fuzz_budget() -> std::time::Duration {
    let s = std::env::var("ZMLX_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(3.0);
    std::time::Duration::from_secs_f64(s.max(0.0))
}

/// A harness's run seed, which it prints: `ZMLX_FUZZ_SEED` (a printed seed, to replay that run) or the
/// clock mixed with the harness's `salt`, so that the harnesses of one run differ. Never 0 (xorshift's
/// fixed point).
pub fn fuzz_seed(name: &str, salt: u64) -> u64 {
    let s = std::env::var("ZMLX_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok());
    let seed = s.unwrap_or_else(|| {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        clock ^ salt
    }) | 1;
    // Straight to the process's stderr, past the test harness's output capture: a run that dies of a
    // signal still shows how to replay it.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{name}: ZMLX_FUZZ_SEED={seed}");
    seed
}

/// The seed of case `i` of a run: each case has its own generator, so one case replays alone (the
/// corpora keep such case seeds).
pub fn case_seed(run: u64, i: u64) -> u64 {
    let mut r = Rng((run ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
    r.next();
    r.next() | 1
}

/// The case seeds of a corpus file: one number a line; `#` starts a comment.
pub fn corpus_seeds(path: &std::path::Path) -> Vec<u64> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("corpus {}: {e}", path.display()));
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse()
                .unwrap_or_else(|_| panic!("corpus {}: not a seed: {l}", path.display()))
        })
        .collect()
}

/// An error message with its numbers (and lists of numbers: shapes) replaced by `#`: the class of error
/// a case reached (the harnesses count distinct classes, and `ZMLX_FUZZ_NEW_CORPUS` prints case seeds
/// that reach the classes the corpus does not).
pub fn error_class(msg: &str) -> String {
    let mut out = String::new();
    for c in msg.chars() {
        if c.is_ascii_digit() || (c == '-' && !out.ends_with('#')) {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else if (c == ',' || c == ' ') && out.ends_with('#') {
            // Inside a list of numbers: dropped with the numbers unless the list ends here.
            out.push(c);
        } else {
            if c == ')' || c == ']' {
                while out.ends_with(',') || out.ends_with(' ') {
                    out.pop();
                }
            }
            out.push(c);
        }
        // "#, #" and "#,#" collapse to "#".
        for pat in ["#, #", "#,#"] {
            if out.ends_with(pat) {
                out.truncate(out.len() - pat.len());
                out.push('#');
            }
        }
    }
    out
}

// --- files ----------------------------------------------------------------------------------------------

/// A name no other test process or call uses: `zmlx-<tag>-<pid>-<nanoseconds>`.
fn unique_name(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("zmlx-{tag}-{}-{nanos}", std::process::id())
}

/// A fresh path under the system temp dir that ends in `name` (nothing is created; the caller removes
/// what it writes).
pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", unique_name("capi")))
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

// --- closure callbacks ----------------------------------------------------------------------------------

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
