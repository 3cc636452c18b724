//! Foundation smoke test: arrays through the C API, quantize → gather_qmm on the CPU, checked against a
//! float64 computation done here from the dequantized weights. Also checks that errors come back as
//! status codes with a message (the process must not exit).

use std::ffi::{CStr, CString};

use mlx_sys as sys;

mod common;
use common::*;

/// Deterministic pseudo-random floats in [-1, 1) (xorshift; a fresh seed per call site).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9)
}

#[test]
fn quantize_gather_qmm_matches_float64() {
    let (t, e, n, k) = (5usize, 4usize, 24usize, 192usize);
    let seed = seed();
    let x = random(t * k, seed);
    let w = random(e * n * k, seed.wrapping_mul(31));
    let idx: Vec<u32> = (0..t)
        .map(|i| ((seed as usize + 7 * i) % e) as u32)
        .collect();

    let s = stream();
    let mode = CString::new("affine").unwrap();
    let group = sys::mlx_optional_int {
        value: 64,
        has_value: true,
    };
    let bits = sys::mlx_optional_int {
        value: 4,
        has_value: true,
    };
    let none = sys::mlx_array {
        ctx: std::ptr::null_mut(),
    };

    let xa = f32s(&x, &[t as i32, 1, k as i32]);
    let wa = f32s(&w, &[e as i32, n as i32, k as i32]);
    let ia = u32s(&idx, &[t as i32]);

    unsafe {
        let mut parts = sys::mlx_vector_array_new();
        check(
            sys::mlx_quantize(&mut parts, wa.0, group, bits, mode.as_ptr(), none, s),
            "quantize",
        );
        assert_eq!(sys::mlx_vector_array_size(parts), 3);
        let get = |i| {
            let mut a = sys::mlx_array_new();
            check(sys::mlx_vector_array_get(&mut a, parts, i), "vector get");
            Arr(a)
        };
        let (wq, scales, biases) = (get(0), get(1), get(2));
        sys::mlx_vector_array_free(parts);
        assert_eq!(shape_of(&wq), vec![e as i32, n as i32, (k * 4 / 32) as i32]);

        let mut deq = Arr::empty();
        let f32_ = sys::mlx_optional_dtype {
            value: sys::mlx_dtype__MLX_FLOAT32,
            has_value: true,
        };
        check(
            sys::mlx_dequantize(
                &mut deq.0,
                wq.0,
                scales.0,
                biases.0,
                group,
                bits,
                mode.as_ptr(),
                none,
                f32_,
                s,
            ),
            "dequantize",
        );
        let wd = deq.values();

        let mut out = Arr::empty();
        check(
            sys::mlx_gather_qmm(
                &mut out.0,
                xa.0,
                wq.0,
                scales.0,
                biases.0,
                none,
                ia.0,
                true,
                group,
                bits,
                mode.as_ptr(),
                false,
                s,
            ),
            "gather_qmm",
        );
        assert_eq!(shape_of(&out), vec![t as i32, 1, n as i32]);
        let got = out.values();

        let mut max_err = 0f64;
        let mut max_ref = 0f64;
        for ti in 0..t {
            let ex = idx[ti] as usize;
            for ni in 0..n {
                let mut acc = 0f64;
                for ki in 0..k {
                    acc += x[ti * k + ki] as f64 * wd[(ex * n + ni) * k + ki] as f64;
                }
                max_ref = max_ref.max(acc.abs());
                max_err = max_err.max((acc - got[ti * n + ni] as f64).abs());
            }
        }
        assert!(
            max_ref > 0.1,
            "degenerate reference (max |ref| = {max_ref})"
        );
        assert!(
            max_err / max_ref < 1e-5,
            "gather_qmm vs float64: relative error {} (seed {seed})",
            max_err / max_ref
        );

        // Quantization error itself is bounded: dequantized weights are close to the originals.
        let qerr = w
            .iter()
            .zip(&wd)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(qerr < 0.2, "4-bit affine dequantization error {qerr}");
        sys::mlx_stream_free(s);
    }
}

#[test]
fn errors_return_status_and_message() {
    unsafe {
        let s = stream();
        let a = f32s(&[1.0, 2.0, 3.0], &[3]);
        let b = f32s(&[1.0, 2.0], &[2]);
        let mut out = Arr::empty();
        // Shapes [3] and [2] do not broadcast: an error, not an exit.
        let rc = sys::mlx_add(&mut out.0, a.0, b.0, s);
        assert_ne!(rc, 0);
        assert!(!last_error().is_empty());

        // An empty handle is an error too.
        let empty = sys::mlx_array_new();
        assert_ne!(sys::mlx_add(&mut out.0, empty, b.0, s), 0);
        assert!(last_error().contains("empty"), "{}", last_error());

        // Bad quantization parameters.
        let mode = CString::new("affine").unwrap();
        let mut parts = sys::mlx_vector_array_new();
        let rc = sys::mlx_quantize(
            &mut parts,
            a.0,
            sys::mlx_optional_int {
                value: 7,
                has_value: true,
            },
            sys::mlx_optional_int {
                value: 4,
                has_value: true,
            },
            mode.as_ptr(),
            empty,
            s,
        );
        assert_ne!(rc, 0);
        sys::mlx_vector_array_free(parts);

        // A wrong typed accessor reports instead of reinterpreting.
        assert!(sys::mlx_array_data_int32(a.0).is_null());
        let mut v = 0i32;
        assert_ne!(sys::mlx_array_item_int32(&mut v, a.0), 0);
        sys::mlx_stream_free(s);
    }
}

#[test]
fn version_and_half_types() {
    unsafe {
        let mut s = sys::mlx_string_new();
        check(sys::mlx_version(&mut s), "version");
        let v = CStr::from_ptr(sys::mlx_string_data(s))
            .to_string_lossy()
            .into_owned();
        sys::mlx_string_free(s);
        assert!(v.starts_with(sys::MLX_VERSION), "libmlx reports {v}");

        // float16 / bfloat16 accessors work on x86_64 too.
        let a = f32s(&[1.5], &[1]);
        let cpu = stream();
        for (dt, bits) in [
            (sys::mlx_dtype__MLX_FLOAT16, 0x3e00u16),
            (sys::mlx_dtype__MLX_BFLOAT16, 0x3fc0u16),
        ] {
            let mut h = Arr::empty();
            check(sys::mlx_astype(&mut h.0, a.0, dt, cpu), "astype");
            check(sys::mlx_array_eval(h.0), "eval");
            if dt == sys::mlx_dtype__MLX_FLOAT16 {
                let mut v = sys::float16_t::default();
                check(sys::mlx_array_item_float16(&mut v, h.0), "item_float16");
                assert_eq!(v.0, bits);
                assert_eq!((*sys::mlx_array_data_float16(h.0)).0, bits);
            } else {
                let mut v: sys::bfloat16_t = 0;
                check(sys::mlx_array_item_bfloat16(&mut v, h.0), "item_bfloat16");
                assert_eq!(v, bits);
                assert_eq!(*sys::mlx_array_data_bfloat16(h.0), bits);
            }
        }
        sys::mlx_stream_free(cpu);
    }
}
