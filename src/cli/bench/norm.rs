//! `zmlx bench norm`: the fused add_rms_norm against MLX's composed `add` then `fast::rms_norm`, on the same
//! inputs, one pair of outputs per evaluation and [`CHAIN`] residual steps chained in one evaluation (as
//! the norms of a forward pass are).

use std::time::Instant;

use anyhow::Result;
use zmlx::mlx_rs::{random, transforms, Array, Dtype};

use super::median;

/// Residual steps per evaluation in the chained mode.
pub const CHAIN: usize = 8;

/// One row: median seconds per call (per step when chained) of both paths.
pub struct NormRow {
    pub tokens: usize,
    pub d: i32,
    pub dtype: Dtype,
    pub fused_s: f64,
    pub mlx_s: f64,
    pub fused_chain_s: f64,
    pub mlx_chain_s: f64,
    /// max |fused y - MLX y| / max |MLX y| on the first call's inputs.
    pub agreement: f64,
}

impl NormRow {
    /// Bytes one step moves: x and the residual read, h and y written.
    pub fn bytes(&self) -> f64 {
        let size = if self.dtype == Dtype::Float32 {
            4.0
        } else {
            2.0
        };
        4.0 * self.tokens as f64 * self.d as f64 * size
    }
}

type NormFn = fn(&Array, &Array, Option<&Array>, f32) -> zmlx::Result<(Array, Array)>;

/// Times both paths on `tokens` rows of `d` in `dtype`: calls alternate between the paths (each on fresh
/// inputs) until `budget_s` seconds or `max_iters` calls per path and mode.
pub fn time(
    tokens: usize,
    d: i32,
    dtype: Dtype,
    budget_s: f64,
    max_iters: usize,
    seed: u64,
) -> Result<NormRow> {
    let paths: [NormFn; 2] = [
        zmlx::fused::add_rms_norm,
        zmlx::fused::add_rms_norm_reference,
    ];
    let eps = 1e-6;
    let shape = [tokens as i32, d];
    let mut key = random::key(seed)?;
    let mut fresh = move || -> Result<(Array, Array, Array)> {
        let mut next = || -> Result<Array> {
            let (carry, sub) = random::split(&key, 2)?;
            key = carry;
            Ok(sub)
        };
        let x = random::normal::<f32>(&shape, 0.0, 1.0, &next()?)?.as_dtype(dtype)?;
        let r = random::normal::<f32>(&shape, 0.0, 1.0, &next()?)?.as_dtype(dtype)?;
        let w = random::uniform::<f32, f32>(0.5, 1.5, &[d], &next()?)?.as_dtype(dtype)?;
        transforms::eval([&x, &r, &w])?;
        Ok((x, r, w))
    };
    let agreement = {
        let (x, r, w) = fresh()?;
        let (_, yf) = paths[0](&x, &r, Some(&w), eps)?;
        let (_, ym) = paths[1](&x, &r, Some(&w), eps)?;
        let (a, b) = (zmlx::array::to_f32_vec(&yf)?, zmlx::array::to_f32_vec(&ym)?);
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        let diff = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max) as f64;
        diff / scale.max(f64::MIN_POSITIVE)
    };
    let mut once = [Vec::new(), Vec::new()];
    let mut chain = [Vec::new(), Vec::new()];
    for (chained, times) in [(false, &mut once), (true, &mut chain)] {
        let start = Instant::now();
        let mut n = 0;
        // One untimed warm-up call per path, then alternate.
        while n <= max_iters && (n < 2 || start.elapsed().as_secs_f64() < budget_s) {
            for (p, f) in paths.iter().enumerate() {
                let (x, r, w) = fresh()?;
                let t0 = Instant::now();
                if chained {
                    let (mut h, mut y) = (x, r);
                    for _ in 0..CHAIN {
                        (h, y) = f(&h, &y, Some(&w), eps)?;
                    }
                    transforms::eval([&h, &y])?;
                } else {
                    let (h, y) = f(&x, &r, Some(&w), eps)?;
                    transforms::eval([&h, &y])?;
                }
                let dt = t0.elapsed().as_secs_f64() / if chained { CHAIN as f64 } else { 1.0 };
                if n > 0 {
                    times[p].push(dt);
                }
            }
            n += 1;
        }
    }
    let [fo, mo] = once;
    let [fc, mc] = chain;
    Ok(NormRow {
        tokens,
        d,
        dtype,
        fused_s: median(fo),
        mlx_s: median(mo),
        fused_chain_s: median(fc),
        mlx_chain_s: median(mc),
        agreement,
    })
}
