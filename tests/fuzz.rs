//! Randomized hostile inputs, each checked to end in a value or an error — never a panic, an abort, a
//! signal or a hang: mutated model configs (parsed, and built when small), mutated checkpoint files
//! (loaded), and random fused-op arguments (shapes, dtypes, modes, indices in and out of range) on the CPU.
//!
//! `ZMLX_FUZZ_SECS` (default 3) is the time per harness; `ZMLX_FUZZ_SEED` replays a run (each harness
//! prints the value that replays it). A crash kills the test process, so CI sees it as a failure.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zmlx::mlx_rs::{Array, Dtype};
use zmlx::models::{self, qwen3_moe};
use zmlx::moe::Activation;
use zmlx::quant::{quantize, QuantMode};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

fn budget() -> Duration {
    let s = std::env::var("ZMLX_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s.max(0.0))
}

/// The harness's generator seed. The value to replay it with (`ZMLX_FUZZ_SEED`) goes straight to the
/// process's stderr, past the test harness's output capture, so a run that dies of a signal still shows it.
fn seed(name: &str, salt: u64) -> u64 {
    let s = std::env::var("ZMLX_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{name}: ZMLX_FUZZ_SEED={s}");
    (s ^ salt) | 1
}

/// A value of a random kind: numbers at the edges, wrong types, null.
fn hostile(r: &mut Rng) -> Value {
    match r.below(12) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(i64::MAX),
        3 => json!(i32::MAX),
        4 => json!(1u64 << 33),
        5 => json!(r.below(70_000)),
        6 => json!(1.5),
        7 => json!(f64::MAX),
        8 => json!("7"),
        9 => Value::Null,
        10 => json!([1, 2]),
        _ => json!({}),
    }
}

fn mutate(c: &mut Value, r: &mut Rng) {
    let keys: Vec<String> = c
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    for _ in 0..=r.below(3) {
        let k = r.pick(&keys).clone();
        if r.below(5) == 0 {
            if let Some(o) = c.as_object_mut() {
                o.remove(&k);
            }
        } else {
            c[&k] = hostile(r);
        }
    }
}

#[test]
fn fuzz_model_configs() {
    let s = seed("fuzz_model_configs", 0xc0f1);
    let mut r = Rng(s);
    let bases = [
        qwen3_moe::config_json(64, 2, 4, 2, 16, 4, 2, 32, 128, "bfloat16"),
        models::preset("gpt-oss-tiny").unwrap().config,
        models::preset("qwen3-mini").unwrap().config,
    ];
    let t0 = Instant::now();
    let (mut n, mut ok, mut built) = (0, 0, 0);
    while t0.elapsed() < budget() || n < 20 {
        let mut c = r.pick(&bases).clone();
        mutate(&mut c, &mut r);
        n += 1;
        if let Ok(cfg) = models::ModelConfig::from_json(&c) {
            ok += 1;
            // Build some of the ones that stay small.
            if r.below(4) == 0
                && zmlx::models::synthetic::param_count(&cfg) < 500_000
                && models::synthesize(&c, 1, &mut |_, _, _| {}).is_ok()
            {
                built += 1;
            }
        }
    }
    eprintln!("fuzz_model_configs: {n} configs, {ok} accepted, {built} built");
}

#[test]
fn fuzz_checkpoint_files() {
    let s = seed("fuzz_checkpoint_files", 0xc4ec);
    let mut r = Rng(s);
    let dir = std::env::temp_dir().join(format!("zmlx-fuzz-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let preset = models::preset("qwen3-mini").unwrap();
    let (_, tensors) = models::synthesize(&preset.config, 3, &mut |_, _, _| {}).unwrap();
    models::save(&dir, &preset.config, &tensors).unwrap();
    let good = std::fs::read(dir.join("model.safetensors")).unwrap();
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < budget() || n < 20 {
        let mut bytes = good.clone();
        match r.below(4) {
            // Flip bytes in the header (JSON: offsets, shapes, dtypes) or anywhere.
            0 | 1 => {
                let hdr = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                let span = if r.below(2) == 0 {
                    hdr.min(bytes.len())
                } else {
                    bytes.len()
                };
                for _ in 0..=r.below(8) {
                    let i = r.below(span as u64) as usize;
                    bytes[i] = r.next() as u8;
                }
            }
            // Truncate.
            2 => bytes.truncate(r.below(bytes.len() as u64) as usize),
            // A wrong header length.
            _ => bytes[..8].copy_from_slice(&(r.next() >> r.below(64)).to_le_bytes()),
        }
        std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
        let _ = models::load(&dir);
        n += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("fuzz_checkpoint_files: {n} mutated files loaded or rejected");
}

#[test]
fn fuzz_fused_op_arguments() {
    zmlx::runtime::use_device(zmlx::runtime::DeviceKind::Cpu).unwrap();
    let s = seed("fuzz_fused_op_arguments", 0xf05e);
    let mut r = Rng(s);
    let modes = [
        (QuantMode::Affine, 64, 4),
        (QuantMode::Affine, 32, 8),
        (QuantMode::Affine, 128, 3),
        (QuantMode::Mxfp4, 32, 4),
        (QuantMode::Nvfp4, 16, 4),
        (QuantMode::Mxfp8, 32, 8),
    ];
    let dts = [Dtype::Float32, Dtype::Float16, Dtype::Bfloat16];
    let t0 = Instant::now();
    let (mut n, mut errs, mut ran) = (0, 0, 0);
    let (mut block_errs, mut block_ran) = (0, 0);
    while t0.elapsed() < budget() || n < 20 {
        let &(mode, g, b) = r.pick(&modes);
        let dt = *r.pick(&dts);
        let e = 1 + r.below(4) as i32;
        // N, the down projection's K: a multiple of its group size most of the time.
        let &(dmode, dg, db) = r.pick(&modes);
        let nn = if r.below(8) == 0 {
            1 + r.below(40) as i32
        } else {
            dg * (1 + r.below(2) as i32)
        };
        // K a multiple of the group most of the time, sometimes not.
        let k = if r.below(6) == 0 {
            1 + r.below(200) as i32
        } else {
            g * (1 + r.below(3) as i32)
        };
        let key = zmlx::mlx_rs::random::key(r.next()).unwrap();
        let w = zmlx::mlx_rs::random::normal::<f32>(&[e, nn, k], 0.0, 0.1, &key)
            .unwrap()
            .as_dtype(dt)
            .unwrap();
        let Ok(q) = quantize(&w, mode, Some(g), Some(b)) else {
            errs += 1;
            n += 1;
            continue;
        };
        let t = 1 + r.below(4) as i32;
        let kk = 1 + r.below(3) as i32;
        let xk = if r.below(8) == 0 { k + 1 } else { k };
        let x = zmlx::mlx_rs::random::normal::<f32>(&[t, 1, 1, xk], 0.0, 1.0, &key)
            .unwrap()
            .as_dtype(*r.pick(&dts))
            .unwrap();
        // Indices mostly in range, sometimes past E or negative.
        let idx: Vec<i32> = (0..t * kk)
            .map(|_| match r.below(40) {
                0 => e + r.below(3) as i32,
                1 => -1,
                _ => r.below(e as u64) as i32,
            })
            .collect();
        let idx = Array::from_slice(&idx, &[t, kk]);
        let act = if r.below(2) == 0 {
            Activation::Swiglu
        } else {
            Activation::GPT_OSS
        };
        let h = zmlx::fused::gather_qmm_swiglu(
            &x,
            &q,
            &q,
            &zmlx::fused::SwigluArgs {
                rhs_indices: Some(&idx),
                activation: act,
                ..Default::default()
            },
        )
        .and_then(|h| {
            h.eval()?;
            Ok(h)
        });
        // The down projection: [E, D, N] (sometimes a wrong K), its own quantization.
        let dk = if r.below(8) == 0 { nn + dg } else { nn };
        let dw =
            zmlx::mlx_rs::random::normal::<f32>(&[e, 1 + r.below(40) as i32, dk], 0.0, 0.1, &key)
                .unwrap()
                .as_dtype(dt)
                .unwrap();
        let down = quantize(&dw, dmode, Some(dg), Some(db));
        // The whole block as one op on the same (sometimes bad) arguments: a value or an error.
        if let Ok(d) = &down {
            let xs = x.reshape(&[t, xk]).unwrap();
            let scores = Array::from_slice(&vec![0.25f32; (t * kk) as usize], &[t, kk]);
            let y = zmlx::fused::switch_glu_combine(
                &xs, &q, &q, d, &idx, &scores, act, None, None, None,
            )
            .and_then(|y| y.eval().map_err(Into::into));
            if y.is_err() {
                block_errs += 1;
            } else {
                block_ran += 1;
            }
        }
        match (h, down) {
            (Ok(h), Ok(down)) => {
                let scores = Array::from_slice(&vec![0.5f32; (t * kk) as usize], &[t, kk]);
                let y = zmlx::fused::gather_qmm_combine(&h, &down, &idx, &scores, None)
                    .and_then(|y| y.eval().map_err(Into::into));
                if y.is_err() {
                    errs += 1;
                } else {
                    ran += 1;
                }
            }
            (h, d) => {
                if std::env::var("ZMLX_FUZZ_VERBOSE").is_ok() {
                    eprintln!("{:?} / {:?}", h.err(), d.err());
                }
                errs += 1;
            }
        }
        n += 1;
    }
    eprintln!("fuzz_fused_op_arguments: {n} layers, {ran} computed, {errs} rejected with an error");
    eprintln!(
        "fuzz_fused_op_arguments: switch_glu_combine {block_ran} computed, {block_errs} rejected"
    );
}
