//! Kernel timing of the fused MoE ops on one Qwen3-30B-A3B MoE layer (D 2048, I 768, E 128, top-8,
//! 4-bit affine, group 64, bfloat16), against the machine's measured read bandwidth and MLX's composed
//! path. Not part of the regular test run (ignored); run with
//!   cargo test --release --test fused_bench -- --ignored --nocapture
//! Environment: FUSED_BENCH_T (comma-separated token counts, default "1,4,16,64"),
//! FUSED_BENCH_COMPOSED_MAX_T (largest T also timed through the composed path, default 16),
//! FUSED_BENCH_ITERS (timed iterations per T; default 50 for T <= 4, 10 up to 64, else 3),
//! FUSED_BENCH_DTYPE (activation / scale dtype: bf16 (default), f16 or f32).

use std::ffi::{c_int, c_void, CStr, CString};
use std::time::Instant;

use mlx_sys as sys;
use zmlx::ffi;

const D: usize = 2048;
const I: usize = 768;
const E: usize = 128;
const TOPK: usize = 8;
const GROUP: usize = 64;
const BITS: usize = 4;

struct Arr(sys::mlx_array);

impl Drop for Arr {
    fn drop(&mut self) {
        if !self.0.ctx.is_null() {
            unsafe { sys::mlx_array_free(self.0) };
        }
    }
}

fn none() -> sys::mlx_array {
    sys::mlx_array {
        ctx: std::ptr::null_mut(),
    }
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(sys::mlx_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn new_arr<T>(data: &[T], shape: &[usize], dtype: sys::mlx_dtype) -> Arr {
    let shape: Vec<c_int> = shape.iter().map(|&d| d as c_int).collect();
    let a = unsafe {
        sys::mlx_array_new_data(
            data.as_ptr().cast::<c_void>(),
            shape.as_ptr(),
            shape.len() as c_int,
            dtype,
        )
    };
    assert!(!a.ctx.is_null(), "{}", last_error());
    Arr(a)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The dtype of activations, scales and biases (FUSED_BENCH_DTYPE).
fn bench_dtype() -> (sys::mlx_dtype, &'static str) {
    match std::env::var("FUSED_BENCH_DTYPE").as_deref() {
        Ok("f32") => (sys::mlx_dtype__MLX_FLOAT32, "float32"),
        Ok("f16") => (sys::mlx_dtype__MLX_FLOAT16, "float16"),
        _ => (sys::mlx_dtype__MLX_BFLOAT16, "bfloat16"),
    }
}

/// `a` (bfloat16) in the benchmark dtype, evaluated.
fn in_dtype(a: Arr) -> Arr {
    let (dt, _) = bench_dtype();
    if dt == sys::mlx_dtype__MLX_BFLOAT16 {
        return a;
    }
    let s = unsafe { sys::mlx_default_cpu_stream_new() };
    let mut r = Arr(unsafe { sys::mlx_array_new() });
    assert_eq!(
        unsafe { sys::mlx_astype(&mut r.0, a.0, dt, s) },
        0,
        "{}",
        last_error()
    );
    assert_eq!(unsafe { sys::mlx_array_eval(r.0) }, 0, "{}", last_error());
    unsafe { sys::mlx_stream_free(s) };
    r
}

fn bf16(v: f32) -> u16 {
    let u = v.to_bits();
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// A projection of all E experts with random codes, scales and biases ([E, rows, cols] logical).
struct Proj {
    w: Arr,
    scales: Arr,
    biases: Arr,
}

fn proj(rng: &mut Rng, rows: usize, cols: usize) -> Proj {
    let words: Vec<u32> = (0..E * rows * cols * BITS / 32)
        .map(|_| rng.next() as u32)
        .collect();
    let g = E * rows * cols / GROUP;
    let scales: Vec<u16> = (0..g).map(|_| bf16(0.002 + 0.004 * rng.unit())).collect();
    let biases: Vec<u16> = (0..g).map(|_| bf16(-0.03 * rng.unit())).collect();
    Proj {
        w: new_arr(
            &words,
            &[E, rows, cols * BITS / 32],
            sys::mlx_dtype__MLX_UINT32,
        ),
        scales: in_dtype(new_arr(
            &scales,
            &[E, rows, cols / GROUP],
            sys::mlx_dtype__MLX_BFLOAT16,
        )),
        biases: in_dtype(new_arr(
            &biases,
            &[E, rows, cols / GROUP],
            sys::mlx_dtype__MLX_BFLOAT16,
        )),
    }
}

fn oi(v: usize) -> sys::mlx_optional_int {
    sys::mlx_optional_int {
        value: v as c_int,
        has_value: true,
    }
}

fn no_float() -> sys::mlx_optional_float {
    sys::mlx_optional_float {
        value: 0.0,
        has_value: false,
    }
}

struct Layer {
    gate: Proj,
    up: Proj,
    down: Proj,
}

/// One layer forward: (x [T,1,1,D] bf16, idx [T,8], scores [T,8] bf16) -> [T,1,D].
fn forward(l: &Layer, x: &Arr, idx: &Arr, scores: &Arr, composed: bool, s: sys::mlx_stream) -> Arr {
    let mode = CString::new("affine").unwrap();
    let mut h = Arr(unsafe { sys::mlx_array_new() });
    let f = if composed {
        ffi::mlx_gather_qmm_swiglu_reference
    } else {
        ffi::mlx_gather_qmm_swiglu
    };
    let rc = unsafe {
        f(
            &mut h.0,
            x.0,
            l.gate.w.0,
            l.gate.scales.0,
            l.gate.biases.0,
            l.up.w.0,
            l.up.scales.0,
            l.up.biases.0,
            none(),
            idx.0,
            true,
            oi(GROUP),
            oi(BITS),
            mode.as_ptr(),
            false,
            std::ptr::null(),
            no_float(),
            no_float(),
            none(),
            none(),
            s,
        )
    };
    assert_eq!(rc, 0, "swiglu: {}", last_error());
    // h: [T, 8, 1, I] -> combine with the down projection.
    let mut y = Arr(unsafe { sys::mlx_array_new() });
    let f = if composed {
        ffi::mlx_gather_qmm_combine_reference
    } else {
        ffi::mlx_gather_qmm_combine
    };
    let rc = unsafe {
        f(
            &mut y.0,
            h.0,
            l.down.w.0,
            l.down.scales.0,
            l.down.biases.0,
            idx.0,
            scores.0,
            true,
            oi(GROUP),
            oi(BITS),
            mode.as_ptr(),
            none(),
            s,
        )
    };
    assert_eq!(rc, 0, "combine: {}", last_error());
    y
}

fn inputs(rng: &mut Rng, t: usize) -> (Arr, Arr, Arr) {
    let x: Vec<u16> = (0..t * D).map(|_| bf16(rng.unit() * 2.0 - 1.0)).collect();
    let mut idx = Vec::with_capacity(t * TOPK);
    for _ in 0..t {
        let mut chosen: Vec<u32> = Vec::new();
        while chosen.len() < TOPK {
            let e = (rng.next() % E as u64) as u32;
            if !chosen.contains(&e) {
                chosen.push(e);
            }
        }
        idx.extend(chosen);
    }
    let sc: Vec<u16> = (0..t * TOPK)
        .map(|_| bf16(rng.unit() / TOPK as f32))
        .collect();
    (
        in_dtype(new_arr(&x, &[t, 1, 1, D], sys::mlx_dtype__MLX_BFLOAT16)),
        new_arr(&idx, &[t, TOPK], sys::mlx_dtype__MLX_UINT32),
        in_dtype(new_arr(&sc, &[t, TOPK], sys::mlx_dtype__MLX_BFLOAT16)),
    )
}

/// Median seconds of `iters` evaluations of a fresh layer forward (fresh random routing each time, so
/// that the selected experts' weights are not already in the caches).
fn time_forward(
    l: &Layer,
    rng: &mut Rng,
    t: usize,
    iters: usize,
    composed: bool,
    s: sys::mlx_stream,
) -> f64 {
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let (x, idx, sc) = inputs(rng, t);
        for a in [&x, &idx, &sc] {
            assert_eq!(unsafe { sys::mlx_array_eval(a.0) }, 0);
        }
        let y = forward(l, &x, &idx, &sc, composed, s);
        let t0 = Instant::now();
        assert_eq!(unsafe { sys::mlx_array_eval(y.0) }, 0, "{}", last_error());
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

/// Bytes of weights, scales and biases of `experts` experts across the three projections.
fn layer_bytes(experts: usize) -> f64 {
    let scale_bytes = if bench_dtype().0 == sys::mlx_dtype__MLX_FLOAT32 {
        4
    } else {
        2
    };
    let per = I * D * BITS / 8 + 2 * (I * D / GROUP) * scale_bytes;
    (experts * 3 * per) as f64
}

#[test]
#[ignore = "benchmark: cargo test --release --test fused_bench -- --ignored --nocapture"]
fn qwen3_moe_layer() {
    let threads = zmlx::membw::available_threads();
    let bw = zmlx::membw::measure_read(1 << 30, threads, 5).expect("bandwidth");
    println!(
        "read bandwidth: {:.1} GB/s ({} threads, {} MiB buffer)",
        bw.gb_per_sec(),
        bw.threads,
        bw.buffer_bytes >> 20
    );
    let mut lvl: *const std::ffi::c_char = std::ptr::null();
    unsafe { ffi::mlx_moe_simd_level(&mut lvl) };
    let mut nt = 0;
    unsafe { ffi::mlx_moe_num_threads(&mut nt) };
    println!(
        "fused kernels: simd {}, {} threads; {}",
        unsafe { CStr::from_ptr(lvl) }.to_string_lossy(),
        nt,
        bench_dtype().1
    );
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let layer = Layer {
        gate: proj(&mut rng, I, D),
        up: proj(&mut rng, I, D),
        down: proj(&mut rng, D, I),
    };
    let s = unsafe { sys::mlx_default_cpu_stream_new() };
    for p in [&layer.gate, &layer.up, &layer.down] {
        for a in [&p.w, &p.scales, &p.biases] {
            assert_eq!(unsafe { sys::mlx_array_eval(a.0) }, 0);
        }
    }
    let ts: Vec<usize> = std::env::var("FUSED_BENCH_T")
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16, 64]);
    let composed_max: usize = std::env::var("FUSED_BENCH_COMPOSED_MAX_T")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    // Warm-up (thread pool start, page faults of the weights).
    time_forward(&layer, &mut rng, 1, 3, false, s);
    for &t in &ts {
        let iters = std::env::var("FUSED_BENCH_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if t <= 4 {
                50
            } else if t <= 64 {
                10
            } else {
                3
            });
        let fused = time_forward(&layer, &mut rng, t, iters, false, s);
        // Distinct experts touched (expected value for random routing).
        let touched = E as f64 * (1.0 - (1.0 - TOPK as f64 / E as f64).powi(t as i32));
        let gbs = layer_bytes(touched.round() as usize) / fused / 1e9;
        print!(
            "T={t:4}: fused {:8.3} ms  ({:5.1} GB/s of expert weights, {:5.1}% of read bandwidth)",
            fused * 1e3,
            gbs,
            100.0 * gbs / bw.gb_per_sec()
        );
        if t <= composed_max {
            let composed = time_forward(&layer, &mut rng, t, if t == 1 { 3 } else { 1 }, true, s);
            print!(
                "   composed {:9.2} ms  speedup {:6.1}x",
                composed * 1e3,
                composed / fused
            );
        }
        println!();
    }
    unsafe { sys::mlx_stream_free(s) };
}
