//! `bench model`: per-layer timing of a model's MoE blocks, fused vs MLX composed (reference) path.

use std::time::Instant;

use zmlx::models::{Ffn, Model};
use zmlx::moe::MoePath;
use zmlx::Result;

use super::median;

/// Timing of one MoE layer.
#[derive(Clone, Debug)]
pub struct LayerTiming {
    /// Layer index.
    pub layer: usize,
    /// Experts / top-k.
    pub experts: (i32, i32),
    /// Median seconds per call, reference path.
    pub reference_s: f64,
    /// Median seconds per call, fused path.
    pub fused_s: f64,
}

/// Times every MoE layer of `model` on `tokens` random inputs: router + experts + combine, evaluated,
/// `iters` times per path after one warm-up call; the two paths alternate to share machine noise.
pub fn moe_layers(
    model: &Model,
    tokens: usize,
    iters: usize,
    seed: u64,
) -> Result<Vec<LayerTiming>> {
    let d = model.config.hidden_size;
    let key = mlx_rs::random::key(seed)?;
    let x = mlx_rs::random::normal::<f32>(&[1, tokens as i32, d][..], 0.0, 1.0, &key)?
        .as_dtype(model.config.dtype)?;
    x.eval()?;
    let mut out = Vec::new();
    for (i, l) in model.layers.iter().enumerate() {
        let Ffn::Moe(m) = &l.ffn else { continue };
        let mut times = [Vec::new(), Vec::new()];
        for path in [MoePath::Reference, MoePath::Fused] {
            m.forward(&x, path)?.eval()?;
        }
        for _ in 0..iters {
            for (j, path) in [MoePath::Reference, MoePath::Fused].into_iter().enumerate() {
                let t = Instant::now();
                m.forward(&x, path)?.eval()?;
                times[j].push(t.elapsed().as_secs_f64());
            }
        }
        let [r, f] = times;
        out.push(LayerTiming {
            layer: i,
            experts: (model.config.num_experts, model.config.top_k),
            reference_s: median(r),
            fused_s: median(f),
        });
    }
    Ok(out)
}
