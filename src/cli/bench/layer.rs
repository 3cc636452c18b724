//! `bench layer`: one MoE layer at real model dimensions, MLX's composed path vs the fused path, on cold
//! weights.

use std::time::Instant;

use mlx_rs::{Array, Dtype};

use zmlx::hugepages::HugePages;
use zmlx::moe::{Activation, ExpertWeight, MoePath, SwitchGlu};
use zmlx::quant::{QuantMode, QuantizedWeight};
use zmlx::runtime::DeviceKind;
use zmlx::{Error, Result};

use super::median;
use crate::cli::membw::ReadProbe;

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

/// Blocks of calls per fused measurement when the read bandwidth is measured alongside (see
/// [`BenchLayer::time`]).
pub const PAIRED_BLOCKS: usize = 10;

/// What a benchmark compares achieved GB/s with: the machine's read bandwidth (CPU) or the card's
/// device-to-device copy bandwidth (GPU), measured in the same run.
pub trait BandwidthProbe {
    /// Best of `passes` measurements, GB/s.
    fn gb_per_sec(&self, passes: usize) -> Result<f64>;
}

impl BandwidthProbe for ReadProbe {
    fn gb_per_sec(&self, passes: usize) -> Result<f64> {
        Ok(self.measure(passes)?.gb_per_sec())
    }
}

/// The GPU's memory bandwidth as a device-to-device copy sees it: [`GpuCopyProbe::CHAIN`] elementwise
/// passes (negation) over a buffer chained in one evaluation, bytes read plus bytes written over the time.
pub struct GpuCopyProbe {
    src: Array,
    bytes: usize,
}

impl GpuCopyProbe {
    /// Copies per measurement (MLX's fixed cost per evaluation is spread over them).
    pub const CHAIN: usize = 8;

    /// A `bytes` float32 buffer of random values on the default (GPU) device.
    pub fn new(bytes: usize) -> Result<GpuCopyProbe> {
        let n = i32::try_from(bytes / 4)
            .map_err(|_| Error::InvalidArgument("GPU copy probe buffer too large".to_string()))?;
        if n < 1024 {
            return Err(Error::InvalidArgument(
                "GPU copy probe buffer too small".to_string(),
            ));
        }
        let src = mlx_rs::random::uniform::<f32, f32>(0.0, 1.0, &[n], None)?;
        src.eval()?;
        Ok(GpuCopyProbe {
            src,
            bytes: n as usize * 4,
        })
    }

    /// Bytes of the copied buffer.
    pub fn buffer_bytes(&self) -> usize {
        self.bytes
    }
}

/// An elementwise pass that reads `a` and writes a new array (MLX elides a copy of a contiguous array).
fn copy(a: &Array) -> Result<Array> {
    Ok(a.negative()?)
}

impl BandwidthProbe for GpuCopyProbe {
    fn gb_per_sec(&self, passes: usize) -> Result<f64> {
        let mut best = 0f64;
        for _ in 0..passes.max(1) {
            let t0 = Instant::now();
            let mut a = copy(&self.src)?;
            for _ in 1..Self::CHAIN {
                a = copy(&a)?;
            }
            a.eval()?;
            let dt = t0.elapsed().as_secs_f64();
            if dt > 0.0 {
                best = best.max((2 * Self::CHAIN * self.bytes) as f64 / dt / 1e9);
            }
        }
        Ok(best)
    }
}

/// One block of timed calls and the read bandwidth measured right before it.
#[derive(Clone, Copy, Debug)]
pub struct PairedBlock {
    /// Best of two passes of the read-bandwidth probe, GB/s.
    pub probe_gb_s: f64,
    /// Median seconds per call (per layer for chains) in the block.
    pub median_s: f64,
}

/// Median over the blocks of (weight bytes / the block's median time) / the block's bandwidth; `None`
/// without blocks.
fn paired_fraction(blocks: &[PairedBlock], weight_bytes: f64) -> Option<f64> {
    if blocks.is_empty() {
        return None;
    }
    Some(median(
        blocks
            .iter()
            .map(|b| weight_bytes / b.median_s / 1e9 / b.probe_gb_s)
            .collect(),
    ))
}

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
    /// MLX's composed path with [`CHAIN_LAYERS`] layers per evaluation, median seconds per layer
    /// (measured on GPUs, where MLX's fixed cost per evaluation and per op is a large part of a layer's
    /// time; on CPUs MLX's layer takes a quarter of a second and chains are not timed).
    pub mlx_chain_s: Option<f64>,
    pub mlx_chain_iters: usize,
    /// Calls timed per path (chains for `chain_s`).
    pub mlx_iters: usize,
    pub fused_iters: usize,
    pub chain_iters: usize,
    /// Mean number of distinct experts per call, and the weight bytes they hold (gate+up+down).
    pub distinct_experts: f64,
    pub weight_bytes: f64,
    /// The fused calls and the chains in blocks, each with the read bandwidth measured right before
    /// it (empty when timed without a probe).
    pub fused_blocks: Vec<PairedBlock>,
    pub chain_blocks: Vec<PairedBlock>,
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
    /// Chained fused vs chained MLX (both per layer), where MLX's chains were timed.
    pub fn chain_vs_mlx_chain(&self) -> Option<f64> {
        self.mlx_chain_s.map(|m| m / self.chain_s)
    }
    /// Fraction of the read bandwidth measured alongside: median over the blocks of the block's GB/s
    /// over the bandwidth measured right before it (`None` without blocks).
    pub fn fused_fraction(&self) -> Option<f64> {
        paired_fraction(&self.fused_blocks, self.weight_bytes)
    }
    pub fn chain_fraction(&self) -> Option<f64> {
        paired_fraction(&self.chain_blocks, self.weight_bytes)
    }
    /// Median of the bandwidths measured alongside the fused calls and the chains (`None` without).
    pub fn probe_median_gb_s(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .fused_blocks
            .iter()
            .chain(&self.chain_blocks)
            .map(|b| b.probe_gb_s)
            .collect();
        (!v.is_empty()).then(|| median(v))
    }
}

/// Times calls in `blocks` blocks within `budget_s` seconds and `max_iters` calls in all (at least one
/// per block). Each block: the read bandwidth (with `probe`), one untimed warm-up call, then timed calls.
/// `call()` returns seconds and distinct experts. Returns the times, the distinct experts summed over
/// the timed calls, and the blocks (empty without a probe).
fn timed_blocks(
    probe: Option<&dyn BandwidthProbe>,
    blocks: usize,
    budget_s: f64,
    max_iters: usize,
    mut call: impl FnMut() -> Result<(f64, usize)>,
) -> Result<(Vec<f64>, usize, Vec<PairedBlock>)> {
    let blocks = blocks.max(1);
    let per_block_s = budget_s / blocks as f64;
    let per_block_iters = (max_iters / blocks).max(1);
    let (mut times, mut distinct, mut paired) = (Vec::new(), 0usize, Vec::new());
    for _ in 0..blocks {
        let bw = match probe {
            Some(p) => Some(p.gb_per_sec(2)?),
            None => None,
        };
        call()?;
        let mut block = Vec::new();
        let start = Instant::now();
        while block.is_empty()
            || (block.len() < per_block_iters && start.elapsed().as_secs_f64() < per_block_s)
        {
            let (dt, dis) = call()?;
            block.push(dt);
            distinct += dis;
        }
        if let Some(probe_gb_s) = bw {
            paired.push(PairedBlock {
                probe_gb_s,
                median_s: median(block.clone()),
            });
        }
        times.extend(block);
    }
    Ok((times, distinct, paired))
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
            let q = zmlx::quant::quantize(&w, spec.mode, spec.group_size, spec.bits)?;
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

    /// Backs all copies' expert weights with transparent huge pages (see [`zmlx::hugepages`]).
    pub fn promote_huge_pages(&self) -> Result<HugePages> {
        let mut arrays = Vec::new();
        for c in &self.copies {
            arrays.extend(c.quantized_arrays());
            arrays.extend(
                [&c.gate_bias, &c.up_bias, &c.down_bias]
                    .into_iter()
                    .flatten(),
            );
        }
        zmlx::hugepages::promote(&arrays)
    }

    /// Fixed inputs of one call on `tokens` tokens from `seed`: x `[T, D]`, indices `[T, k]` (k distinct
    /// experts spread over E) and softmax scores `[T, k]`.
    fn fixed_inputs(&self, tokens: usize, seed: u64) -> Result<(Array, Array, Array)> {
        let spec = &self.spec;
        let t = tokens as i32;
        let key = mlx_rs::random::key(seed)?;
        let x =
            mlx_rs::random::normal::<f32>(&[t, spec.d], 0.0, 1.0, &key)?.as_dtype(spec.dtype)?;
        let idx: Vec<u32> = (0..tokens * spec.k as usize)
            .map(|j| {
                ((j % spec.k as usize) * spec.e as usize / spec.k as usize + j / spec.k as usize)
                    as u32
                    % spec.e as u32
            })
            .collect();
        let indices = Array::from_slice(&idx, &[t, spec.k]);
        let scores = mlx_rs::ops::softmax_axis(
            mlx_rs::random::normal::<f32>(&[t, spec.k], 0.0, 1.0, &key)?,
            -1,
            None,
        )?
        .as_dtype(spec.dtype)?;
        Ok((x, indices, scores))
    }

    /// max |fused - MLX composed| / max |MLX composed| of one call on `tokens` random tokens (NaN in
    /// either output gives infinity): a check that the timed fused path computes the layer.
    pub fn agreement(&self, tokens: usize, seed: u64) -> Result<f64> {
        let (x, indices, scores) = self.fixed_inputs(tokens, seed)?;
        let layer = &self.copies[0];
        let f = zmlx::array::to_f32_vec(&layer.forward_combined(
            &x,
            &indices,
            &scores,
            MoePath::Fused,
        )?)?;
        let r = zmlx::array::to_f32_vec(&layer.forward_combined(
            &x,
            &indices,
            &scores,
            MoePath::Reference,
        )?)?;
        let scale = r.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        let mut err = 0f64;
        for (a, b) in f.iter().zip(&r) {
            let d = (*a as f64 - *b as f64).abs();
            err = if d.is_nan() {
                f64::INFINITY
            } else {
                err.max(d)
            };
        }
        Ok(if scale > 0.0 { err / scale } else { err })
    }

    /// The gradient of `sum(c * layer(x))` with respect to x and the scores on `tokens` tokens, both paths,
    /// alternating, on the next copy of the weights per call: median seconds of (forward, forward + vjp)
    /// per path as `[[fused fwd, fused fwd+vjp], [MLX fwd, MLX fwd+vjp]]`.
    pub fn time_grad(
        &self,
        tokens: usize,
        seed: u64,
        budget_s: f64,
        max_iters: usize,
    ) -> Result<[[f64; 2]; 2]> {
        use mlx_rs::transforms;
        let (x, indices, scores) = self.fixed_inputs(tokens, seed)?;
        // The cotangent: x's values (drawn with x's key before), any fixed array serves.
        let c = x.clone();
        transforms::eval([&x, &indices, &scores, &c])?;
        let mut times = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
        let start = std::time::Instant::now();
        let mut n = 0usize;
        let mut call = 0usize;
        while n <= max_iters && (n < 2 || start.elapsed().as_secs_f64() < budget_s) {
            for (p, path) in [MoePath::Fused, MoePath::Reference].into_iter().enumerate() {
                for with_grad in [false, true] {
                    let layer = &self.copies[call % self.copies.len()];
                    call += 1;
                    let t0 = std::time::Instant::now();
                    if with_grad {
                        let f = |a: &[Array]| -> std::result::Result<Vec<Array>, mlx_rs::error::Exception> {
                            layer
                                .forward_combined(&a[0], &indices, &a[1], path)
                                .map(|y| vec![y])
                                .map_err(|e| mlx_rs::error::Exception::custom(e.to_string()))
                        };
                        let (_, g) = transforms::fallible_vjp(
                            f,
                            &[x.clone(), scores.clone()],
                            std::slice::from_ref(&c),
                        )?;
                        transforms::eval(g.iter())?;
                    } else {
                        layer
                            .forward_combined(&x, &indices, &scores, path)?
                            .eval()?;
                    }
                    if n > 0 {
                        times[p][with_grad as usize].push(t0.elapsed().as_secs_f64());
                    }
                }
            }
            n += 1;
        }
        let [[a, b], [c2, d]] = times;
        Ok([[median(a), median(b)], [median(c2), median(d)]])
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
    /// Each path runs until `budget_s` seconds or `max_iters` calls (at least one), after an untimed
    /// warm-up call. Then the fused path again, [`CHAIN_LAYERS`] layers per evaluation, within the same
    /// budget ([`LayerRow::chain_s`]).
    ///
    /// With a `probe`, the fused calls and the chains run in [`PAIRED_BLOCKS`] blocks each, and the
    /// machine's read bandwidth is measured right before each block (the bandwidth a process gets on a
    /// shared host moves in spells of seconds, so the calls are compared with the bandwidth of their own
    /// moment); each block starts with an untimed warm-up call (the probe's threads have run meanwhile).
    pub fn time(
        &self,
        tokens: usize,
        seed: u64,
        budget_s: f64,
        max_iters: usize,
        probe: Option<&dyn BandwidthProbe>,
    ) -> Result<LayerRow> {
        let on_gpu = zmlx::runtime::default_device()? == DeviceKind::Gpu;
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
            let mut indices = Array::from_slice(&idx, &[t, spec.k]);
            if on_gpu {
                // Arrays made from host data live in unified memory; one op puts them in device
                // memory, as the router's output is in a model.
                indices = mlx_rs::ops::add(&indices, Array::from_slice(&[0u32], &[1]))?;
            }
            let logits: Vec<f32> = (0..tokens * spec.k as usize)
                .map(|_| (next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
                .collect();
            let scores =
                mlx_rs::ops::softmax_axis(Array::from_slice(&logits, &[t, spec.k]), -1, None)?
                    .as_dtype(spec.dtype)?;
            mlx_rs::transforms::eval([&x, &indices, &scores])?;
            Ok((x, indices, scores, distinct))
        };
        // One call on `path`, on the next copy of the weights.
        let mut call = 0usize;
        let mut run = |path: MoePath| -> Result<(f64, usize)> {
            let (x, indices, scores, distinct) = inputs()?;
            let layer = &self.copies[call % self.copies.len()];
            call += 1;
            let t0 = Instant::now();
            let y = layer.forward_combined(&x, &indices, &scores, path)?;
            y.eval()?;
            Ok((t0.elapsed().as_secs_f64(), distinct))
        };
        let blocks = if probe.is_some() { PAIRED_BLOCKS } else { 1 };
        let (fused, distinct, fused_blocks) =
            timed_blocks(probe, blocks, budget_s, max_iters, || run(MoePath::Fused))?;
        let mean_distinct = distinct as f64 / fused.len() as f64;
        let (mlx, _, _) = timed_blocks(None, 1, budget_s, max_iters, || run(MoePath::Reference))?;
        // Decode-like: CHAIN_LAYERS layers in one graph (each on the next copy of the weights, with its
        // own expert choice, on the residual stream x + y of the layer before), evaluated once, as a
        // model's forward pass is: MLX's fixed cost per evaluation (handing the graph to the stream's
        // thread and waiting for it) is spread over the layers, and the graph is built and encoded while
        // the first layers run.
        let mut chain_once = |path: MoePath| -> Result<(f64, usize)> {
            let mut layers = Vec::with_capacity(CHAIN_LAYERS);
            for _ in 0..CHAIN_LAYERS {
                layers.push(inputs()?);
            }
            let t0 = Instant::now();
            let mut h = layers[0].0.clone();
            for (l, (_, indices, scores, _)) in layers.iter().enumerate() {
                let layer = &self.copies[(call + l) % self.copies.len()];
                let y = layer.forward_combined(&h, indices, scores, path)?;
                h = mlx_rs::ops::add(&h, &y)?;
            }
            h.eval()?;
            call += CHAIN_LAYERS;
            Ok((t0.elapsed().as_secs_f64() / CHAIN_LAYERS as f64, 0))
        };
        let (chain, _, chain_blocks) = timed_blocks(probe, blocks, budget_s, max_iters, || {
            chain_once(MoePath::Fused)
        })?;
        let mlx_chain = if on_gpu {
            Some(
                timed_blocks(None, 1, budget_s, max_iters, || {
                    chain_once(MoePath::Reference)
                })?
                .0,
            )
        } else {
            None
        };
        Ok(LayerRow {
            tokens,
            mlx_chain_iters: mlx_chain.as_ref().map_or(0, Vec::len),
            mlx_chain_s: mlx_chain.map(median),
            mlx_iters: mlx.len(),
            fused_iters: fused.len(),
            chain_iters: chain.len(),
            mlx_s: median(mlx),
            fused_s: median(fused),
            chain_s: median(chain),
            distinct_experts: mean_distinct,
            weight_bytes: mean_distinct * self.expert_bytes,
            fused_blocks,
            chain_blocks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_fraction_is_the_median_of_the_blocks_ratios() {
        // 20 MB per call: 1 ms at 25 GB/s is 80%, 0.5 ms at 50 GB/s 80%, 2 ms at 20 GB/s 50%.
        let b = |probe_gb_s, median_s| PairedBlock {
            probe_gb_s,
            median_s,
        };
        let blocks = [b(25.0, 1e-3), b(50.0, 0.5e-3), b(20.0, 2e-3)];
        let f = paired_fraction(&blocks, 20e6).expect("blocks");
        assert!((f - 0.8).abs() < 1e-12, "{f}");
        assert!(paired_fraction(&[], 20e6).is_none());
    }
}
