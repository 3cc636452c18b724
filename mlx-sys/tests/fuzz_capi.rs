//! Random programs of C API calls on small arrays, each checked to end in values or error statuses —
//! never a signal, an abort or a hang — and to free every handle it creates: arrays made from data of
//! every dtype (random bytes: NaN, infinities, any integer), scalars and factory ops with hostile
//! arguments; unary, binary, reduction, shape, slice, index, quantization, matrix and type ops with
//! random (often invalid) axes, shapes, dtypes, modes and empty handles; results written into fresh or
//! reused (even aliased) handles; evaluation, item and data reads; copies with `mlx_array_set`; strings,
//! vectors and maps. Structural ops (reshape, transpose, slice, take, copies) are checked against their
//! values computed here.
//!
//! `ZMLX_FUZZ_SECS` (default 3) is the time spent on random programs after the corpus
//! (`tests/fuzz-corpus/capi.seeds`: program seeds that reached distinct errors or once crashed) has
//! replayed; `ZMLX_FUZZ_SEED` replays a run (its seed is printed), `ZMLX_FUZZ_CASE` runs one program.
//! `ZMLX_FUZZ_NEW_CORPUS=1` prints program seeds that together reach the error classes the corpus does
//! not; `ZMLX_FUZZ_VERBOSE=1` prints each program's seed as it starts, `ZMLX_FUZZ_TRACE=1` each call.
//!
//! Not fuzzed, because the C API's contract leaves them to the caller as MLX and mlx-c do: index
//! *values* of take/gather (MLX reads without a bounds check; the indices drawn here are in range),
//! data buffers shorter than the shape says, map iterators used after their map changed, and the size
//! of what a valid call asks for (a 64 GB array, a split into 2^31 parts): results over MAX_ELEMS are
//! freed unevaluated.

mod common;

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    case_seed, check, corpus_seeds, error_class, f32s, fuzz_budget, fuzz_seed, i32s, last_error,
    new_arr, none, of, oi, Arr, Rng, Stream,
};
use mlx_sys as sys;

/// Arrays kept for further calls have at most this many elements (a result over it, or whose element
/// count overflows, is checked and freed at once without evaluation): every op then works on small
/// inputs, so no call can legitimately run long.
const MAX_ELEMS: u64 = 4096;

// dtype codes of mlx-c, and their sizes.
const DTYPES: [(u32, usize); 14] = [
    (sys::mlx_dtype__MLX_BOOL, 1),
    (sys::mlx_dtype__MLX_UINT8, 1),
    (sys::mlx_dtype__MLX_UINT16, 2),
    (sys::mlx_dtype__MLX_UINT32, 4),
    (sys::mlx_dtype__MLX_UINT64, 8),
    (sys::mlx_dtype__MLX_INT8, 1),
    (sys::mlx_dtype__MLX_INT16, 2),
    (sys::mlx_dtype__MLX_INT32, 4),
    (sys::mlx_dtype__MLX_INT64, 8),
    (sys::mlx_dtype__MLX_FLOAT16, 2),
    (sys::mlx_dtype__MLX_FLOAT32, 4),
    (sys::mlx_dtype__MLX_FLOAT64, 8),
    (sys::mlx_dtype__MLX_BFLOAT16, 2),
    (sys::mlx_dtype__MLX_COMPLEX64, 8),
];

/// Handle kinds the programs create, for the free-everything check.
#[derive(Clone, Copy)]
enum Kind {
    Array,
    String,
    VecArray,
    VecInt,
    VecString,
    MapArray,
    MapString,
    Iterator,
    Stream,
}
const KINDS: usize = 9;

type Unary = unsafe extern "C" fn(*mut sys::mlx_array, sys::mlx_array, sys::mlx_stream) -> c_int;
type Binary = unsafe extern "C" fn(
    *mut sys::mlx_array,
    sys::mlx_array,
    sys::mlx_array,
    sys::mlx_stream,
) -> c_int;
type Reduce = unsafe extern "C" fn(
    *mut sys::mlx_array,
    sys::mlx_array,
    *const c_int,
    usize,
    bool,
    sys::mlx_stream,
) -> c_int;

const UNARY: &[(&str, Unary)] = &[
    ("abs", sys::mlx_abs),
    ("arccos", sys::mlx_arccos),
    ("arccosh", sys::mlx_arccosh),
    ("arcsin", sys::mlx_arcsin),
    ("arctanh", sys::mlx_arctanh),
    ("bitwise_invert", sys::mlx_bitwise_invert),
    ("ceil", sys::mlx_ceil),
    ("conjugate", sys::mlx_conjugate),
    ("cos", sys::mlx_cos),
    ("erf", sys::mlx_erf),
    ("erfinv", sys::mlx_erfinv),
    ("exp", sys::mlx_exp),
    ("expm1", sys::mlx_expm1),
    ("floor", sys::mlx_floor),
    ("imag", sys::mlx_imag),
    ("isfinite", sys::mlx_isfinite),
    ("isnan", sys::mlx_isnan),
    ("isneginf", sys::mlx_isneginf),
    ("log", sys::mlx_log),
    ("log1p", sys::mlx_log1p),
    ("logical_not", sys::mlx_logical_not),
    ("negative", sys::mlx_negative),
    ("real", sys::mlx_real),
    ("reciprocal", sys::mlx_reciprocal),
    ("rsqrt", sys::mlx_rsqrt),
    ("sigmoid", sys::mlx_sigmoid),
    ("sign", sys::mlx_sign),
    ("sin", sys::mlx_sin),
    ("sqrt", sys::mlx_sqrt),
    ("square", sys::mlx_square),
    ("stop_gradient", sys::mlx_stop_gradient),
    ("tanh", sys::mlx_tanh),
    ("trunc", sys::mlx_trunc),
    ("atleast_3d", sys::mlx_atleast_3d),
    ("transpose", sys::mlx_transpose),
    ("squeeze", sys::mlx_squeeze),
    ("sort", sys::mlx_sort),
    ("argsort", sys::mlx_argsort),
    ("to_fp8", sys::mlx_to_fp8),
    ("zeros_like", sys::mlx_zeros_like),
    ("hadamard_transform", hadamard),
];

unsafe extern "C" fn hadamard(
    r: *mut sys::mlx_array,
    a: sys::mlx_array,
    s: sys::mlx_stream,
) -> c_int {
    sys::mlx_hadamard_transform(r, a, of(None), s)
}

const BINARY: &[(&str, Binary)] = &[
    ("add", sys::mlx_add),
    ("subtract", sys::mlx_subtract),
    ("multiply", sys::mlx_multiply),
    ("divide", sys::mlx_divide),
    ("power", sys::mlx_power),
    ("maximum", sys::mlx_maximum),
    ("minimum", sys::mlx_minimum),
    ("equal", sys::mlx_equal),
    ("greater", sys::mlx_greater),
    ("less_equal", sys::mlx_less_equal),
    ("logical_and", sys::mlx_logical_and),
    ("logical_or", sys::mlx_logical_or),
    ("bitwise_and", sys::mlx_bitwise_and),
    ("bitwise_xor", sys::mlx_bitwise_xor),
    ("left_shift", sys::mlx_left_shift),
    ("right_shift", sys::mlx_right_shift),
    ("remainder", sys::mlx_remainder),
    ("floor_divide", sys::mlx_floor_divide),
    ("arctan2", sys::mlx_arctan2),
    ("logaddexp", sys::mlx_logaddexp),
    ("matmul", sys::mlx_matmul),
    ("inner", sys::mlx_inner),
    ("outer", sys::mlx_outer),
    ("kron", sys::mlx_kron),
];

const REDUCE: &[(&str, Reduce)] = &[
    ("sum_axes", sys::mlx_sum_axes),
    ("mean_axes", sys::mlx_mean_axes),
    ("max_axes", sys::mlx_max_axes),
    ("min_axes", sys::mlx_min_axes),
    ("prod_axes", sys::mlx_prod_axes),
    ("all_axes", sys::mlx_all_axes),
    ("any_axes", sys::mlx_any_axes),
    ("logsumexp_axes", sys::mlx_logsumexp_axes),
    ("count_nonzero_axes", sys::mlx_count_nonzero_axes),
    ("median_axes", sys::mlx_median_axes),
];

/// Row-major values of an int32 or float32 array as raw bits, where the program knows them: structural
/// ops must move exactly these bits.
#[derive(Clone)]
struct Shadow {
    shape: Vec<i32>,
    bits: Vec<u32>,
}

impl Shadow {
    fn strides(&self) -> Vec<usize> {
        let mut st = vec![1usize; self.shape.len()];
        for i in (0..self.shape.len().saturating_sub(1)).rev() {
            st[i] = st[i + 1] * self.shape[i + 1] as usize;
        }
        st
    }
}

struct Entry {
    a: sys::mlx_array,
    shadow: Option<Shadow>,
}

/// What a run did.
#[derive(Default)]
struct Stats {
    programs: u64,
    calls: u64,
    errors: u64,
    evals: u64,
    values_checked: u64,
    /// Error class -> (count, first program seed).
    classes: BTreeMap<String, (u64, u64)>,
    /// With `ZMLX_FUZZ_NEW_CORPUS`: the classes of each program that was first to reach one.
    firsts: Vec<(u64, Vec<String>)>,
    keep_firsts: bool,
}

/// Elements of a shape, `None` if a dimension is negative or the count overflows.
fn numel(shape: &[i32]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| {
        u64::try_from(d).ok().and_then(|d| n.checked_mul(d))
    })
}

fn shape_of(a: sys::mlx_array) -> Vec<i32> {
    unsafe {
        let n = sys::mlx_array_ndim(a);
        let p = sys::mlx_array_shape(a);
        if p.is_null() || n == 0 {
            return vec![];
        }
        std::slice::from_raw_parts(p, n).to_vec()
    }
}

fn dtype_of(a: sys::mlx_array) -> u32 {
    unsafe { sys::mlx_array_dtype(a) }
}

struct Program<'a> {
    r: Rng,
    seed: u64,
    s: sys::mlx_stream,
    arrays: Vec<Entry>,
    strings: Vec<sys::mlx_string>,
    vecs: Vec<sys::mlx_vector_array>,
    vints: Vec<sys::mlx_vector_int>,
    vstrs: Vec<sys::mlx_vector_string>,
    maps: Vec<sys::mlx_map_string_to_array>,
    smaps: Vec<sys::mlx_map_string_to_string>,
    made: [u64; KINDS],
    freed: [u64; KINDS],
    stats: &'a mut Stats,
    /// `ZMLX_FUZZ_TRACE`: print every call and its outcome (`=sync`: and wait for the stream after each
    /// step, which shows the step that started slow work).
    trace: bool,
    t0: Instant,
    /// The error classes this program reached, and whether one of them was new to the run.
    seen: std::collections::BTreeSet<String>,
    new_class: bool,
}

impl<'a> Program<'a> {
    fn new(seed: u64, stats: &'a mut Stats) -> Self {
        let mut p = Program {
            r: Rng(seed),
            seed,
            s: unsafe { sys::mlx_default_cpu_stream_new() },
            arrays: vec![],
            strings: vec![],
            vecs: vec![],
            vints: vec![],
            vstrs: vec![],
            maps: vec![],
            smaps: vec![],
            made: [0; KINDS],
            freed: [0; KINDS],
            stats,
            trace: std::env::var("ZMLX_FUZZ_TRACE").is_ok(),
            t0: Instant::now(),
            seen: Default::default(),
            new_class: false,
        };
        p.made[Kind::Stream as usize] += 1;
        p
    }

    /// Records a call's status; an error's class is counted.
    fn status(&mut self, rc: c_int, what: &str) -> bool {
        self.stats.calls += 1;
        if self.trace {
            let outcome = if rc == 0 { "ok".into() } else { last_error() };
            eprintln!(
                "  {:>8.3} s {what}: {outcome}",
                self.t0.elapsed().as_secs_f64()
            );
        }
        if rc == 0 {
            return true;
        }
        self.stats.errors += 1;
        let class = format!("{what}: {}", error_class(&last_error()));
        if !self.stats.classes.contains_key(&class) {
            self.new_class = true;
        }
        self.seen.insert(class.clone());
        let e = self.stats.classes.entry(class).or_insert((0, self.seed));
        e.0 += 1;
        false
    }

    /// The stream for a call: mostly the CPU stream, sometimes the empty handle (the default stream).
    fn stream(&mut self) -> sys::mlx_stream {
        if self.r.one_in(20) {
            sys::mlx_stream {
                ctx: std::ptr::null_mut(),
            }
        } else {
            self.s
        }
    }

    // --- arrays ---------------------------------------------------------------------------------------

    /// A random pool array, sometimes the empty handle.
    fn arg(&mut self) -> sys::mlx_array {
        if self.arrays.is_empty() || self.r.one_in(40) {
            return sys::mlx_array {
                ctx: std::ptr::null_mut(),
            };
        }
        let i = self.r.below(self.arrays.len() as u64) as usize;
        if self.trace {
            let a = self.arrays[i].a;
            eprintln!("    arg pool[{i}] {:?} dtype {}", shape_of(a), dtype_of(a));
        }
        self.arrays[i].a
    }

    fn arg_index(&mut self) -> Option<usize> {
        if self.arrays.is_empty() {
            None
        } else {
            let i = self.r.below(self.arrays.len() as u64) as usize;
            if self.trace {
                let a = self.arrays[i].a;
                eprintln!("    arg pool[{i}] {:?} dtype {}", shape_of(a), dtype_of(a));
            }
            Some(i)
        }
    }

    /// The result handle of a call: a fresh empty one, or (1 in 8) an existing pool array, which the
    /// call overwrites on success and must leave alone on failure.
    fn result(&mut self) -> (sys::mlx_array, Option<usize>) {
        if !self.arrays.is_empty() && self.r.one_in(8) {
            let i = self.r.below(self.arrays.len() as u64) as usize;
            (self.arrays[i].a, Some(i))
        } else {
            (unsafe { sys::mlx_array_new() }, None)
        }
    }

    /// Takes a call's result into the pool (or frees it when it is too large to keep).
    fn take_result(
        &mut self,
        ok: bool,
        res: sys::mlx_array,
        reused: Option<usize>,
        shadow: Option<Shadow>,
        what: &str,
    ) {
        match reused {
            Some(i) => {
                assert_eq!(
                    res.ctx, self.arrays[i].a.ctx,
                    "{what}: the result handle changed (seed {})",
                    self.seed
                );
                if self.trace && ok {
                    eprintln!(
                        "    -> pool[{i}] {:?} dtype {}",
                        shape_of(res),
                        dtype_of(res)
                    );
                }
                if ok {
                    self.arrays[i].shadow = shadow;
                    self.check_meta(res, what);
                    if !self.small(res) {
                        let e = self.arrays.swap_remove(i);
                        self.free_array(e.a);
                    }
                }
            }
            None => {
                if !ok {
                    assert!(
                        res.ctx.is_null(),
                        "{what}: failed but filled its result handle (seed {})",
                        self.seed
                    );
                    return;
                }
                assert!(
                    !res.ctx.is_null(),
                    "{what}: succeeded with an empty result (seed {})",
                    self.seed
                );
                self.made[Kind::Array as usize] += 1;
                self.check_meta(res, what);
                if self.trace {
                    eprintln!("    -> new {:?} dtype {}", shape_of(res), dtype_of(res));
                }
                if self.small(res) {
                    self.arrays.push(Entry { a: res, shadow });
                } else {
                    self.free_array(res);
                }
            }
        }
        // Keep the pool small.
        while self.arrays.len() > 24 {
            let i = self.r.below(self.arrays.len() as u64) as usize;
            let e = self.arrays.swap_remove(i);
            self.free_array(e.a);
        }
    }

    fn small(&self, a: sys::mlx_array) -> bool {
        numel(&shape_of(a)).is_some_and(|n| n <= MAX_ELEMS)
    }

    /// A result's metadata agree with itself (read without evaluating).
    fn check_meta(&self, a: sys::mlx_array, what: &str) {
        let shape = shape_of(a);
        assert!(
            shape.iter().all(|&d| d >= 0),
            "{what}: negative dimension in {shape:?} (seed {})",
            self.seed
        );
        if let Some(n) = numel(&shape) {
            let (size, nbytes, item) = unsafe {
                (
                    sys::mlx_array_size(a),
                    sys::mlx_array_nbytes(a),
                    sys::mlx_array_itemsize(a),
                )
            };
            assert_eq!(
                size as u64, n,
                "{what}: size of {shape:?} (seed {})",
                self.seed
            );
            assert_eq!(nbytes as u64, n * item as u64, "{what}: nbytes");
        }
    }

    fn free_array(&mut self, a: sys::mlx_array) {
        unsafe { sys::mlx_array_free(a) };
        self.freed[Kind::Array as usize] += 1;
    }

    fn random_dtype(&mut self) -> (u32, usize) {
        *self.r.pick(&DTYPES)
    }

    /// A dtype argument, sometimes not a dtype at all.
    fn dtype_arg(&mut self) -> u32 {
        if self.r.one_in(25) {
            *self.r.pick(&[14u32, 99, u32::MAX])
        } else {
            self.random_dtype().0
        }
    }

    /// A small shape: rank 0 to 4, dimensions 0 to 5 (mostly 1 to 4).
    fn small_shape(&mut self) -> Vec<i32> {
        let rank = self.r.below(5) as usize;
        (0..rank)
            .map(|_| {
                if self.r.one_in(12) {
                    0
                } else {
                    1 + self.r.below(5) as i32
                }
            })
            .collect()
    }

    /// A shape argument for ops that take one: small, or hostile (negative, huge, overflowing).
    fn shape_arg(&mut self) -> Vec<i32> {
        let mut s = self.small_shape();
        if self.r.one_in(4) {
            let hostile = [-1, -2, 0, i32::MAX, i32::MIN, 1 << 16, 1 << 20, 65536];
            for _ in 0..=self.r.below(3) {
                let v = *self.r.pick(&hostile);
                if s.is_empty() || self.r.one_in(3) {
                    s.push(v);
                } else {
                    let i = self.r.below(s.len() as u64) as usize;
                    s[i] = v;
                }
            }
        }
        s
    }

    /// An axis for an array of rank `nd`: in range mostly, sometimes just outside, sometimes far.
    fn axis(&mut self, nd: usize) -> i32 {
        let nd = nd as i32;
        match self.r.below(10) {
            0 => *self
                .r
                .pick(&[nd, -nd - 1, i32::MIN, i32::MAX, -100, 100, -(1 << 20)]),
            _ if nd == 0 => *self.r.pick(&[0, -1, 1]),
            _ => self.r.below(2 * nd as u64) as i32 - nd,
        }
    }

    fn axes(&mut self, nd: usize) -> Vec<i32> {
        let n = self.r.below(nd as u64 + 2) as usize;
        (0..n).map(|_| self.axis(nd)).collect()
    }

    /// Random bytes for `n` elements of `dt`: any bit pattern (NaN, infinities, subnormals, any
    /// integer) or small values; bools are bytes 0 or 1, the only values a C++ bool may hold.
    fn data(&mut self, dt: u32, size: usize, n: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..n * size).map(|_| self.r.next() as u8).collect();
        if dt == sys::mlx_dtype__MLX_BOOL {
            for b in &mut v {
                *b &= 1;
            }
        } else if self.r.one_in(2) {
            // Small values are more useful to most ops than random bit patterns.
            for (i, e) in v.chunks_mut(size).enumerate() {
                let x = (self.r.below(9) as i64 - 4) * (i as i64 % 3 + 1);
                match dt {
                    sys::mlx_dtype__MLX_FLOAT32 => e.copy_from_slice(&(x as f32).to_le_bytes()),
                    sys::mlx_dtype__MLX_FLOAT64 => e.copy_from_slice(&(x as f64).to_le_bytes()),
                    sys::mlx_dtype__MLX_COMPLEX64 => {
                        e[..4].copy_from_slice(&(x as f32).to_le_bytes());
                        e[4..].copy_from_slice(&0f32.to_le_bytes());
                    }
                    sys::mlx_dtype__MLX_FLOAT16 | sys::mlx_dtype__MLX_BFLOAT16 => {
                        // Random halves with the two top bits cleared: finite, non-negative.
                        e[1] &= 0x3f;
                    }
                    _ => {
                        let b = x.to_le_bytes();
                        e.copy_from_slice(&b[..size]);
                    }
                }
            }
        }
        v
    }

    fn new_data(&mut self) {
        let (dt, size) = self.random_dtype();
        let shape = self.small_shape();
        let n = numel(&shape).unwrap_or(0) as usize;
        let bytes = self.data(dt, size, n);
        let a = unsafe {
            sys::mlx_array_new_data(
                bytes.as_ptr().cast(),
                shape.as_ptr(),
                shape.len() as c_int,
                dt,
            )
        };
        self.stats.calls += 1;
        assert!(
            !a.ctx.is_null(),
            "mlx_array_new_data {shape:?}: {}",
            last_error()
        );
        self.made[Kind::Array as usize] += 1;
        let shadow =
            (dt == sys::mlx_dtype__MLX_INT32 || dt == sys::mlx_dtype__MLX_FLOAT32).then(|| {
                Shadow {
                    shape: shape.clone(),
                    bits: bytes
                        .chunks(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                }
            });
        self.check_meta(a, "new_data");
        self.arrays.push(Entry { a, shadow });
    }

    /// Array constructors that must refuse their arguments without reading the data.
    fn new_data_hostile(&mut self) {
        let buf = [0u8; 64];
        let dt = self.dtype_arg();
        let (shape, dim): (Vec<i32>, c_int) = match self.r.below(5) {
            0 => (vec![2, -2], 2),
            1 => (vec![65536; 4], 4),
            2 => (vec![1 << 30, 1 << 30, 8], 3),
            3 => (vec![2, 2], -1),
            _ => (vec![i32::MIN, 0], 2),
        };
        let a = if self.r.one_in(2) {
            unsafe { sys::mlx_array_new_data(buf.as_ptr().cast(), shape.as_ptr(), dim, dt) }
        } else {
            // Managed data: on failure the data stays ours and the deleter is not called.
            unsafe {
                sys::mlx_array_new_data_managed(
                    buf.as_ptr() as *mut _,
                    shape.as_ptr(),
                    dim,
                    dt,
                    Some(never_called),
                )
            }
        };
        self.stats.calls += 1;
        assert!(
            a.ctx.is_null(),
            "an array of shape {shape:?} (dim {dim}, dtype {dt}) was made from 64 bytes (seed {})",
            self.seed
        );
        self.status(1, "new_data(hostile)");
    }

    fn new_scalar(&mut self) {
        let a = unsafe {
            match self.r.below(5) {
                0 => sys::mlx_array_new_bool(self.r.one_in(2)),
                1 => sys::mlx_array_new_int(self.r.next() as i32),
                2 => sys::mlx_array_new_float32(f32::from_bits(self.r.next() as u32)),
                3 => sys::mlx_array_new_float64(f64::from_bits(self.r.next())),
                _ => sys::mlx_array_new_complex(self.r.below(9) as f32 - 4.0, 1.5),
            }
        };
        self.stats.calls += 1;
        assert!(!a.ctx.is_null());
        self.made[Kind::Array as usize] += 1;
        self.arrays.push(Entry { a, shadow: None });
    }

    fn factory(&mut self) {
        let (mut res, reused) = self.result();
        let s = self.stream();
        let dt = self.dtype_arg();
        let (rc, what) = unsafe {
            match self.r.below(7) {
                0 => {
                    let sh = self.shape_arg();
                    (
                        sys::mlx_zeros(&mut res, sh.as_ptr(), sh.len(), dt, s),
                        "zeros",
                    )
                }
                1 => {
                    let sh = self.shape_arg();
                    let v = self.arg();
                    (
                        sys::mlx_full(&mut res, sh.as_ptr(), sh.len(), v, dt, s),
                        "full",
                    )
                }
                2 => {
                    let vals = [0.0, 1.0, -3.0, 7.5, 1e300, f64::NAN, f64::INFINITY, -0.0];
                    let (a, b, c) = (
                        *self.r.pick(&vals),
                        *self.r.pick(&vals),
                        *self.r.pick(&vals),
                    );
                    (sys::mlx_arange(&mut res, a, b, c, dt, s), "arange")
                }
                3 => {
                    let n = self.int_arg();
                    let m = self.int_arg();
                    let k = self.int_arg();
                    (sys::mlx_eye(&mut res, n, m, k, dt, s), "eye")
                }
                4 => {
                    let n = self.int_arg();
                    (sys::mlx_linspace(&mut res, -1.0, 3.0, n, dt, s), "linspace")
                }
                5 => {
                    let n = self.int_arg();
                    let m = self.int_arg();
                    (sys::mlx_tri(&mut res, n, m, self.int_arg(), dt, s), "tri")
                }
                _ => {
                    let sh = self.shape_arg();
                    (
                        sys::mlx_ones(&mut res, sh.as_ptr(), sh.len(), dt, s),
                        "ones",
                    )
                }
            }
        };
        let ok = self.status(rc, what);
        self.take_result(ok, res, reused, None, what);
    }

    /// An integer argument: small mostly, sometimes an edge.
    fn int_arg(&mut self) -> c_int {
        if self.r.one_in(8) {
            *self.r.pick(&[-1, -7, 0, i32::MAX, i32::MIN, 1 << 20])
        } else {
            self.r.below(6) as c_int
        }
    }

    fn unary(&mut self) {
        let &(name, f) = self.r.pick(UNARY);
        let a = self.arg();
        let (mut res, reused) = self.result();
        let s = self.stream();
        let rc = unsafe { f(&mut res, a, s) };
        let ok = self.status(rc, name);
        self.take_result(ok, res, reused, None, name);
    }

    fn binary(&mut self) {
        let &(name, f) = self.r.pick(BINARY);
        let a = self.arg();
        let b = if self.r.one_in(4) { a } else { self.arg() };
        let (mut res, reused) = self.result();
        let s = self.stream();
        let rc = unsafe { f(&mut res, a, b, s) };
        let ok = self.status(rc, name);
        self.take_result(ok, res, reused, None, name);
    }

    fn reduce(&mut self) {
        let &(name, f) = self.r.pick(REDUCE);
        let a = self.arg();
        let nd = shape_of_or_empty(a).len();
        let axes = self.axes(nd);
        let keep = self.r.one_in(2);
        let (mut res, reused) = self.result();
        let s = self.stream();
        let rc = unsafe { f(&mut res, a, axes.as_ptr(), axes.len(), keep, s) };
        let ok = self.status(rc, name);
        self.take_result(ok, res, reused, None, name);
    }

    /// Ops with an axis or two and other integer arguments.
    fn axis_op(&mut self) {
        let a = self.arg();
        let nd = shape_of_or_empty(a).len();
        let (ax, ax2) = (self.axis(nd), self.axis(nd));
        let k = self.int_arg();
        let (mut res, reused) = self.result();
        let s = self.stream();
        let (rc, what) = unsafe {
            match self.r.below(14) {
                0 => (sys::mlx_moveaxis(&mut res, a, ax, ax2, s), "moveaxis"),
                1 => (sys::mlx_swapaxes(&mut res, a, ax, ax2, s), "swapaxes"),
                2 => (sys::mlx_flatten(&mut res, a, ax, ax2, s), "flatten"),
                3 => (sys::mlx_repeat_axis(&mut res, a, k, ax, s), "repeat_axis"),
                4 => (sys::mlx_topk_axis(&mut res, a, k, ax, s), "topk_axis"),
                5 => (sys::mlx_sort_axis(&mut res, a, ax, s), "sort_axis"),
                6 => (
                    sys::mlx_argpartition_axis(&mut res, a, k, ax, s),
                    "argpartition_axis",
                ),
                7 => (sys::mlx_diagonal(&mut res, a, k, ax, ax2, s), "diagonal"),
                8 => {
                    let dt = sys::mlx_optional_dtype {
                        value: self.dtype_arg(),
                        has_value: self.r.one_in(3),
                    };
                    let (rev, inc) = (self.r.one_in(2), self.r.one_in(2));
                    (
                        sys::mlx_cumsum_axis(&mut res, a, ax, rev, inc, dt, s),
                        "cumsum_axis",
                    )
                }
                9 => (sys::mlx_round(&mut res, a, k, s), "round"),
                10 => (
                    sys::mlx_argmax_axis(&mut res, a, ax, self.r.one_in(2), s),
                    "argmax_axis",
                ),
                11 => {
                    let axes = self.axes(nd);
                    let p = self.r.one_in(2);
                    (
                        sys::mlx_softmax_axes(&mut res, a, axes.as_ptr(), axes.len(), p, s),
                        "softmax_axes",
                    )
                }
                12 => {
                    let axes = self.axes(nd);
                    let keep = self.r.one_in(2);
                    (
                        sys::mlx_var_axes(&mut res, a, axes.as_ptr(), axes.len(), keep, k, s),
                        "var_axes",
                    )
                }
                _ => (sys::mlx_tril(&mut res, a, k, s), "tril"),
            }
        };
        let ok = self.status(rc, what);
        self.take_result(ok, res, reused, None, what);
    }

    fn shape_op(&mut self) {
        let Some(i) = self.arg_index() else {
            return self.new_data();
        };
        let a = self.arrays[i].a;
        let src = self.arrays[i].shadow.clone();
        let shape = shape_of(a);
        let nd = shape.len();
        let (mut res, reused) = self.result();
        let s = self.stream();
        let mut shadow = None;
        let (rc, what) = unsafe {
            match self.r.below(7) {
                0 => {
                    // A permutation of the current shape's elements (sometimes with a -1), or a
                    // random one.
                    let mut new = if self.r.one_in(3) {
                        self.shape_arg()
                    } else {
                        let n = numel(&shape).unwrap_or(0) as i32;
                        let mut v = vec![];
                        let mut left = n;
                        for d in [2, 3, 2] {
                            if left > 0 && left % d == 0 && self.r.one_in(2) {
                                v.push(d);
                                left /= d;
                            }
                        }
                        v.push(left);
                        v
                    };
                    if !new.is_empty() && self.r.one_in(5) {
                        let j = self.r.below(new.len() as u64) as usize;
                        new[j] = -1;
                    }
                    let rc = sys::mlx_reshape(&mut res, a, new.as_ptr(), new.len(), s);
                    if rc == 0 {
                        shadow = src.map(|sh| Shadow {
                            shape: shape_of(res),
                            bits: sh.bits,
                        });
                    }
                    (rc, "reshape")
                }
                1 => {
                    let mut perm: Vec<i32> = (0..nd as i32).collect();
                    for j in (1..perm.len()).rev() {
                        let k = self.r.below(j as u64 + 1) as usize;
                        perm.swap(j, k);
                    }
                    if self.r.one_in(5) {
                        perm = self.axes(nd);
                    }
                    let rc = sys::mlx_transpose_axes(&mut res, a, perm.as_ptr(), perm.len(), s);
                    if rc == 0 {
                        shadow = src.map(|sh| transpose_shadow(&sh, &perm));
                    }
                    (rc, "transpose_axes")
                }
                2 => {
                    let sh = self.shape_arg();
                    (
                        sys::mlx_broadcast_to(&mut res, a, sh.as_ptr(), sh.len(), s),
                        "broadcast_to",
                    )
                }
                3 => {
                    let axes = self.axes(nd + 1);
                    (
                        sys::mlx_expand_dims_axes(&mut res, a, axes.as_ptr(), axes.len(), s),
                        "expand_dims_axes",
                    )
                }
                4 => {
                    let axes = self.axes(nd);
                    (
                        sys::mlx_squeeze_axes(&mut res, a, axes.as_ptr(), axes.len(), s),
                        "squeeze_axes",
                    )
                }
                5 => {
                    let reps: Vec<i32> = (0..self.r.below(4))
                        .map(|_| *self.r.pick(&[-1, 0, 1, 2, 3, 65536]))
                        .collect();
                    (
                        sys::mlx_tile(&mut res, a, reps.as_ptr(), reps.len(), s),
                        "tile",
                    )
                }
                _ => {
                    let axes = self.axes(nd);
                    let mode = *self.r.pick(&[c"constant", c"edge", c"reflect", c"bogus"]);
                    // MLX builds edge and reflect padding one slice per padded row: a width of
                    // 2^20 is a legal request for a graph of 2^20 nodes (seconds to build). Large
                    // widths go to constant padding.
                    let wide = mode == c"constant";
                    let mut width = || {
                        if wide {
                            self.int_arg()
                        } else {
                            self.r.below(8) as i32 - 1
                        }
                    };
                    let lo: Vec<i32> = axes.iter().map(|_| width()).collect();
                    let hi: Vec<i32> = axes.iter().map(|_| width()).collect();
                    let v = self.arg();
                    (
                        sys::mlx_pad(
                            &mut res,
                            a,
                            axes.as_ptr(),
                            axes.len(),
                            lo.as_ptr(),
                            lo.len(),
                            hi.as_ptr(),
                            hi.len(),
                            v,
                            mode.as_ptr(),
                            s,
                        ),
                        "pad",
                    )
                }
            }
        };
        let ok = self.status(rc, what);
        self.take_result(ok, res, reused, shadow, what);
    }

    fn slice(&mut self) {
        let Some(i) = self.arg_index() else {
            return self.new_data();
        };
        let a = self.arrays[i].a;
        let src = self.arrays[i].shadow.clone();
        let shape = shape_of(a);
        // One entry per axis mostly; sometimes a wrong count.
        let n = if self.r.one_in(10) {
            self.r.below(shape.len() as u64 + 2) as usize
        } else {
            shape.len()
        };
        let mut start = vec![];
        let mut stop = vec![];
        let mut step = vec![];
        for j in 0..n {
            let d = shape.get(j).copied().unwrap_or(1);
            let edges = [i32::MIN, i32::MAX, i32::MIN + 1, -(1 << 20), 1 << 20];
            start.push(if self.r.one_in(12) {
                *self.r.pick(&edges)
            } else {
                self.r.below(d as u64 + 3) as i32 - 1 - d * (self.r.below(3) == 0) as i32
            });
            stop.push(if self.r.one_in(12) {
                *self.r.pick(&edges)
            } else {
                self.r.below(d as u64 + 3) as i32 - 1
            });
            step.push(match self.r.below(12) {
                0 => 0,
                1 => i32::MIN,
                2 => *self.r.pick(&[i32::MAX, -1, -2]),
                _ => 1 + self.r.below(2) as i32,
            });
        }
        let (mut res, reused) = self.result();
        let s = self.stream();
        let update = self.r.one_in(4);
        let rc = unsafe {
            if update {
                let u = self.arg();
                sys::mlx_slice_update(
                    &mut res,
                    a,
                    u,
                    start.as_ptr(),
                    start.len(),
                    stop.as_ptr(),
                    stop.len(),
                    step.as_ptr(),
                    step.len(),
                    s,
                )
            } else {
                sys::mlx_slice(
                    &mut res,
                    a,
                    start.as_ptr(),
                    start.len(),
                    stop.as_ptr(),
                    stop.len(),
                    step.as_ptr(),
                    step.len(),
                    s,
                )
            }
        };
        let what = if update { "slice_update" } else { "slice" };
        let ok = self.status(rc, what);
        let shadow = if ok && !update {
            src.and_then(|sh| slice_shadow(&sh, &start, &stop, &step))
        } else {
            None
        };
        if ok && !update && shadow.is_some() {
            let want = &shadow.as_ref().map(|s| s.shape.clone()).unwrap_or_default();
            assert_eq!(
                &shape_of(res),
                want,
                "slice {shape:?} {start:?}:{stop:?}:{step:?} (seed {})",
                self.seed
            );
        }
        self.take_result(ok, res, reused, shadow, what);
    }

    /// take / take_along_axis / put_along_axis with index values in range and random axes and index
    /// shapes and dtypes.
    fn take(&mut self) {
        let Some(i) = self.arg_index() else {
            return self.new_data();
        };
        let a = self.arrays[i].a;
        let src = self.arrays[i].shadow.clone();
        let shape = shape_of(a);
        let kind = self.r.below(4);
        let ax = self.axis(shape.len());
        // The extent the index values address.
        let extent = match kind {
            0 => numel(&shape).unwrap_or(0) as i64,
            _ => {
                let nd = shape.len() as i32;
                if (-nd..nd).contains(&ax) {
                    shape[(ax.rem_euclid(nd.max(1))) as usize] as i64
                } else {
                    1
                }
            }
        };
        let ishape: Vec<i32> = match kind {
            0 | 1 => self.small_shape(),
            _ => {
                // Broadcast-compatible with `a` mostly.
                let mut v = shape.clone();
                if let Some(d) = v.get_mut(ax.rem_euclid(shape.len().max(1) as i32) as usize) {
                    *d = 1 + self.r.below(3) as i32;
                }
                v
            }
        };
        // (`a` may have no elements and large dimensions.)
        let Some(n) = numel(&ishape).filter(|&n| n <= MAX_ELEMS) else {
            return;
        };
        let n = n as usize;
        let vals: Vec<i32> = (0..n)
            .map(|_| {
                if extent > 0 {
                    (self.r.below(2 * extent as u64) as i64 - extent) as i32
                } else {
                    0
                }
            })
            .collect();
        if extent == 0 && n > 0 {
            // Nothing to address: no valid index exists, so the call is not made.
            return;
        }
        let idx_dt = *self.r.pick(&[
            sys::mlx_dtype__MLX_INT32,
            sys::mlx_dtype__MLX_INT32,
            sys::mlx_dtype__MLX_INT64,
            sys::mlx_dtype__MLX_FLOAT32,
        ]);
        let idx = unsafe {
            match idx_dt {
                sys::mlx_dtype__MLX_INT64 => {
                    let v: Vec<i64> = vals.iter().map(|&x| x as i64).collect();
                    sys::mlx_array_new_data(
                        v.as_ptr().cast(),
                        ishape.as_ptr(),
                        ishape.len() as c_int,
                        idx_dt,
                    )
                }
                sys::mlx_dtype__MLX_FLOAT32 => {
                    let v: Vec<f32> = vals.iter().map(|&x| x as f32).collect();
                    sys::mlx_array_new_data(
                        v.as_ptr().cast(),
                        ishape.as_ptr(),
                        ishape.len() as c_int,
                        idx_dt,
                    )
                }
                _ => sys::mlx_array_new_data(
                    vals.as_ptr().cast(),
                    ishape.as_ptr(),
                    ishape.len() as c_int,
                    idx_dt,
                ),
            }
        };
        assert!(!idx.ctx.is_null(), "{}", last_error());
        self.made[Kind::Array as usize] += 1;
        let (mut res, reused) = self.result();
        let s = self.stream();
        let (rc, what) = unsafe {
            match kind {
                0 => (sys::mlx_take(&mut res, a, idx, s), "take"),
                1 => (sys::mlx_take_axis(&mut res, a, idx, ax, s), "take_axis"),
                2 => (
                    sys::mlx_take_along_axis(&mut res, a, idx, ax, s),
                    "take_along_axis",
                ),
                _ => {
                    let v = self.arg();
                    (
                        sys::mlx_put_along_axis(&mut res, a, idx, v, ax, s),
                        "put_along_axis",
                    )
                }
            }
        };
        let ok = self.status(rc, what);
        let shadow = if ok && kind == 0 && idx_dt != sys::mlx_dtype__MLX_FLOAT32 {
            src.map(|sh| Shadow {
                shape: ishape.clone(),
                bits: vals
                    .iter()
                    .map(|&v| sh.bits[v.rem_euclid(sh.bits.len() as i32) as usize])
                    .collect(),
            })
        } else {
            None
        };
        self.take_result(ok, res, reused, shadow, what);
        // The index array goes into the pool too, where it is used like any other.
        self.arrays.push(Entry {
            a: idx,
            shadow: None,
        });
    }

    fn quant(&mut self) {
        let mode = *self
            .r
            .pick(&[c"affine", c"affine", c"mxfp4", c"nvfp4", c"mxfp8", c"bogus"]);
        let gs = sys::mlx_optional_int {
            value: *self.r.pick(&[16, 32, 64, 128, 0, -32, 3]),
            has_value: !self.r.one_in(3),
        };
        let bits = sys::mlx_optional_int {
            value: *self.r.pick(&[2, 3, 4, 5, 6, 8, 0, 7, 9, -4]),
            has_value: !self.r.one_in(3),
        };
        let s = self.stream();
        match self.r.below(3) {
            0 => {
                // Quantize a fresh [rows, 32 * m] weight or a random pool array.
                let w = if self.r.one_in(3) {
                    self.arg()
                } else {
                    let rows = 1 + self.r.below(4) as i32;
                    let cols = 32 * (1 + self.r.below(4) as i32);
                    let data: Vec<f32> = (0..rows * cols)
                        .map(|_| (self.r.below(2001) as f32 - 1000.0) / 700.0)
                        .collect();
                    let shape = [rows, cols];
                    let a = unsafe {
                        sys::mlx_array_new_data(
                            data.as_ptr().cast(),
                            shape.as_ptr(),
                            2,
                            sys::mlx_dtype__MLX_FLOAT32,
                        )
                    };
                    self.made[Kind::Array as usize] += 1;
                    self.arrays.push(Entry { a, shadow: None });
                    a
                };
                let gscale = if self.r.one_in(6) {
                    self.arg()
                } else {
                    sys::mlx_array {
                        ctx: std::ptr::null_mut(),
                    }
                };
                let mut v = unsafe { sys::mlx_vector_array_new() };
                self.made[Kind::VecArray as usize] += 1;
                let rc =
                    unsafe { sys::mlx_quantize(&mut v, w, gs, bits, mode.as_ptr(), gscale, s) };
                if self.status(rc, "quantize") {
                    // Unpack the parts into the pool; sometimes multiply with them at once.
                    let n = unsafe { sys::mlx_vector_array_size(v) };
                    let mut parts = vec![];
                    for j in 0..n {
                        let mut a = unsafe { sys::mlx_array_new() };
                        let rc = unsafe { sys::mlx_vector_array_get(&mut a, v, j) };
                        assert_eq!(rc, 0, "{}", last_error());
                        self.made[Kind::Array as usize] += 1;
                        parts.push(a);
                    }
                    if parts.len() >= 2 && self.r.one_in(2) {
                        let x = self.arg();
                        let b = parts.get(2).copied().unwrap_or(sys::mlx_array {
                            ctx: std::ptr::null_mut(),
                        });
                        let (mut res, reused) = self.result();
                        let rc = unsafe {
                            sys::mlx_quantized_matmul(
                                &mut res,
                                x,
                                parts[0],
                                parts[1],
                                b,
                                true,
                                gs,
                                bits,
                                mode.as_ptr(),
                                s,
                            )
                        };
                        let ok = self.status(rc, "quantized_matmul");
                        self.take_result(ok, res, reused, None, "quantized_matmul");
                    }
                    for a in parts {
                        self.arrays.push(Entry { a, shadow: None });
                    }
                }
                self.vecs.push(v);
            }
            1 => {
                let (w, sc, b) = (
                    self.arg(),
                    self.arg(),
                    if self.r.one_in(2) {
                        self.arg()
                    } else {
                        sys::mlx_array {
                            ctx: std::ptr::null_mut(),
                        }
                    },
                );
                let dt = sys::mlx_optional_dtype {
                    value: self.dtype_arg(),
                    has_value: self.r.one_in(3),
                };
                let (mut res, reused) = self.result();
                let none = sys::mlx_array {
                    ctx: std::ptr::null_mut(),
                };
                let rc = unsafe {
                    sys::mlx_dequantize(&mut res, w, sc, b, gs, bits, mode.as_ptr(), none, dt, s)
                };
                let ok = self.status(rc, "dequantize");
                self.take_result(ok, res, reused, None, "dequantize");
            }
            _ => {
                let (x, w, sc) = (self.arg(), self.arg(), self.arg());
                let b = if self.r.one_in(2) {
                    self.arg()
                } else {
                    sys::mlx_array {
                        ctx: std::ptr::null_mut(),
                    }
                };
                let (mut res, reused) = self.result();
                let t = self.r.one_in(2);
                let rc = unsafe {
                    sys::mlx_quantized_matmul(&mut res, x, w, sc, b, t, gs, bits, mode.as_ptr(), s)
                };
                let ok = self.status(rc, "quantized_matmul");
                self.take_result(ok, res, reused, None, "quantized_matmul");
            }
        }
    }

    fn astype(&mut self) {
        let Some(i) = self.arg_index() else {
            return self.new_data();
        };
        let a = self.arrays[i].a;
        let src = self.arrays[i].shadow.clone();
        let from = dtype_of(a);
        let dt = self.dtype_arg();
        let (mut res, reused) = self.result();
        let s = self.stream();
        let view = self.r.one_in(3);
        let rc = unsafe {
            if view {
                sys::mlx_view(&mut res, a, dt, s)
            } else {
                sys::mlx_astype(&mut res, a, dt, s)
            }
        };
        let what = if view { "view" } else { "astype" };
        let ok = self.status(rc, what);
        // Same-width reinterpretation keeps the bits; a cast to the same dtype keeps the values.
        let keeps = (view
            && [from, dt]
                .iter()
                .all(|&d| d == sys::mlx_dtype__MLX_INT32 || d == sys::mlx_dtype__MLX_FLOAT32))
            || (!view && from == dt);
        let shadow = if ok && keeps { src } else { None };
        self.take_result(ok, res, reused, shadow, what);
    }

    fn misc(&mut self) {
        let (mut res, reused) = self.result();
        let s = self.stream();
        let (rc, what) = unsafe {
            match self.r.below(6) {
                0 => {
                    let (c, x, y) = (self.arg(), self.arg(), self.arg());
                    (sys::mlx_where(&mut res, c, x, y, s), "where")
                }
                1 => {
                    let none = sys::mlx_array {
                        ctx: std::ptr::null_mut(),
                    };
                    let a = self.arg();
                    let lo = if self.r.one_in(2) { self.arg() } else { none };
                    let hi = if self.r.one_in(2) { self.arg() } else { none };
                    (sys::mlx_clip(&mut res, a, lo, hi, s), "clip")
                }
                2 => {
                    let (a, b) = (self.arg(), self.arg());
                    let nd = shape_of_or_empty(a).len().max(shape_of_or_empty(b).len());
                    let x = self.axes(nd);
                    let y = self.axes(nd);
                    (
                        sys::mlx_tensordot(
                            &mut res,
                            a,
                            b,
                            x.as_ptr(),
                            x.len(),
                            y.as_ptr(),
                            y.len(),
                            s,
                        ),
                        "tensordot",
                    )
                }
                3 => {
                    let (c, a, b) = (self.arg(), self.arg(), self.arg());
                    let alpha = f32::from_bits(self.r.next() as u32);
                    (sys::mlx_addmm(&mut res, c, a, b, alpha, 1.0, s), "addmm")
                }
                4 => {
                    let v = sys::mlx_vector_array_new();
                    self.made[Kind::VecArray as usize] += 1;
                    for _ in 0..self.r.below(4) {
                        let a = self.arg();
                        let rc = sys::mlx_vector_array_append_value(v, a);
                        self.status(rc, "vector_array_append_value");
                    }
                    let ax = self.axis(3);
                    let rc = if self.r.one_in(2) {
                        sys::mlx_concatenate_axis(&mut res, v, ax, s)
                    } else {
                        sys::mlx_stack_axis(&mut res, v, ax, s)
                    };
                    self.vecs.push(v);
                    (rc, "concatenate/stack")
                }
                _ => {
                    // split into a vector; its parts go into the pool.
                    let a = self.arg();
                    let shape = shape_of_or_empty(a);
                    let ax = self.axis(shape.len());
                    let nd = shape.len() as i32;
                    let empty_axis =
                        (-nd..nd).contains(&ax) && shape[ax.rem_euclid(nd) as usize] == 0;
                    // An empty axis splits into any number of parts: i32::MAX of them is a legal
                    // request for 2^31 arrays, which no call can make quickly.
                    let k = if empty_axis {
                        self.r.below(6) as c_int - 1
                    } else {
                        self.int_arg()
                    };
                    let mut v = sys::mlx_vector_array_new();
                    self.made[Kind::VecArray as usize] += 1;
                    let rc = sys::mlx_split(&mut v, a, k, ax, s);
                    if self.status(rc, "split") {
                        let n = sys::mlx_vector_array_size(v);
                        for j in 0..n.min(4) {
                            let mut p = sys::mlx_array_new();
                            assert_eq!(sys::mlx_vector_array_get(&mut p, v, j), 0);
                            self.made[Kind::Array as usize] += 1;
                            self.arrays.push(Entry { a: p, shadow: None });
                        }
                    }
                    self.vecs.push(v);
                    // No array result.
                    if reused.is_none() {
                        sys::mlx_array_free(res);
                    }
                    return;
                }
            }
        };
        let ok = self.status(rc, what);
        self.take_result(ok, res, reused, None, what);
    }

    // --- evaluation and reads ------------------------------------------------------------------------

    fn eval(&mut self) {
        match self.r.below(3) {
            0 => {
                let a = self.arg();
                if self.trace {
                    eprintln!(
                        "  array_eval of {:?} dtype {}",
                        shape_of_or_empty(a),
                        dtype_of(a)
                    );
                }
                let rc = unsafe { sys::mlx_array_eval(a) };
                self.stats.evals += 1;
                self.status(rc, "array_eval");
            }
            _ => {
                let n = self.r.below(4);
                let v = unsafe { sys::mlx_vector_array_new() };
                for _ in 0..n {
                    let a = self.arg();
                    unsafe { sys::mlx_vector_array_append_value(v, a) };
                }
                let rc = unsafe {
                    if self.r.one_in(3) {
                        sys::mlx_async_eval(v)
                    } else {
                        sys::mlx_eval(v)
                    }
                };
                self.stats.evals += 1;
                self.status(rc, "eval");
                unsafe { sys::mlx_vector_array_free(v) };
            }
        }
    }

    /// Reads an array's values through the data pointer of its dtype, following its strides, and checks
    /// them against the values known here.
    fn read(&mut self) {
        let Some(i) = self.arg_index() else {
            return;
        };
        let a = self.arrays[i].a;
        let dt = dtype_of(a);
        // Item reads in a random dtype: an error unless it is the array's and it has one element.
        if self.r.one_in(3) {
            let mut buf = [0u64; 2];
            let p = buf.as_mut_ptr();
            let rc = unsafe {
                match self.r.below(7) {
                    0 => sys::mlx_array_item_float32(p.cast(), a),
                    1 => sys::mlx_array_item_int32(p.cast(), a),
                    2 => sys::mlx_array_item_bool(p.cast(), a),
                    3 => sys::mlx_array_item_float64(p.cast(), a),
                    4 => sys::mlx_array_item_uint64(p.cast(), a),
                    5 => sys::mlx_array_item_complex64(p.cast(), a),
                    _ => sys::mlx_array_item_bfloat16(p.cast(), a),
                }
            };
            self.status(rc, "item");
            return;
        }
        let p: *const u8 = unsafe {
            match dt {
                sys::mlx_dtype__MLX_BOOL => sys::mlx_array_data_bool(a).cast(),
                sys::mlx_dtype__MLX_UINT8 => sys::mlx_array_data_uint8(a),
                sys::mlx_dtype__MLX_UINT16 => sys::mlx_array_data_uint16(a).cast(),
                sys::mlx_dtype__MLX_UINT32 => sys::mlx_array_data_uint32(a).cast(),
                sys::mlx_dtype__MLX_UINT64 => sys::mlx_array_data_uint64(a).cast(),
                sys::mlx_dtype__MLX_INT8 => sys::mlx_array_data_int8(a).cast(),
                sys::mlx_dtype__MLX_INT16 => sys::mlx_array_data_int16(a).cast(),
                sys::mlx_dtype__MLX_INT32 => sys::mlx_array_data_int32(a).cast(),
                sys::mlx_dtype__MLX_INT64 => sys::mlx_array_data_int64(a).cast(),
                sys::mlx_dtype__MLX_FLOAT16 => sys::mlx_array_data_float16(a).cast(),
                sys::mlx_dtype__MLX_FLOAT32 => sys::mlx_array_data_float32(a).cast(),
                sys::mlx_dtype__MLX_FLOAT64 => sys::mlx_array_data_float64(a).cast(),
                sys::mlx_dtype__MLX_BFLOAT16 => sys::mlx_array_data_bfloat16(a).cast(),
                _ => sys::mlx_array_data_complex64(a).cast(),
            }
        };
        self.stats.calls += 1;
        self.stats.evals += 1;
        if p.is_null() {
            self.status(1, "data");
            return;
        }
        let shape = shape_of(a);
        let n = numel(&shape).unwrap_or(0) as usize;
        if n == 0 {
            return;
        }
        let item = unsafe { sys::mlx_array_itemsize(a) };
        let strides =
            unsafe { std::slice::from_raw_parts(sys::mlx_array_strides(a), shape.len()).to_vec() };
        let mut got = Vec::with_capacity(n);
        let mut index = vec![0usize; shape.len()];
        for _ in 0..n {
            // mlx-c hands out MLX's int64 strides as size_t: a reversed axis's stride is negative.
            let off = index
                .iter()
                .zip(&strides)
                .try_fold(0isize, |o, (&i, &s)| {
                    (i as isize)
                        .checked_mul(s as isize)
                        .and_then(|x| o.checked_add(x))
                })
                .and_then(|o| o.checked_mul(item as isize))
                .unwrap_or_else(|| {
                    panic!(
                        "strides {strides:?} of shape {shape:?} overflow (seed {})",
                        self.seed
                    )
                });
            let mut v = [0u8; 8];
            unsafe { std::ptr::copy_nonoverlapping(p.offset(off), v.as_mut_ptr(), item) };
            got.push(u64::from_le_bytes(v));
            for d in (0..shape.len()).rev() {
                index[d] += 1;
                if index[d] < shape[d] as usize {
                    break;
                }
                index[d] = 0;
            }
        }
        if let Some(sh) = &self.arrays[i].shadow {
            assert_eq!(sh.shape, shape, "shape (seed {})", self.seed);
            let want: Vec<u64> = sh.bits.iter().map(|&b| b as u64).collect();
            assert!(
                got == want,
                "values differ from the ones computed here (seed {}): got {got:x?}, want {want:x?}",
                self.seed
            );
            self.stats.values_checked += n as u64;
        }
    }

    /// `mlx_array_set`: a copy into a new or an existing handle, or from the empty handle (an error).
    fn copy(&mut self) {
        let Some(i) = self.arg_index() else {
            return;
        };
        let src = if self.r.one_in(30) {
            sys::mlx_array {
                ctx: std::ptr::null_mut(),
            }
        } else {
            self.arrays[i].a
        };
        let shadow = self.arrays[i].shadow.clone();
        let (mut dst, reused) = self.result();
        let rc = unsafe { sys::mlx_array_set(&mut dst, src) };
        let ok = self.status(rc, "array_set");
        self.take_result(ok, dst, reused, shadow, "array_set");
    }

    fn free_one(&mut self) {
        if let Some(i) = self.arg_index() {
            let e = self.arrays.swap_remove(i);
            self.free_array(e.a);
        }
    }

    fn tostring(&mut self) {
        let a = self.arg();
        let mut st = unsafe { sys::mlx_string_new() };
        self.made[Kind::String as usize] += 1;
        let rc = unsafe { sys::mlx_array_tostring(&mut st, a) };
        if self.status(rc, "array_tostring") {
            let p = unsafe { sys::mlx_string_data(st) };
            assert!(!p.is_null());
            assert!(!unsafe { CStr::from_ptr(p) }.to_bytes().is_empty());
        }
        self.strings.push(st);
    }

    // --- strings, vectors, maps -----------------------------------------------------------------------

    fn word(&mut self) -> CString {
        let n = self.r.below(12) as usize;
        let bytes: Vec<u8> = (0..n).map(|_| 1 + (self.r.next() % 255) as u8).collect();
        CString::new(bytes).expect("no NUL")
    }

    fn containers(&mut self) {
        unsafe {
            match self.r.below(9) {
                0 => {
                    let w = self.word();
                    let st = sys::mlx_string_new_data(w.as_ptr());
                    self.made[Kind::String as usize] += 1;
                    assert_eq!(CStr::from_ptr(sys::mlx_string_data(st)), w.as_c_str());
                    if let Some(&dst) = self.strings.last() {
                        let mut d = dst;
                        assert_eq!(sys::mlx_string_set(&mut d, st), 0);
                        assert_eq!(CStr::from_ptr(sys::mlx_string_data(d)), w.as_c_str());
                    }
                    self.strings.push(st);
                    let null = sys::mlx_string_new_data(std::ptr::null());
                    if !null.ctx.is_null() {
                        self.made[Kind::String as usize] += 1;
                        self.strings.push(null);
                    }
                    self.stats.calls += 2;
                }
                1 => {
                    let v = sys::mlx_vector_string_new();
                    self.made[Kind::VecString as usize] += 1;
                    let words: Vec<CString> = (0..self.r.below(4)).map(|_| self.word()).collect();
                    for w in &words {
                        let rc = sys::mlx_vector_string_append_value(v, w.as_ptr());
                        self.status(rc, "vector_string_append_value");
                    }
                    let rc = sys::mlx_vector_string_append_value(v, std::ptr::null());
                    self.status(rc, "vector_string_append_value(null)");
                    let n = sys::mlx_vector_string_size(v);
                    // One index past the end: an error.
                    for j in 0..=n {
                        let mut p: *mut c_char = std::ptr::null_mut();
                        let rc = sys::mlx_vector_string_get(&mut p, v, j);
                        if self.status(rc, "vector_string_get") {
                            assert_eq!(Some(CStr::from_ptr(p)), words.get(j).map(|w| w.as_c_str()));
                        }
                    }
                    self.vstrs.push(v);
                }
                2 => {
                    let data: Vec<c_int> = (0..self.r.below(5)).map(|_| self.int_arg()).collect();
                    let mut d = data.clone();
                    let v = sys::mlx_vector_int_new_data(d.as_mut_ptr(), d.len());
                    self.made[Kind::VecInt as usize] += 1;
                    for j in 0..=data.len() {
                        let mut x = 0;
                        let rc = sys::mlx_vector_int_get(&mut x, v, j);
                        if self.status(rc, "vector_int_get") {
                            assert_eq!(Some(&x), data.get(j));
                        }
                    }
                    let rc = sys::mlx_vector_int_get(std::ptr::null_mut(), v, 0);
                    self.status(rc, "vector_int_get(null)");
                    self.vints.push(v);
                }
                3 => {
                    // A vector of pool arrays; a get past its end; a copy with set.
                    let n = self.r.below(4) as usize;
                    let items: Vec<sys::mlx_array> = (0..n).map(|_| self.arg()).collect();
                    let v = sys::mlx_vector_array_new_data(items.as_ptr(), items.len());
                    self.stats.calls += 1;
                    if v.ctx.is_null() {
                        // An empty handle among the items.
                        self.status(1, "vector_array_new_data");
                        return;
                    }
                    self.made[Kind::VecArray as usize] += 1;
                    let (mut res, reused) = self.result();
                    let j = self.r.below(n as u64 + 2) as usize;
                    let rc = sys::mlx_vector_array_get(&mut res, v, j);
                    let ok = self.status(rc, "vector_array_get");
                    self.take_result(ok, res, reused, None, "vector_array_get");
                    if let Some(&dst) = self.vecs.last() {
                        let mut d = dst;
                        assert_eq!(sys::mlx_vector_array_set(&mut d, v), 0);
                        assert_eq!(sys::mlx_vector_array_size(d), n);
                    }
                    self.vecs.push(v);
                }
                4 => {
                    let m = sys::mlx_map_string_to_array_new();
                    self.made[Kind::MapArray as usize] += 1;
                    let keys: Vec<CString> = (0..self.r.below(4)).map(|_| self.word()).collect();
                    for k in &keys {
                        let a = self.arg();
                        let rc = sys::mlx_map_string_to_array_insert(m, k.as_ptr(), a);
                        self.status(rc, "map_string_to_array_insert");
                    }
                    let probe = self.word();
                    let (mut res, reused) = self.result();
                    let rc = sys::mlx_map_string_to_array_get(&mut res, m, probe.as_ptr());
                    // 2: no such key, not an error.
                    let ok = rc == 0;
                    if rc != 2 {
                        self.status(rc, "map_string_to_array_get");
                    }
                    self.take_result(ok, res, reused, None, "map_string_to_array_get");
                    let mut probe = sys::mlx_array_new();
                    let rc = sys::mlx_map_string_to_array_get(&mut probe, m, std::ptr::null());
                    assert!(probe.ctx.is_null());
                    self.status(rc, "map_string_to_array_get(null)");
                    // Iterate: each entry once, then 2.
                    let it = sys::mlx_map_string_to_array_iterator_new(m);
                    self.made[Kind::Iterator as usize] += 1;
                    let mut seen = 0;
                    loop {
                        let mut k: *const c_char = std::ptr::null();
                        let mut v = sys::mlx_array_new();
                        let rc = sys::mlx_map_string_to_array_iterator_next(&mut k, &mut v, it);
                        if !v.ctx.is_null() {
                            sys::mlx_array_free(v);
                        }
                        if rc != 0 {
                            assert_eq!(rc, 2, "{}", last_error());
                            break;
                        }
                        seen += 1;
                        assert!(seen <= keys.len(), "the iterator does not stop");
                    }
                    sys::mlx_map_string_to_array_iterator_free(it);
                    self.freed[Kind::Iterator as usize] += 1;
                    self.maps.push(m);
                }
                5 => {
                    let m = sys::mlx_map_string_to_string_new();
                    self.made[Kind::MapString as usize] += 1;
                    let kv: Vec<(CString, CString)> = (0..self.r.below(4))
                        .map(|_| (self.word(), self.word()))
                        .collect();
                    for (k, v) in &kv {
                        let rc = sys::mlx_map_string_to_string_insert(m, k.as_ptr(), v.as_ptr());
                        self.status(rc, "map_string_to_string_insert");
                    }
                    let rc =
                        sys::mlx_map_string_to_string_insert(m, std::ptr::null(), std::ptr::null());
                    self.status(rc, "map_string_to_string_insert(null)");
                    if let Some((k, _)) = kv.last() {
                        let mut p: *const c_char = std::ptr::null();
                        let rc = sys::mlx_map_string_to_string_get(&mut p, m, k.as_ptr());
                        assert_eq!(rc, 0, "{}", last_error());
                        // The last value inserted under the key.
                        let want = kv.iter().rfind(|(kk, _)| kk == k).map(|(_, v)| v.clone());
                        assert_eq!(Some(CStr::from_ptr(p).to_owned()), want);
                    }
                    let it = sys::mlx_map_string_to_string_iterator_new(m);
                    self.made[Kind::Iterator as usize] += 1;
                    loop {
                        let mut k: *const c_char = std::ptr::null();
                        let mut v: *const c_char = std::ptr::null();
                        let rc = sys::mlx_map_string_to_string_iterator_next(&mut k, &mut v, it);
                        if rc != 0 {
                            assert_eq!(rc, 2, "{}", last_error());
                            break;
                        }
                    }
                    sys::mlx_map_string_to_string_iterator_free(it);
                    self.freed[Kind::Iterator as usize] += 1;
                    self.smaps.push(m);
                }
                6 => {
                    // Empty handles handed to container functions.
                    let e = sys::mlx_vector_array {
                        ctx: std::ptr::null_mut(),
                    };
                    let mut a = sys::mlx_array_new();
                    let rc = sys::mlx_vector_array_get(&mut a, e, 0);
                    self.status(rc, "vector_array_get(empty)");
                    assert!(a.ctx.is_null());
                    let rc = sys::mlx_vector_array_append_value(e, self.arg());
                    self.status(rc, "vector_array_append_value(empty)");
                    let m = sys::mlx_map_string_to_array {
                        ctx: std::ptr::null_mut(),
                    };
                    let rc = sys::mlx_map_string_to_array_insert(m, c"k".as_ptr(), self.arg());
                    self.status(rc, "map_string_to_array_insert(empty)");
                    let st = sys::mlx_string {
                        ctx: std::ptr::null_mut(),
                    };
                    let p = sys::mlx_string_data(st);
                    self.status(if p.is_null() { 1 } else { 0 }, "string_data(empty)");
                }
                7 => self.tostring(),
                _ => {
                    // Free a container.
                    match self.r.below(4) {
                        0 => {
                            if let Some(v) = self.vecs.pop() {
                                sys::mlx_vector_array_free(v);
                                self.freed[Kind::VecArray as usize] += 1;
                            }
                        }
                        1 => {
                            if let Some(s) = self.strings.pop() {
                                sys::mlx_string_free(s);
                                self.freed[Kind::String as usize] += 1;
                            }
                        }
                        2 => {
                            if let Some(m) = self.maps.pop() {
                                sys::mlx_map_string_to_array_free(m);
                                self.freed[Kind::MapArray as usize] += 1;
                            }
                        }
                        _ => {
                            if let Some(v) = self.vints.pop() {
                                sys::mlx_vector_int_free(v);
                                self.freed[Kind::VecInt as usize] += 1;
                            }
                        }
                    }
                }
            }
        }
    }

    fn step(&mut self) {
        match self.r.below(100) {
            0..=9 => self.new_data(),
            10..=11 => self.new_data_hostile(),
            12..=14 => self.new_scalar(),
            15..=18 => self.factory(),
            19..=28 => self.unary(),
            29..=38 => self.binary(),
            39..=44 => self.reduce(),
            45..=50 => self.axis_op(),
            51..=57 => self.shape_op(),
            58..=62 => self.slice(),
            63..=66 => self.take(),
            67..=69 => self.quant(),
            70..=73 => self.astype(),
            74..=76 => self.misc(),
            77..=83 => self.eval(),
            84..=90 => self.read(),
            91..=92 => self.copy(),
            93..=94 => self.free_one(),
            _ => self.containers(),
        }
    }

    /// Frees everything and checks that every handle made was freed once.
    fn finish(mut self) {
        unsafe {
            for e in std::mem::take(&mut self.arrays) {
                self.free_array(e.a);
            }
            for s in std::mem::take(&mut self.strings) {
                sys::mlx_string_free(s);
                self.freed[Kind::String as usize] += 1;
            }
            for v in std::mem::take(&mut self.vecs) {
                sys::mlx_vector_array_free(v);
                self.freed[Kind::VecArray as usize] += 1;
            }
            for v in std::mem::take(&mut self.vints) {
                sys::mlx_vector_int_free(v);
                self.freed[Kind::VecInt as usize] += 1;
            }
            for v in std::mem::take(&mut self.vstrs) {
                sys::mlx_vector_string_free(v);
                self.freed[Kind::VecString as usize] += 1;
            }
            for m in std::mem::take(&mut self.maps) {
                sys::mlx_map_string_to_array_free(m);
                self.freed[Kind::MapArray as usize] += 1;
            }
            for m in std::mem::take(&mut self.smaps) {
                sys::mlx_map_string_to_string_free(m);
                self.freed[Kind::MapString as usize] += 1;
            }
            // Whatever the program left in flight finishes before its arrays are judged gone.
            sys::mlx_synchronize(self.s);
            sys::mlx_stream_free(self.s);
            self.freed[Kind::Stream as usize] += 1;
        }
        assert_eq!(
            self.made, self.freed,
            "handles made vs freed per kind (seed {})",
            self.seed
        );
        self.stats.programs += 1;
        if self.new_class && self.stats.keep_firsts {
            let seen = std::mem::take(&mut self.seen).into_iter().collect();
            self.stats.firsts.push((self.seed, seen));
        }
    }
}

unsafe extern "C" fn never_called(_: *mut std::ffi::c_void) {
    // Reaching this means the C API freed data it had refused: the harness would then free it too.
    std::process::abort();
}

fn shape_of_or_empty(a: sys::mlx_array) -> Vec<i32> {
    if a.ctx.is_null() {
        vec![]
    } else {
        shape_of(a)
    }
}

fn transpose_shadow(sh: &Shadow, perm: &[i32]) -> Shadow {
    let st = sh.strides();
    let nd = sh.shape.len() as i32;
    let perm: Vec<usize> = perm
        .iter()
        .map(|&p| p.rem_euclid(nd.max(1)) as usize)
        .collect();
    let shape: Vec<i32> = perm.iter().map(|&p| sh.shape[p]).collect();
    let n = sh.bits.len();
    let mut bits = Vec::with_capacity(n);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..n {
        let off: usize = index.iter().zip(&perm).map(|(i, &p)| i * st[p]).sum();
        bits.push(sh.bits[off]);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] as usize {
                break;
            }
            index[d] = 0;
        }
    }
    Shadow { shape, bits }
}

/// numpy's slice semantics for one axis: the indices `start:stop:step` selects in `0..d`.
fn slice_axis(d: i64, start: i64, stop: i64, step: i64) -> Vec<i64> {
    let clamp = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
    let norm = |v: i64| if v < 0 { v + d } else { v };
    let mut out = vec![];
    if step > 0 {
        let (mut i, e) = (clamp(norm(start), 0, d), clamp(norm(stop), 0, d));
        while i < e {
            out.push(i);
            i += step;
        }
    } else {
        let (mut i, e) = (clamp(norm(start), -1, d - 1), clamp(norm(stop), -1, d - 1));
        while i > e {
            out.push(i);
            i += step;
        }
    }
    out
}

/// The values of a successful slice; `None` where the expected semantics are not modelled here
/// (a count of starts that is not one per axis).
fn slice_shadow(sh: &Shadow, start: &[i32], stop: &[i32], step: &[i32]) -> Option<Shadow> {
    if start.len() != sh.shape.len() || step.contains(&0) {
        return None;
    }
    let picks: Vec<Vec<i64>> = (0..sh.shape.len())
        .map(|j| {
            slice_axis(
                sh.shape[j] as i64,
                start[j] as i64,
                stop[j] as i64,
                step[j] as i64,
            )
        })
        .collect();
    let shape: Vec<i32> = picks.iter().map(|p| p.len() as i32).collect();
    let n = numel(&shape)? as usize;
    let st = sh.strides();
    let mut bits = Vec::with_capacity(n);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..n {
        let off: usize = index
            .iter()
            .enumerate()
            .map(|(d, &i)| picks[d][i] as usize * st[d])
            .sum();
        bits.push(sh.bits[off]);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] as usize {
                break;
            }
            index[d] = 0;
        }
    }
    Some(Shadow { shape, bits })
}

fn run_program(seed: u64, stats: &mut Stats) {
    if std::env::var("ZMLX_FUZZ_VERBOSE").is_ok() {
        // The last seed printed before a crash names the program that crashed.
        eprintln!("program {seed}");
    }
    let mut p = Program::new(seed, stats);
    let steps = 40 + p.r.below(200);
    // `ZMLX_FUZZ_STEPS`: run only the program's first steps (to find the call that breaks a case).
    let limit = std::env::var("ZMLX_FUZZ_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(steps);
    for _ in 0..steps.min(limit) {
        p.step();
        if p.trace && std::env::var("ZMLX_FUZZ_TRACE").is_ok_and(|v| v == "sync") {
            // Work left in flight by an async_eval shows up here, at the step that started it.
            let t = Instant::now();
            unsafe { sys::mlx_synchronize(p.s) };
            eprintln!("  synchronize: {:.3} s", t.elapsed().as_secs_f64());
        }
    }
    p.finish();
}

fn corpus_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus/capi.seeds")
}

/// Runs `f` on a thread and fails if the program seed in `current` stays the same for `stall` (a hang
/// fails the test instead of blocking the run).
fn with_watchdog(stall: Duration, current: Arc<AtomicU64>, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    let (mut last, mut since) = (u64::MAX, Instant::now());
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        let c = current.load(Ordering::SeqCst);
        if c != last {
            (last, since) = (c, Instant::now());
        } else if since.elapsed() > stall {
            panic!("program seed {c} made no progress for {stall:?}: a hang (ZMLX_FUZZ_CASE={c} replays it)");
        }
    }
    if let Err(e) = h.join() {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn fuzz_capi_programs() {
    let run = fuzz_seed("fuzz_capi_programs", 0xca91);
    let budget = fuzz_budget();
    let current = Arc::new(AtomicU64::new(0));
    let cur = current.clone();
    // A program is a few hundred calls on small arrays: well under a second unloaded.
    with_watchdog(Duration::from_secs(120), current, move || {
        let mut stats = Stats::default();
        let t0 = Instant::now();
        let single = std::env::var("ZMLX_FUZZ_CASE")
            .ok()
            .and_then(|v| v.parse().ok());
        let corpus = match single {
            Some(c) => vec![c],
            None => corpus_seeds(&corpus_path()),
        };
        for &c in &corpus {
            cur.store(c, Ordering::SeqCst);
            run_program(c, &mut stats);
        }
        let replayed = stats.programs;
        stats.keep_firsts = std::env::var("ZMLX_FUZZ_NEW_CORPUS").is_ok();
        let mut i = 0u64;
        while single.is_none() && t0.elapsed() < budget {
            let c = case_seed(run, i);
            cur.store(c, Ordering::SeqCst);
            run_program(c, &mut stats);
            i += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "fuzz_capi_programs: {} programs ({replayed} from the corpus), {} calls, {} errors in {} classes, {} evaluations, {} values checked, {secs:.1} s",
            stats.programs,
            stats.calls,
            stats.errors,
            stats.classes.len(),
            stats.evals,
            stats.values_checked
        );
        if stats.keep_firsts {
            // A few programs that together reach every class the corpus does not: greedily the one
            // that adds the most.
            let known: std::collections::HashSet<u64> = corpus.iter().copied().collect();
            let mut left: std::collections::BTreeSet<String> = stats
                .classes
                .iter()
                .filter(|(_, (_, seed))| !known.contains(seed))
                .map(|(c, _)| c.clone())
                .collect();
            let mut firsts = std::mem::take(&mut stats.firsts);
            while !left.is_empty() {
                let Some((i, gain)) = firsts
                    .iter()
                    .enumerate()
                    .map(|(i, (_, cs))| (i, cs.iter().filter(|c| left.contains(*c)).count()))
                    .max_by_key(|&(_, g)| g)
                    .filter(|&(_, g)| g > 0)
                else {
                    break;
                };
                let (seed, cs) = firsts.swap_remove(i);
                let new: Vec<&String> = cs.iter().filter(|c| left.contains(*c)).collect();
                eprintln!("new-corpus {seed} # {gain} new classes, e.g. {}", new[0]);
                for c in &cs {
                    left.remove(c);
                }
            }
        }
    });
}

// --- leaks ------------------------------------------------------------------------------------------------

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod heap {
    #[repr(C)]
    struct Mallinfo2 {
        arena: usize,
        ordblks: usize,
        smblks: usize,
        hblks: usize,
        hblkhd: usize,
        usmblks: usize,
        fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        keepcost: usize,
    }
    extern "C" {
        fn mallinfo2() -> Mallinfo2;
    }
    fn raw() -> u64 {
        let m = unsafe { mallinfo2() };
        (m.uordblks + m.hblkhd) as u64
    }
    /// Bytes allocated with malloc and not freed (all arenas, mmapped chunks included); `None` where
    /// glibc's malloc is not the one in use (a sanitizer's allocator).
    pub fn in_use() -> Option<u64> {
        let before = raw();
        let probe = std::hint::black_box(vec![1u8; 1 << 16]);
        let seen = raw().saturating_sub(before) >= 1 << 16;
        drop(probe);
        seen.then(raw)
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod heap {
    pub fn in_use() -> Option<u64> {
        None
    }
}

/// MLX's active memory (array buffers in use) and the malloc heap in use, after the stream is idle and
/// MLX's buffer cache is emptied.
fn memory() -> (u64, Option<u64>) {
    unsafe {
        let s = sys::mlx_default_cpu_stream_new();
        sys::mlx_synchronize(s);
        sys::mlx_stream_free(s);
        sys::mlx_clear_cache();
        let mut active = 0usize;
        sys::mlx_get_active_memory(&mut active);
        (active as u64, heap::in_use())
    }
}

const LEAK_REPS: usize = 12;

/// Runs the same programs `LEAK_REPS` times (with `extra` after each program) and returns how much MLX's
/// active memory and the heap grew from the end of the second repetition (caches warm) to the end of
/// the last.
fn growth(seeds: &[u64], extra: &dyn Fn()) -> (i64, Option<i64>) {
    let mut stats = Stats::default();
    let mut at = vec![];
    for _ in 0..LEAK_REPS {
        for &c in seeds {
            run_program(c, &mut stats);
            extra();
        }
        at.push(memory());
    }
    let ((a0, h0), (a1, h1)) = (at[1], at[LEAK_REPS - 1]);
    (
        a1 as i64 - a0 as i64,
        h0.zip(h1).map(|(x, y)| y as i64 - x as i64),
    )
}

/// Runs the named test of this binary in a child process whose malloc keeps no per-thread cache:
/// glibc counts the chunks in its thread caches as in use, which makes the heap drift by kilobytes as
/// they fill; without them the heap in use is exact.
fn in_child(test: &str) -> bool {
    const TUNABLE: &str = "glibc.malloc.tcache_count=0";
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|v| v.contains(TUNABLE)) {
        return false;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("GLIBC_TUNABLES", TUNABLE)
        .output()
        .expect("running the test in a child process");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{test} failed in the child process");
    true
}

/// Under this many bytes of heap growth over the repetitions, nothing leaked: a handle the programs
/// forgot once per program would be at least 6 x 10 x 32 bytes.
const HEAP_SLACK: i64 = 1024;

/// The programs free everything: replayed again and again, they leave MLX's active memory where it was
/// and the heap unchanged. (The harness itself counts the handles it makes and frees; this catches
/// what the C API could keep behind them.)
#[test]
fn capi_programs_leak_nothing() {
    if in_child("capi_programs_leak_nothing") {
        return;
    }
    let seeds: Vec<u64> = (0..6).map(|i| case_seed(0x1ea4, i)).collect();
    let (active, heap) = growth(&seeds, &|| {});
    eprintln!(
        "capi_programs_leak_nothing: growth over {} repetitions: active {active} B, heap {heap:?} B",
        LEAK_REPS - 2
    );
    assert_eq!(active, 0, "MLX's active memory grew");
    if let Some(h) = heap {
        assert!(h < HEAP_SLACK, "the heap grew by {h} bytes");
    }
}

/// The leak check sees a forgotten 1 KiB array and a forgotten string handle per program.
#[test]
fn capi_leak_check_sees_leaked_handles() {
    if in_child("capi_leak_check_sees_leaked_handles") {
        return;
    }
    let seeds: Vec<u64> = (0..6).map(|i| case_seed(0x1ea5, i)).collect();
    let leak = || unsafe {
        let data = [1.5f32; 256];
        let shape = [256];
        let a = sys::mlx_array_new_data(
            data.as_ptr().cast(),
            shape.as_ptr(),
            1,
            sys::mlx_dtype__MLX_FLOAT32,
        );
        assert!(!a.ctx.is_null());
        let s = sys::mlx_string_new_data(c"forgotten".as_ptr());
        assert!(!s.ctx.is_null());
    };
    let (active, heap) = growth(&seeds, &leak);
    eprintln!("capi_leak_check_sees_leaked_handles: active +{active} B, heap {heap:?} B");
    assert!(
        active >= 6 * 10 * 1024,
        "active memory grew by {active} B only"
    );
    if let Some(h) = heap {
        assert!(h >= HEAP_SLACK, "the heap grew by {h} bytes only");
    }
}

// --- what the harness found -------------------------------------------------------------------------------
// One test per crash, hang or wrong answer fuzz_capi_programs found in MLX 0.32.4 behind the C API; each
// failed before the C API's fix.

/// `f` fails with a message containing `want` and leaves its result handle empty.
fn fails(want: &str, f: impl FnOnce(&mut sys::mlx_array) -> c_int) {
    let mut r = unsafe { sys::mlx_array_new() };
    let rc = f(&mut r);
    let e = last_error();
    assert_ne!(rc, 0, "accepted (wanted an error with '{want}')");
    assert!(r.ctx.is_null());
    assert!(e.contains(want), "{e}");
}

/// Zeros of `shape`, not evaluated: a large or empty operand that costs nothing until something evaluates it.
fn lazy_zeros(shape: &[i32], dtype: sys::mlx_dtype, s: &Stream) -> Arr {
    let mut a = Arr::empty();
    check(
        unsafe { sys::mlx_zeros(&mut a.0, shape.as_ptr(), shape.len(), dtype, s.0) },
        "zeros",
    );
    a
}

fn weights(rows: usize, cols: usize) -> Arr {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0)
        .collect();
    f32s(&v, &[rows as i32, cols as i32])
}

/// Quantization sizes of zero: SIGFPE inside MLX (quantize divides by group_size; quantized_matmul,
/// gather_qmm and qqmm by bits) before.
#[test]
fn regression_quantization_sizes_of_zero_are_errors() {
    let s = Stream::cpu();
    let w = weights(8, 64);
    let zero = oi(Some(0));
    unsafe {
        let mut v = sys::mlx_vector_array_new();
        let rc = sys::mlx_quantize(
            &mut v,
            w.0,
            zero,
            oi(Some(4)),
            c"affine".as_ptr(),
            none(),
            s.0,
        );
        assert_ne!(rc, 0);
        assert!(
            last_error().contains("group_size must be positive, got 0"),
            "{}",
            last_error()
        );
        // A real quantization for the matmuls.
        check(
            sys::mlx_quantize(
                &mut v,
                w.0,
                oi(Some(32)),
                oi(Some(4)),
                c"affine".as_ptr(),
                none(),
                s.0,
            ),
            "quantize",
        );
        let part = |i| {
            let mut a = Arr::empty();
            check(sys::mlx_vector_array_get(&mut a.0, v, i), "vector get");
            a
        };
        let (q, sc, b) = (part(0), part(1), part(2));
        let x = weights(2, 64);
        let g = oi(Some(32));
        fails("bits must be positive, got 0", |r| {
            sys::mlx_quantized_matmul(
                r,
                x.0,
                q.0,
                sc.0,
                b.0,
                true,
                g,
                zero,
                c"affine".as_ptr(),
                s.0,
            )
        });
        fails("bits must be positive, got 0", |r| {
            sys::mlx_gather_qmm(
                r,
                x.0,
                q.0,
                sc.0,
                b.0,
                none(),
                none(),
                true,
                g,
                zero,
                c"affine".as_ptr(),
                false,
                s.0,
            )
        });
        fails("bits must be positive, got 0", |r| {
            sys::mlx_qqmm(
                r,
                x.0,
                q.0,
                sc.0,
                g,
                zero,
                c"mxfp4".as_ptr(),
                none(),
                none(),
                s.0,
            )
        });
        fails("group_size must be positive, got -32", |r| {
            sys::mlx_dequantize(
                r,
                q.0,
                sc.0,
                b.0,
                oi(Some(-32)),
                oi(Some(4)),
                c"affine".as_ptr(),
                none(),
                sys::mlx_optional_dtype {
                    value: 0,
                    has_value: false,
                },
                s.0,
            )
        });
        sys::mlx_vector_array_free(v);
    }
}

/// Quantized matrix products with an operand without elements (an empty batch, N or K of 0): SIGFPE
/// inside MLX's evaluation before (found by fuzz_capi_programs).
#[test]
fn regression_quantized_matmuls_of_empty_operands_are_errors() {
    let s = Stream::cpu();
    let w = weights(8, 64);
    let mut v = unsafe { sys::mlx_vector_array_new() };
    let g = oi(Some(64));
    let b4 = oi(Some(4));
    check(
        unsafe { sys::mlx_quantize(&mut v, w.0, g, b4, c"affine".as_ptr(), none(), s.0) },
        "quantize",
    );
    let part = |i| {
        let mut a = Arr::empty();
        check(
            unsafe { sys::mlx_vector_array_get(&mut a.0, v, i) },
            "vector get",
        );
        a
    };
    let (q, sc, b) = (part(0), part(1), part(2));
    let empty_x = f32s(&[], &[0, 64]);
    let empty_k = f32s(&[], &[2, 0]);
    let empty_w = new_arr::<u32>(&[], &[0, 8], sys::mlx_dtype__MLX_UINT32);
    for (x, w) in [(&empty_x, &q), (&empty_k, &q), (&weights(2, 64), &empty_w)] {
        fails("has no elements", |r| unsafe {
            sys::mlx_quantized_matmul(r, x.0, w.0, sc.0, b.0, true, g, b4, c"affine".as_ptr(), s.0)
        });
        fails("has no elements", |r| unsafe {
            sys::mlx_gather_qmm(
                r,
                x.0,
                w.0,
                sc.0,
                b.0,
                none(),
                none(),
                true,
                g,
                b4,
                c"affine".as_ptr(),
                false,
                s.0,
            )
        });
    }
    // A batch with rows still works.
    let mut r = Arr::empty();
    let x = weights(2, 64);
    check(
        unsafe {
            sys::mlx_quantized_matmul(
                &mut r.0,
                x.0,
                q.0,
                sc.0,
                b.0,
                true,
                g,
                b4,
                c"affine".as_ptr(),
                s.0,
            )
        },
        "quantized_matmul",
    );
    assert_eq!(r.values().len(), 16);
    unsafe { sys::mlx_vector_array_free(v) };
}

/// Triangles. Of an array without elements but with large other dimensions: MLX built the 2^36-element
/// mask of the last two dimensions first and crashed (SIGSEGV after 10 GB); tri(0, 2^31 - 1) allocated
/// 16 GB (a run of fuzz_capi_programs then ended in heap corruption). Both found by the harness.
/// Reductions of an array without elements over an empty axis and long ones: the result is the identity,
/// but MLX looped over the long reduced axes (~1.3e10 iterations per output element for `all` over
/// [3, 5, 65536, 2, 65536, 0] along axes 0, 2, 4, 5: a hang).
#[test]
fn regression_reductions_over_an_empty_axis_finish() {
    let s = Stream::cpu();
    let a = lazy_zeros(&[3, 5, 65536, 2, 65536, 0], sys::mlx_dtype__MLX_UINT64, &s);
    let t = Instant::now();
    let axes = [0, 2, -2, 5];
    let mut all = Arr::empty();
    check(
        unsafe { sys::mlx_all_axes(&mut all.0, a.0, axes.as_ptr(), 4, true, s.0) },
        "all_axes",
    );
    assert_eq!(common::shape_of(&all), vec![1, 5, 1, 2, 1, 1]);
    let mut any = Arr::empty();
    check(
        unsafe { sys::mlx_any_axis(&mut any.0, a.0, 5, false, s.0) },
        "any_axis",
    );
    assert_eq!(common::shape_of(&any), vec![3, 5, 65536, 2, 65536]);
    let mut sum = Arr::empty();
    check(unsafe { sys::mlx_sum(&mut sum.0, a.0, false, s.0) }, "sum");
    let mut flat = Arr::empty();
    check(
        unsafe { sys::mlx_astype(&mut flat.0, all.0, sys::mlx_dtype__MLX_FLOAT32, s.0) },
        "astype",
    );
    assert_eq!(flat.values(), vec![1.0; 10]);
    let mut sf = Arr::empty();
    check(
        unsafe { sys::mlx_astype(&mut sf.0, sum.0, sys::mlx_dtype__MLX_FLOAT32, s.0) },
        "astype",
    );
    assert_eq!(sf.values(), vec![0.0]);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// Matrix products without elements: MLX's CPU matmul of an empty batch of 65536 x 65536 matrices divides by
/// zero (SIGFPE) when evaluated. The C API returns zeros of the product's shape.
#[test]
fn regression_empty_matrix_products_are_zeros() {
    let s = Stream::cpu();
    for dt in [sys::mlx_dtype__MLX_FLOAT32, sys::mlx_dtype__MLX_COMPLEX64] {
        let shape = [0, 65536, 65536];
        let a = lazy_zeros(&shape, dt, &s);
        let mut m = Arr::empty();
        check(
            unsafe { sys::mlx_matmul(&mut m.0, a.0, a.0, s.0) },
            "matmul",
        );
        let mut c = Arr::empty();
        check(
            unsafe { sys::mlx_addmm(&mut c.0, a.0, a.0, a.0, 1.0, 1.0, s.0) },
            "addmm",
        );
        for (name, r) in [("matmul", &m), ("addmm", &c)] {
            check(unsafe { sys::mlx_array_eval(r.0) }, name);
            assert_eq!(common::shape_of(r), shape.to_vec(), "{name}");
        }
    }
    // Products with elements are still computed.
    let a = f32s(&[1., 2., 3., 4.], &[2, 2]);
    let mut r = Arr::empty();
    check(
        unsafe { sys::mlx_matmul(&mut r.0, a.0, a.0, s.0) },
        "matmul",
    );
    assert_eq!(r.values(), vec![7., 10., 15., 22.]);
}

/// Bool data bytes other than 0 and 1: reading one as a bool is undefined behaviour (UBSan found item_bool
/// loading 27). Both the copying and the in-place constructors refuse them.
#[test]
fn regression_bool_data_bytes_are_checked() {
    let bad = [0u8, 1, 27, 1];
    let shape = [4];
    let a = unsafe {
        sys::mlx_array_new_data(
            bad.as_ptr().cast(),
            shape.as_ptr(),
            1,
            sys::mlx_dtype__MLX_BOOL,
        )
    };
    assert!(a.ctx.is_null());
    let e = last_error();
    assert!(
        e.contains("bool data must hold bytes 0 or 1, but element 2 is 27"),
        "{e}"
    );
    let mut owned = bad;
    let m = unsafe {
        sys::mlx_array_new_data_managed(
            owned.as_mut_ptr().cast(),
            shape.as_ptr(),
            1,
            sys::mlx_dtype__MLX_BOOL,
            None,
        )
    };
    assert!(m.ctx.is_null());
    assert!(last_error().contains("bool data must hold bytes 0 or 1"));
    // 0 / 1 bytes make a bool array whose items read back.
    let good = [1u8];
    let g = Arr(unsafe {
        sys::mlx_array_new_data(
            good.as_ptr().cast(),
            shape.as_ptr(),
            0,
            sys::mlx_dtype__MLX_BOOL,
        )
    });
    assert!(!g.0.ctx.is_null(), "{}", last_error());
    let mut v = false;
    check(
        unsafe { sys::mlx_array_item_bool(&mut v, g.0) },
        "item_bool",
    );
    assert!(v);
}

/// A quantized (uint32) weight of fewer than 2 dimensions: MLX compared the batch dimensions of weight and
/// scales with a memcmp of size -8 (AddressSanitizer: negative-size-param), reading before the shape.
#[test]
fn regression_quantized_weights_need_two_dimensions() {
    let s = Stream::cpu();
    let x = f32s(&[0.5; 64], &[1, 64]);
    let w1 = new_arr(&[7u32; 8], &[8], sys::mlx_dtype__MLX_UINT32);
    let sc = f32s(&[0.25], &[1]);
    let bi = f32s(&[0.5], &[1]);
    let mode = c"affine";
    let (g, b) = (oi(Some(64)), oi(Some(4)));
    fails(
        "the quantized weight must have at least 2 dimensions",
        |r| unsafe {
            sys::mlx_quantized_matmul(r, x.0, w1.0, sc.0, bi.0, true, g, b, mode.as_ptr(), s.0)
        },
    );
    // Scales without the weight's batch dimensions.
    let w3 = new_arr(&[7u32; 32], &[2, 2, 8], sys::mlx_dtype__MLX_UINT32);
    let sc0 = new_arr(&[0.25f32], &[], sys::mlx_dtype__MLX_FLOAT32);
    fails(
        "the scales must have the weight's batch dimensions",
        |r| unsafe {
            sys::mlx_gather_qmm(
                r,
                x.0,
                w3.0,
                sc0.0,
                none(),
                none(),
                none(),
                true,
                g,
                b,
                mode.as_ptr(),
                false,
                s.0,
            )
        },
    );
    // A well-formed 2-D weight still multiplies.
    let w2 = new_arr(&[0x7654_3210u32; 16], &[2, 8], sys::mlx_dtype__MLX_UINT32);
    let sc2 = f32s(&[0.25, 0.5], &[2, 1]);
    let bi2 = f32s(&[-1.0, 1.0], &[2, 1]);
    let mut r = Arr::empty();
    check(
        unsafe {
            sys::mlx_quantized_matmul(
                &mut r.0,
                x.0,
                w2.0,
                sc2.0,
                bi2.0,
                true,
                g,
                b,
                mode.as_ptr(),
                s.0,
            )
        },
        "quantized_matmul",
    );
    assert_eq!(common::shape_of(&r), vec![1, 2]);
}

#[test]
fn regression_triangles_of_empty_arrays() {
    let s = Stream::cpu();
    let shape = [0, 1 << 20, 1 << 16];
    let z = lazy_zeros(&shape, sys::mlx_dtype__MLX_FLOAT32, &s);
    type Tri =
        unsafe extern "C" fn(*mut sys::mlx_array, sys::mlx_array, c_int, sys::mlx_stream) -> c_int;
    for (name, f) in [("tril", sys::mlx_tril as Tri), ("triu", sys::mlx_triu)] {
        let mut r = Arr::empty();
        check(unsafe { f(&mut r.0, z.0, 1, s.0) }, name);
        check(unsafe { sys::mlx_array_eval(r.0) }, "eval");
        assert_eq!(common::shape_of(&r), shape.to_vec(), "{name}");
    }
    // A triangle with elements is still computed, and an offset past the matrix is all or nothing
    // (it overflowed int inside MLX at the ends of int's range).
    let a = f32s(&[1., 2., 3., 4.], &[2, 2]);
    for (k, lower, want) in [
        (0, true, vec![1., 0., 3., 4.]),
        (i32::MIN, true, vec![0.; 4]),
        (i32::MAX, true, vec![1., 2., 3., 4.]),
        (i32::MIN, false, vec![1., 2., 3., 4.]),
        (i32::MAX, false, vec![0.; 4]),
    ] {
        let mut r = Arr::empty();
        let f = if lower { sys::mlx_tril } else { sys::mlx_triu };
        check(unsafe { f(&mut r.0, a.0, k, s.0) }, "tril/triu");
        assert_eq!(r.values(), want, "k {k} lower {lower}");
    }
    // tri far below the diagonal: MLX's arange(-k, m - k) overflowed int, and the result had shape
    // [2^31 - 1, 0] instead of [2^31 - 1, 3] (after an 8 GB arange). Not evaluated here: 6.4e9 elements.
    let mut r = Arr::empty();
    check(
        unsafe {
            sys::mlx_tri(
                &mut r.0,
                i32::MAX,
                3,
                i32::MIN,
                sys::mlx_dtype__MLX_FLOAT16,
                s.0,
            )
        },
        "tri",
    );
    assert_eq!(common::shape_of(&r), vec![i32::MAX, 3]);
    for (k, want) in [
        (i32::MIN, vec![0.; 6]),
        (-1, vec![0., 0., 0., 1., 0., 0.]),
        (0, vec![1., 0., 0., 1., 1., 0.]),
        (1, vec![1., 1., 0., 1., 1., 1.]),
        (i32::MAX, vec![1.; 6]),
    ] {
        let mut r = Arr::empty();
        check(
            unsafe { sys::mlx_tri(&mut r.0, 2, 3, k, sys::mlx_dtype__MLX_FLOAT32, s.0) },
            "tri",
        );
        assert_eq!(r.values(), want, "tri(2, 3, {k})");
    }
    // tri(0, 2^31 - 1) made two arange of n and m first: 16 GB for an empty result.
    let mut r = Arr::empty();
    let t0 = std::time::Instant::now();
    check(
        unsafe { sys::mlx_tri(&mut r.0, 0, i32::MAX, 0, sys::mlx_dtype__MLX_INT64, s.0) },
        "tri",
    );
    check(unsafe { sys::mlx_array_eval(r.0) }, "eval");
    assert_eq!(common::shape_of(&r), vec![0, i32::MAX]);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let mut r = Arr::empty();
    check(
        unsafe { sys::mlx_tri(&mut r.0, 2, 3, i32::MIN, sys::mlx_dtype__MLX_FLOAT32, s.0) },
        "tri",
    );
    assert_eq!(r.values(), vec![0.; 6]);
    fails("n and m must be non-negative", |r| unsafe {
        sys::mlx_tri(r, -1, 3, 0, sys::mlx_dtype__MLX_FLOAT32, s.0)
    });
}

/// Integer floor division and remainder by zero, and INT_MIN // -1: SIGFPE inside MLX's evaluation
/// before (found by fuzz_capi_programs). numpy's values: x // 0 = x % 0 = 0, x // -1 = -x (wrapping),
/// x % -1 = 0; other divisors as before (Python's floor semantics).
#[test]
fn regression_integer_division_by_zero() {
    let s = Stream::cpu();
    let a = i32s(&[7, -7, i32::MIN, 5, -9, 9], &[6]);
    let b = i32s(&[0, 2, -1, -1, 4, -4], &[6]);
    let read_i32 = |r: &Arr| -> Vec<i32> {
        check(unsafe { sys::mlx_array_eval(r.0) }, "eval");
        let p = unsafe { sys::mlx_array_data_int32(r.0) };
        assert!(!p.is_null(), "{}", last_error());
        unsafe { std::slice::from_raw_parts(p, 6) }.to_vec()
    };
    let want_q = vec![0, -4, i32::MIN, -5, -3, -3];
    let want_r = vec![0, 1, 0, 0, 3, -3];
    let mut q = Arr::empty();
    check(
        unsafe { sys::mlx_floor_divide(&mut q.0, a.0, b.0, s.0) },
        "floor_divide",
    );
    assert_eq!(read_i32(&q), want_q);
    let mut r = Arr::empty();
    check(
        unsafe { sys::mlx_remainder(&mut r.0, a.0, b.0, s.0) },
        "remainder",
    );
    assert_eq!(read_i32(&r), want_r);
    let mut v = unsafe { sys::mlx_vector_array_new() };
    check(unsafe { sys::mlx_divmod(&mut v, a.0, b.0, s.0) }, "divmod");
    for (i, want) in [(0, &want_q), (1, &want_r)] {
        let mut x = Arr::empty();
        check(unsafe { sys::mlx_vector_array_get(&mut x.0, v, i) }, "get");
        assert_eq!(&read_i32(&x), want);
    }
    unsafe { sys::mlx_vector_array_free(v) };
    // Unsigned, and a broadcast scalar zero.
    let u = new_arr(&[5u8, 200, 0], &[3], sys::mlx_dtype__MLX_UINT8);
    let z = new_arr(&[0u8], &[], sys::mlx_dtype__MLX_UINT8);
    let mut r = Arr::empty();
    check(
        unsafe { sys::mlx_remainder(&mut r.0, u.0, z.0, s.0) },
        "remainder",
    );
    assert_eq!(r.values(), vec![0.0, 0.0, 0.0]);
    // Floats keep IEEE semantics.
    let f = f32s(&[1.0, -1.0], &[2]);
    let fz = f32s(&[0.0, 0.0], &[2]);
    let mut r = Arr::empty();
    check(
        unsafe { sys::mlx_floor_divide(&mut r.0, f.0, fz.0, s.0) },
        "floor_divide",
    );
    assert_eq!(r.values(), vec![f32::INFINITY, f32::NEG_INFINITY]);
}

/// Slice strides: zero was SIGFPE; a stride near INT_MAX overflowed MLX's length computation and gave
/// an empty slice where numpy's semantics give one element.
#[test]
fn regression_slice_strides() {
    let s = Stream::cpu();
    let a = f32s(&[0., 1., 2., 3., 4., 5., 6., 7., 8., 9.], &[10]);
    let (start, stop) = ([1], [8]);
    for (step, want) in [
        (i32::MAX, vec![1.0]),
        (i32::MAX - 1, vec![1.0]),
        (3, vec![1.0, 4.0, 7.0]),
        (i32::MIN, vec![]),
        (-i32::MAX, vec![]),
    ] {
        let mut r = Arr::empty();
        let st = [step];
        check(
            unsafe {
                sys::mlx_slice(
                    &mut r.0,
                    a.0,
                    start.as_ptr(),
                    1,
                    stop.as_ptr(),
                    1,
                    st.as_ptr(),
                    1,
                    s.0,
                )
            },
            "slice",
        );
        assert_eq!(r.values(), want, "a[1:8:{step}]");
    }
    // Reversed, with the start past the end: numpy's a[8:1:-INT_MAX] is [8].
    let mut r = Arr::empty();
    let (b, e, st) = ([8], [1], [-i32::MAX]);
    check(
        unsafe {
            sys::mlx_slice(
                &mut r.0,
                a.0,
                b.as_ptr(),
                1,
                e.as_ptr(),
                1,
                st.as_ptr(),
                1,
                s.0,
            )
        },
        "slice",
    );
    assert_eq!(r.values(), vec![8.0]);
    let zero = [0];
    fails("slice strides must be non-zero", |r| unsafe {
        sys::mlx_slice(
            r,
            a.0,
            start.as_ptr(),
            1,
            stop.as_ptr(),
            1,
            zero.as_ptr(),
            1,
            s.0,
        )
    });
    let u = f32s(&[5.0], &[1]);
    fails("slice strides must be non-zero", |r| unsafe {
        sys::mlx_slice_update(
            r,
            a.0,
            u.0,
            start.as_ptr(),
            1,
            stop.as_ptr(),
            1,
            zero.as_ptr(),
            1,
            s.0,
        )
    });
}

/// Float indices of take_along_axis / put_along_axis / scatter_add_axis were accepted and failed inside
/// the CPU back end while evaluating; with async evaluation that left the stream's count of tasks in
/// flight wrong and the next evaluation waited forever.
/// hadamard_transform of a last dimension that is not m * 2^k (m in 1, 12, 20, 28): MLX divided out 12
/// from 60 and ran its power-of-two butterfly on 5, writing past the output (heap corruption).
#[test]
fn regression_hadamard_sizes_are_checked() {
    let s = Stream::cpu();
    for n in [3, 5, 6, 24 * 5, 60, 36, 1 << 27] {
        // Lazy zeros: the check comes before anything is allocated.
        let a = lazy_zeros(&[1, n], sys::mlx_dtype__MLX_FLOAT32, &s);
        fails(
            "[hadamard_transform] the last dimension must be m * 2^k",
            |r| unsafe { hadamard(r, a.0, s.0) },
        );
    }
    // Supported sizes still transform: H2 of [1, 2] / sqrt(2), and 12 * 2 and 20 run.
    let a = f32s(&[1., 2.], &[2]);
    let mut r = Arr::empty();
    check(
        unsafe { hadamard(&mut r.0, a.0, s.0) },
        "hadamard_transform",
    );
    let h = 1.0 / 2f32.sqrt();
    let got = r.values();
    assert!(
        (got[0] - 3. * h).abs() < 1e-6 && (got[1] + h).abs() < 1e-6,
        "{got:?}"
    );
    for n in [1, 12, 24, 20, 28, 56, 1024] {
        let a = weights(2, n as usize);
        let mut r = Arr::empty();
        check(
            unsafe { hadamard(&mut r.0, a.0, s.0) },
            "hadamard_transform",
        );
        check(unsafe { sys::mlx_array_eval(r.0) }, "eval");
    }
}

#[test]
fn regression_float_indices_along_an_axis_are_errors() {
    let s = Stream::cpu();
    let a = f32s(&[1., 2., 3., 4.], &[4]);
    let idx = f32s(&[0., 1.], &[2]);
    let v = f32s(&[5., 6.], &[2]);
    let want = "indices must have an integer dtype, got float32";
    fails(want, |r| unsafe {
        sys::mlx_take_along_axis(r, a.0, idx.0, 0, s.0)
    });
    fails(want, |r| unsafe {
        sys::mlx_put_along_axis(r, a.0, idx.0, v.0, 0, s.0)
    });
    fails(want, |r| unsafe {
        sys::mlx_scatter_add_axis(r, a.0, idx.0, v.0, 0, s.0)
    });
    // Integer indices still work.
    let good = i32s(&[3, 0], &[2]);
    let mut r = Arr::empty();
    check(
        unsafe { sys::mlx_take_along_axis(&mut r.0, a.0, good.0, 0, s.0) },
        "take_along_axis",
    );
    assert_eq!(r.values(), vec![4.0, 1.0]);
}

/// Shapes MLX lets through: reshape to negative sizes other than -1 (an array of shape (-2, -3)), and
/// shapes whose element count overflows (an array of 2^64 elements and size 0, whose slices read
/// memory it does not have).
#[test]
fn regression_result_shapes_are_checked() {
    let s = Stream::cpu();
    let a = f32s(&[1., 2., 3., 4., 5., 6.], &[6]);
    let neg = [-2, -3];
    fails("has a negative dimension", |r| unsafe {
        sys::mlx_reshape(r, a.0, neg.as_ptr(), 2, s.0)
    });
    let empty = f32s(&[], &[0]);
    let huge = [65536; 4];
    fails("has more elements than int64 counts", |r| unsafe {
        sys::mlx_reshape(r, empty.0, huge.as_ptr(), 4, s.0)
    });
    let neg0 = [2, i32::MIN, 0];
    fails("has a negative dimension", |r| unsafe {
        sys::mlx_reshape(r, empty.0, neg0.as_ptr(), 3, s.0)
    });
    // -1 still infers.
    let mut r = Arr::empty();
    let inf = [-1, 3];
    check(
        unsafe { sys::mlx_reshape(&mut r.0, a.0, inf.as_ptr(), 2, s.0) },
        "reshape",
    );
    assert_eq!(common::shape_of(&r), vec![2, 3]);
}

/// Reductions over the zero-length axis of an empty transposed array: MLX's CPU reduction planned its
/// loops from uninitialised values and could run for hours (it hung in most runs of this loop).
#[test]
fn regression_reductions_of_empty_transposed_arrays_finish() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let s = Stream::cpu();
        let a = f32s(&[], &[4, 0]);
        let perm = [1, 0];
        let mut t = Arr::empty();
        check(
            unsafe { sys::mlx_transpose_axes(&mut t.0, a.0, perm.as_ptr(), 2, s.0) },
            "transpose",
        );
        type AxisOp = unsafe extern "C" fn(
            *mut sys::mlx_array,
            sys::mlx_array,
            c_int,
            bool,
            sys::mlx_stream,
        ) -> c_int;
        let ops: [(&str, AxisOp, f32); 6] = [
            ("sum", sys::mlx_sum_axis, 0.0),
            ("prod", sys::mlx_prod_axis, 1.0),
            ("mean", sys::mlx_mean_axis, f32::NAN),
            ("all", sys::mlx_all_axis, 1.0),
            ("any", sys::mlx_any_axis, 0.0),
            ("count_nonzero", sys::mlx_count_nonzero_axis, 0.0),
        ];
        for _ in 0..100 {
            for (name, f, want) in ops {
                let mut r = Arr::empty();
                check(unsafe { f(&mut r.0, t.0, 0, false, s.0) }, name);
                let v = r.values();
                assert_eq!(v.len(), 4, "{name}");
                assert!(
                    v.iter()
                        .all(|x| x.to_bits() == want.to_bits() || (x.is_nan() && want.is_nan())),
                    "{name}: {v:?}"
                );
            }
            let mut r = Arr::empty();
            check(
                unsafe { sys::mlx_var_axis(&mut r.0, t.0, 0, false, 0, s.0) },
                "var",
            );
            assert!(r.values().iter().all(|x| x.is_nan()));
        }
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(300))
        .expect("700 reductions of empty arrays did not finish in 300 s");
}

/// MLX's scatter throws a bare string for boolean indices: the message reaches the caller (it was
/// "unknown C++ exception").
#[test]
fn regression_string_exceptions_keep_their_message() {
    let s = Stream::cpu();
    let a = f32s(&[1., 2., 3.], &[3]);
    let idx = new_arr(&[1u8, 0], &[2], sys::mlx_dtype__MLX_BOOL);
    let upd = f32s(&[7., 8.], &[2, 1]);
    fails("Boolean indices not supported", |r| unsafe {
        sys::mlx_scatter_single(r, a.0, idx.0, upd.0, 0, s.0)
    });
}
