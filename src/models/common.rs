//! The decoder-only MoE transformer shared by all supported architectures and its float32 oracle form
//! (built from a checkpoint's tensors in `load.rs`).

use mlx_rs::{Array, Dtype};

use super::config::{ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::moe::{ExpertParallel, ExpertRange, ExpertWeight, MoePath, SparseMoe};
use crate::nn::{Attention, Embedding, KvCache, Linear, Mlp, RmsNorm, Rope};

/// The feed-forward part of a layer.
#[derive(Clone, Debug)]
pub enum Ffn {
    /// Dense MLP.
    Dense(Box<Mlp>),
    /// Sparse MoE.
    Moe(Box<SparseMoe>),
}

/// One decoder layer.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Self-attention.
    pub attn: Attention,
    /// Norm before attention.
    pub input_norm: RmsNorm,
    /// Norm before the FFN.
    pub post_attn_norm: RmsNorm,
    /// Feed-forward.
    pub ffn: Ffn,
}

/// A loaded model (any supported architecture).
#[derive(Clone, Debug)]
pub struct Model {
    /// Its configuration.
    pub config: ModelConfig,
    /// Token embedding.
    pub embed: Embedding,
    /// Layers.
    pub layers: Vec<Layer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Output projection (`None`: tied to the embedding).
    pub lm_head: Option<Linear>,
    /// Whether this is the float32 oracle form.
    pub is_oracle: bool,
}

/// RoPE for a config (its family's parser decides the scaling: mlx-lm's gpt-oss goes through
/// `initialize_rope`, the others use plain `nn.RoPE`).
pub(crate) fn make_rope(cfg: &ModelConfig) -> Result<Rope> {
    let dims = cfg.rope_dims;
    match cfg.rope_scaling.clone() {
        RopeScaling::Plain { scale } => Ok(Rope {
            dims,
            base: cfg.rope_theta,
            scale,
            freqs: None,
            mscale: 1.0,
            traditional: false,
        }),
        RopeScaling::Yarn {
            factor,
            original_max,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
        } => {
            let base = cfg.rope_theta as f64;
            let d = dims as f64;
            let corr = |rot: f64| {
                d * (original_max / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
            };
            let low = corr(beta_fast).floor().max(0.0);
            let mut high = corr(beta_slow).ceil().min(d - 1.0);
            if low == high {
                high += 0.001;
            }
            let get_mscale = |s: f64, m: f64| {
                if s <= 1.0 {
                    1.0
                } else {
                    0.1 * m * s.ln() + 1.0
                }
            };
            let ms = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim);
            let half = (dims / 2) as usize;
            let freqs: Vec<f32> = (0..half)
                .map(|i| {
                    let extra = base.powf((2 * i) as f64 / d) as f32;
                    let inter = factor as f32 * extra;
                    let ramp = (((i as f64 - low) / (high - low)).clamp(0.0, 1.0)) as f32;
                    let mask = 1.0 - ramp;
                    (inter * extra) / (inter * mask + extra * (1.0 - mask))
                })
                .collect();
            Ok(Rope {
                dims,
                base: cfg.rope_theta,
                scale: 1.0,
                freqs: Some(Array::from_slice(&freqs, &[half as i32])),
                mscale: ms as f32,
                traditional: false,
            })
        }
    }
}

impl Model {
    /// Backs the routed experts' quantized weights with transparent huge pages (see
    /// [`crate::hugepages`]); a no-op report when `ZMLX_HUGE_PAGES=0`.
    pub fn promote_huge_pages(&self) -> Result<crate::hugepages::HugePages> {
        if !crate::hugepages::enabled() {
            return Ok(Default::default());
        }
        let arrays: Vec<&Array> = self
            .layers
            .iter()
            .filter_map(|l| match &l.ffn {
                Ffn::Moe(m) => Some(m.experts.quantized_arrays()),
                Ffn::Dense(_) => None,
            })
            .flatten()
            .collect();
        crate::hugepages::promote(&arrays)
    }

    /// A fresh KV cache per layer.
    pub fn new_cache(&self) -> Vec<KvCache> {
        (0..self.layers.len()).map(|_| KvCache::new()).collect()
    }

    /// Logits `[B, L, vocab]` for token ids `[B, L]` (int32/uint32), appending to `cache`. `path` selects
    /// how the experts and every quantized linear layer (attention, router, dense MLPs, lm_head / tied
    /// embedding) compute: [`MoePath::Reference`] exactly as mlx-lm, [`MoePath::Fused`] through zmlx's
    /// fused primitives with float32 accumulation. Ignored by the oracle, whose weights are all dense.
    pub fn forward(&self, ids: &Array, cache: &mut [KvCache], path: MoePath) -> Result<Array> {
        if ids.ndim() != 2 {
            return Err(Error::invalid(format!(
                "token ids must be [B, L], got {:?}",
                ids.shape()
            )));
        }
        if cache.len() != self.layers.len() {
            return Err(Error::invalid(format!(
                "cache has {} layers, model has {}",
                cache.len(),
                self.layers.len()
            )));
        }
        let path = if self.is_oracle {
            MoePath::Reference
        } else {
            path
        };
        // The fused path computes its activations (residual stream, attention, KV cache, logits) in
        // float32 from here on; the reference path keeps the model's dtype, as mlx-lm.
        // Each residual add is followed by the next norm (the FFN's, the next layer's input norm, the
        // final norm): the fused path does both in one add_rms_norm.
        let mut h = self.embed.forward_path(ids, path)?;
        let mut x = match self.layers.first() {
            Some(l) => l.input_norm.forward(&h)?,
            None => self.norm.forward(&h)?,
        };
        for (i, (layer, c)) in self.layers.iter().zip(cache.iter_mut()).enumerate() {
            let r = layer.attn.forward(&x, c, path)?;
            let (h1, x1) = layer.post_attn_norm.add_forward(&h, &r, path)?;
            let r = match &layer.ffn {
                Ffn::Dense(m) => m.forward(&x1, path)?,
                Ffn::Moe(m) => m.forward(&x1, path)?,
            };
            let next = self.layers.get(i + 1).map_or(&self.norm, |l| &l.input_norm);
            (h, x) = next.add_forward(&h1, &r, path)?;
        }
        let h = x;
        match &self.lm_head {
            Some(l) => l.forward_path(&h, path),
            None => self.embed.as_linear(&h, path),
        }
    }

    /// The float32 oracle: every weight dequantized to float32 once, all parameters float32, so the model
    /// runs without quantized kernels and with float32 activations.
    pub fn to_oracle(&self) -> Result<Model> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    attn: l.attn.to_f32()?,
                    input_norm: l.input_norm.to_f32()?,
                    post_attn_norm: l.post_attn_norm.to_f32()?,
                    ffn: match &l.ffn {
                        Ffn::Dense(m) => Ffn::Dense(Box::new(m.to_f32()?)),
                        Ffn::Moe(m) => Ffn::Moe(Box::new(m.to_f32()?)),
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let m = Model {
            config: ModelConfig {
                dtype: Dtype::Float32,
                ..self.config.clone()
            },
            embed: self.embed.to_f32()?,
            layers,
            norm: self.norm.to_f32()?,
            lm_head: self.lm_head.as_ref().map(Linear::to_f32).transpose()?,
            is_oracle: true,
        };
        m.eval()?;
        Ok(m)
    }

    /// Evaluates every parameter (so later timings exclude weight preparation).
    pub fn eval(&self) -> Result<()> {
        self.embed.weight.eval()?;
        for l in &self.layers {
            for lin in [
                &l.attn.q_proj,
                &l.attn.k_proj,
                &l.attn.v_proj,
                &l.attn.o_proj,
            ] {
                lin.weight.eval()?;
            }
            match &l.ffn {
                Ffn::Dense(m) => {
                    for lin in [&m.gate_proj, &m.up_proj, &m.down_proj] {
                        lin.weight.eval()?;
                    }
                }
                Ffn::Moe(m) => {
                    m.router.gate.weight.eval()?;
                    for w in [
                        &m.experts.gate_proj,
                        &m.experts.up_proj,
                        &m.experts.down_proj,
                    ] {
                        match w {
                            ExpertWeight::Quantized(q) => q.eval()?,
                            ExpertWeight::Dense(a) => a.eval()?,
                        }
                    }
                }
            }
        }
        if let Some(l) = &self.lm_head {
            l.weight.eval()?;
        }
        Ok(())
    }

    /// Makes every MoE layer hold `range` of its experts (its expert weights must be exactly those) and
    /// add its partial sums over `ep`'s group.
    pub(crate) fn share_experts(&mut self, range: ExpertRange, ep: &ExpertParallel) {
        for l in &mut self.layers {
            if let Ffn::Moe(m) = &mut l.ffn {
                m.parallel = Some((range, ep.clone()));
            }
        }
    }

    /// Under expert parallelism, this rank's share of every MoE layer's experts and the group.
    pub fn expert_shard(&self) -> Option<&(ExpertRange, ExpertParallel)> {
        self.layers.iter().find_map(|l| match &l.ffn {
            Ffn::Moe(m) => m.parallel.as_ref(),
            Ffn::Dense(_) => None,
        })
    }

    /// Bytes of the routed experts' arrays this process holds (weights, quantization scales and biases,
    /// expert biases), over all MoE layers.
    pub fn expert_bytes(&self) -> usize {
        self.layers
            .iter()
            .filter_map(|l| match &l.ffn {
                Ffn::Moe(m) => Some(&m.experts),
                Ffn::Dense(_) => None,
            })
            .map(|e| {
                let weights: usize = [&e.gate_proj, &e.up_proj, &e.down_proj]
                    .into_iter()
                    .map(|w| match w {
                        ExpertWeight::Quantized(q) => q.nbytes(),
                        ExpertWeight::Dense(a) => a.nbytes(),
                    })
                    .sum();
                let biases: usize = [&e.gate_bias, &e.up_bias, &e.down_bias]
                    .into_iter()
                    .flatten()
                    .map(Array::nbytes)
                    .sum();
                weights + biases
            })
            .sum()
    }

    /// Number of MoE layers.
    pub fn num_moe_layers(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| matches!(l.ffn, Ffn::Moe(_)))
            .count()
    }
}
