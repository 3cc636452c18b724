//! Per-layer timing of MoE blocks: fused vs MLX composed (reference) path.

use std::time::Instant;

use mlx_rs::{Array, Dtype};

use crate::error::Result;
use crate::models::{Ffn, Model};
use crate::moe::{Activation, ExpertWeight, MoePath, SwitchGlu};
use crate::quant::{QuantMode, QuantizedWeight};

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
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

// ---------------------------------------------------------------------------------------------------------
// One MoE layer at real model dimensions: MLX's composed path vs the fused path, cold weights.
// ---------------------------------------------------------------------------------------------------------

/// Dimensions and format of one MoE layer to benchmark.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    /// Short name (`qwen3`, `mixtral`, `gpt-oss`).
    pub name: &'static str,
    /// What it models.
    pub about: &'static str,
    /// Hidden size D.
    pub d: i32,
    /// Expert intermediate size I.
    pub i: i32,
    /// Experts E.
    pub e: i32,
    /// Experts per token k.
    pub k: i32,
    /// Quantization mode, group size and bits (`None`: MLX's default for the mode).
    pub mode: QuantMode,
    pub group_size: Option<i32>,
    pub bits: Option<i32>,
    /// Activation dtype.
    pub dtype: Dtype,
    /// Expert activation; gpt-oss also has per-expert biases.
    pub activation: Activation,
    pub expert_biases: bool,
    /// Token counts benchmarked by default (MLX's composed path gets slow at large T on big layers).
    pub default_tokens: &'static [usize],
}

/// The layers of the benchmark: Qwen3-30B-A3B, Mixtral-8x7B and gpt-oss-20b expert dimensions.
pub fn layer_specs() -> Vec<LayerSpec> {
    vec![
        LayerSpec {
            name: "qwen3",
            about: "Qwen3-30B-A3B MoE layer (D 2048, I 768, E 128, top-8), affine 4-bit g64, bf16",
            d: 2048,
            i: 768,
            e: 128,
            k: 8,
            mode: QuantMode::Affine,
            group_size: Some(64),
            bits: Some(4),
            dtype: Dtype::Bfloat16,
            activation: Activation::Swiglu,
            expert_biases: false,
            default_tokens: &[1, 4, 16, 64],
        },
        LayerSpec {
            name: "mixtral",
            about: "Mixtral-8x7B MoE layer (D 4096, I 14336, E 8, top-2), affine 4-bit g64, bf16",
            d: 4096,
            i: 14336,
            e: 8,
            k: 2,
            mode: QuantMode::Affine,
            group_size: Some(64),
            bits: Some(4),
            dtype: Dtype::Bfloat16,
            activation: Activation::Swiglu,
            expert_biases: false,
            default_tokens: &[1, 4],
        },
        LayerSpec {
            name: "gpt-oss",
            about: "gpt-oss-20b MoE layer (D 2880, I 2880, E 32, top-4), mxfp4, bf16, clamped activation + expert biases",
            d: 2880,
            i: 2880,
            e: 32,
            k: 4,
            mode: QuantMode::Mxfp4,
            group_size: None,
            bits: None,
            dtype: Dtype::Bfloat16,
            activation: Activation::GPT_OSS,
            expert_biases: true,
            default_tokens: &[1, 4, 16],
        },
    ]
}

/// Layers per evaluation in the layer benchmark's decode-like measurement.
pub const CHAIN_LAYERS: usize = 8;

/// One row of the layer benchmark.
#[derive(Clone, Debug)]
pub struct LayerRow {
    /// Tokens per call.
    pub tokens: usize,
    /// Median seconds per call: MLX's composed path (mlx-lm's SwitchGLU + combine) and ours.
    pub mlx_s: f64,
    pub fused_s: f64,
    /// Fused path, decode-like: median seconds per layer when [`CHAIN_LAYERS`] layers run in one
    /// evaluation (see [`BenchLayer::time`]).
    pub chain_s: f64,
    /// Calls timed per path (chains for `chain_s`).
    pub mlx_iters: usize,
    pub fused_iters: usize,
    pub chain_iters: usize,
    /// Mean number of distinct experts per call, and the weight bytes they hold (gate+up+down).
    pub distinct_experts: f64,
    pub weight_bytes: f64,
}

impl LayerRow {
    /// Weight bytes of the distinct experts / fused time.
    pub fn fused_gb_per_s(&self) -> f64 {
        self.weight_bytes / self.fused_s / 1e9
    }
    pub fn speedup(&self) -> f64 {
        self.mlx_s / self.fused_s
    }
    /// The same for the per-layer time in a chain of layers.
    pub fn chain_gb_per_s(&self) -> f64 {
        self.weight_bytes / self.chain_s / 1e9
    }
    pub fn chain_speedup(&self) -> f64 {
        self.mlx_s / self.chain_s
    }
}

/// A benchmark layer: several copies of the expert weights (so a call never finds its experts in cache
/// because the previous call touched them), as in a model with many layers.
pub struct BenchLayer {
    pub spec: LayerSpec,
    copies: Vec<SwitchGlu>,
    /// Bytes of one expert's gate+up+down weights (quantized data, scales, biases, expert biases).
    pub expert_bytes: f64,
}

fn random_stack(shape: &[i32], std: f32, dtype: Dtype, key: &Array) -> Result<Array> {
    let a = mlx_rs::random::normal::<f32>(shape, 0.0, std, key)?.as_dtype(dtype)?;
    a.eval()?;
    Ok(a)
}

impl BenchLayer {
    /// Random weights (from `seed`), quantized; `min_bytes`: copies are added until their weights hold at
    /// least this many bytes (at least `min_copies`). `progress(done, total)` is called per projection.
    pub fn build(
        spec: &LayerSpec,
        seed: u64,
        min_copies: usize,
        min_bytes: f64,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<BenchLayer> {
        let (d, i, e) = (spec.d, spec.i, spec.e);
        let mut copies = Vec::new();
        let mut expert_bytes;
        let mut key = mlx_rs::random::key(seed)?;
        let quant = |w: Array| -> Result<QuantizedWeight> {
            let q = crate::quant::quantize(&w, spec.mode, spec.group_size, spec.bits)?;
            q.eval()?;
            Ok(q)
        };
        loop {
            let total = min_copies.max(1);
            let mut next = || -> Result<Array> {
                let (carry, sub) = mlx_rs::random::split(&key, 2)?;
                key = carry;
                Ok(sub)
            };
            let gate = quant(random_stack(&[e, i, d], 0.02, spec.dtype, &next()?)?)?;
            progress(3 * copies.len() + 1, 3 * total);
            let up = quant(random_stack(&[e, i, d], 0.02, spec.dtype, &next()?)?)?;
            progress(3 * copies.len() + 2, 3 * total);
            let down = quant(random_stack(&[e, d, i], 0.02, spec.dtype, &next()?)?)?;
            progress(3 * copies.len() + 3, 3 * total);
            let (gate_bias, up_bias, down_bias) = if spec.expert_biases {
                (
                    Some(random_stack(&[e, i], 0.1, spec.dtype, &next()?)?),
                    Some(random_stack(&[e, i], 0.1, spec.dtype, &next()?)?),
                    Some(random_stack(&[e, d], 0.1, spec.dtype, &next()?)?),
                )
            } else {
                (None, None, None)
            };
            let bias_bytes = [&gate_bias, &up_bias, &down_bias]
                .iter()
                .map(|b| b.as_ref().map_or(0, |b| b.nbytes()))
                .sum::<usize>();
            let layer_bytes = (gate.nbytes() + up.nbytes() + down.nbytes() + bias_bytes) as f64;
            expert_bytes = layer_bytes / e as f64;
            copies.push(SwitchGlu {
                gate_proj: ExpertWeight::Quantized(gate),
                up_proj: ExpertWeight::Quantized(up),
                down_proj: ExpertWeight::Quantized(down),
                gate_bias,
                up_bias,
                down_bias,
                activation: spec.activation,
            });
            if copies.len() >= min_copies && layer_bytes * copies.len() as f64 >= min_bytes {
                break;
            }
        }
        Ok(BenchLayer {
            spec: spec.clone(),
            copies,
            expert_bytes,
        })
    }

    /// Backs all copies' expert weights with transparent huge pages (see [`crate::hugepages`]).
    pub fn promote_huge_pages(&self) -> Result<crate::hugepages::HugePages> {
        let mut arrays = Vec::new();
        for c in &self.copies {
            arrays.extend(c.quantized_arrays());
            arrays.extend(
                [&c.gate_bias, &c.up_bias, &c.down_bias]
                    .into_iter()
                    .flatten(),
            );
        }
        crate::hugepages::promote(&arrays)
    }

    /// Copies of the weights.
    pub fn copies(&self) -> usize {
        self.copies.len()
    }

    /// Bytes of all copies' weights.
    pub fn total_bytes(&self) -> f64 {
        self.expert_bytes * self.spec.e as f64 * self.copies.len() as f64
    }

    /// Times `tokens` tokens through the layer on both paths. Each call draws fresh inputs and a fresh
    /// expert choice (k distinct experts per token, softmax scores) and uses the next copy of the weights.
    /// Each path gets one untimed warm-up call, then runs until `budget_s` seconds or `max_iters` calls
    /// (at least one). Then the fused path again, [`CHAIN_LAYERS`] layers per evaluation, within the same
    /// budget ([`LayerRow::chain_s`]).
    pub fn time(
        &self,
        tokens: usize,
        seed: u64,
        budget_s: f64,
        max_iters: usize,
    ) -> Result<LayerRow> {
        let spec = &self.spec;
        let t = tokens as i32;
        let mut rng = seed | 1;
        let mut next_u64 = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Inputs for one call: x [T, D], indices [T, k] (distinct per token), scores [T, k].
        let mut inputs = || -> Result<(Array, Array, Array, usize)> {
            let key = mlx_rs::random::key(next_u64())?;
            let x = mlx_rs::random::normal::<f32>(&[t, spec.d], 0.0, 1.0, &key)?
                .as_dtype(spec.dtype)?;
            let mut idx = Vec::with_capacity(tokens * spec.k as usize);
            let mut seen = vec![false; spec.e as usize];
            for _ in 0..tokens {
                let mut chosen = Vec::new();
                while chosen.len() < spec.k as usize {
                    let c = (next_u64() % spec.e as u64) as u32;
                    if !chosen.contains(&c) {
                        chosen.push(c);
                    }
                }
                for &c in &chosen {
                    seen[c as usize] = true;
                }
                idx.extend(chosen);
            }
            let distinct = seen.iter().filter(|&&s| s).count();
            let indices = Array::from_slice(&idx, &[t, spec.k]);
            let logits: Vec<f32> = (0..tokens * spec.k as usize)
                .map(|_| (next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
                .collect();
            let scores =
                mlx_rs::ops::softmax_axis(Array::from_slice(&logits, &[t, spec.k]), -1, None)?
                    .as_dtype(spec.dtype)?;
            mlx_rs::transforms::eval([&x, &indices, &scores])?;
            Ok((x, indices, scores, distinct))
        };
        let mut run = |path: MoePath, call: usize| -> Result<(f64, usize)> {
            let (x, indices, scores, distinct) = inputs()?;
            let layer = &self.copies[call % self.copies.len()];
            let t0 = Instant::now();
            let y = layer.forward_combined(&x, &indices, &scores, path)?;
            y.eval()?;
            Ok((t0.elapsed().as_secs_f64(), distinct))
        };
        let mut measure = |path: MoePath| -> Result<(Vec<f64>, f64)> {
            // One untimed warm-up call (allocator, first-use setup), then timed calls.
            run(path, 0)?;
            let mut call = 1usize;
            let (mut times, mut distinct) = (Vec::new(), 0usize);
            let start = Instant::now();
            while times.is_empty()
                || (times.len() < max_iters && start.elapsed().as_secs_f64() < budget_s)
            {
                let (dt, dis) = run(path, call)?;
                call += 1;
                times.push(dt);
                distinct += dis;
            }
            let mean_distinct = distinct as f64 / times.len() as f64;
            Ok((times, mean_distinct))
        };
        let (fused, distinct) = measure(MoePath::Fused)?;
        let (mlx, _) = measure(MoePath::Reference)?;
        // Decode-like: CHAIN_LAYERS layers in one graph (each on the next copy of the weights, with its
        // own expert choice, on the residual stream x + y of the layer before), evaluated once, as a
        // model's forward pass is: MLX's fixed cost per evaluation (handing the graph to the stream's
        // thread and waiting for it) is spread over the layers, and the graph is built and encoded while
        // the first layers run.
        let mut chain = Vec::new();
        let start = Instant::now();
        let mut call = 0usize;
        while chain.is_empty()
            || (chain.len() < max_iters && start.elapsed().as_secs_f64() < budget_s)
        {
            let mut layers = Vec::with_capacity(CHAIN_LAYERS);
            for _ in 0..CHAIN_LAYERS {
                layers.push(inputs()?);
            }
            let t0 = Instant::now();
            let mut h = layers[0].0.clone();
            for (l, (_, indices, scores, _)) in layers.iter().enumerate() {
                let layer = &self.copies[(call + l) % self.copies.len()];
                let y = layer.forward_combined(&h, indices, scores, MoePath::Fused)?;
                h = mlx_rs::ops::add(&h, &y)?;
            }
            h.eval()?;
            let dt = t0.elapsed().as_secs_f64() / CHAIN_LAYERS as f64;
            // The first chain is a warm-up.
            if call > 0 {
                chain.push(dt);
            }
            call += CHAIN_LAYERS;
        }
        Ok(LayerRow {
            tokens,
            mlx_iters: mlx.len(),
            fused_iters: fused.len(),
            chain_iters: chain.len(),
            mlx_s: median(mlx),
            fused_s: median(fused),
            chain_s: median(chain),
            distinct_experts: distinct,
            weight_bytes: distinct * self.expert_bytes,
        })
    }
}
