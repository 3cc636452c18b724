//! The decoder-only MoE transformer shared by all supported architectures, its loader from mlx-lm
//! tensor names, and its float32 oracle form.

use mlx_rs::{ops, Array, Dtype};

use super::config::{Arch, LayerQuant, ModelConfig, RopeScaling};
use crate::checkpoint::Tensors;
use crate::error::{Error, Result};
use crate::moe::{Activation, ExpertWeight, MoePath, Router, RouterKind, SparseMoe, SwitchGlu};
use crate::nn::{Attention, Embedding, KvCache, Linear, Mlp, RmsNorm, Rope, Weight};
use crate::quant::QuantizedWeight;

/// The feed-forward part of a layer.
#[derive(Clone, Debug)]
pub enum Ffn {
    /// Dense MLP.
    Dense(Mlp),
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

/// Names of the modules that differ between architectures (mlx-lm's key layout).
pub(crate) struct Naming {
    pub moe: &'static str,
    pub router: &'static str,
    pub experts: &'static str,
    pub attn_bias: bool,
    pub qk_norm: bool,
    pub sinks: bool,
    pub router_bias: bool,
    pub expert_bias: bool,
    pub activation: Activation,
}

impl Naming {
    pub(crate) fn of(arch: Arch) -> Naming {
        match arch {
            Arch::Qwen3Moe => Naming {
                moe: "mlp",
                router: "gate",
                experts: "switch_mlp",
                attn_bias: false,
                qk_norm: true,
                sinks: false,
                router_bias: false,
                expert_bias: false,
                activation: Activation::Swiglu,
            },
            Arch::GptOss => Naming {
                moe: "mlp",
                router: "router",
                experts: "experts",
                attn_bias: true,
                qk_norm: false,
                sinks: true,
                router_bias: true,
                expert_bias: true,
                activation: Activation::GPT_OSS,
            },
            Arch::Mixtral => Naming {
                moe: "block_sparse_moe",
                router: "gate",
                experts: "switch_mlp",
                attn_bias: false,
                qk_norm: false,
                sinks: false,
                router_bias: false,
                expert_bias: false,
                activation: Activation::Swiglu,
            },
        }
    }
}

fn router_kind(cfg: &ModelConfig) -> RouterKind {
    match cfg.arch {
        Arch::Qwen3Moe => RouterKind::SoftmaxTopK {
            renormalize: cfg.norm_topk_prob,
        },
        Arch::GptOss | Arch::Mixtral => RouterKind::TopKSoftmax,
    }
}

/// An expected tensor shape (`None`: any size).
type Shape = Vec<Option<i32>>;

/// Expected shapes of a quantized `[.., out, in]` weight's parts.
fn qshapes(lead: &[i32], out: i32, inp: i32, q: LayerQuant) -> Result<(Shape, Shape)> {
    if inp % q.group_size != 0 || (inp * q.bits) % 32 != 0 {
        return Err(Error::config(format!(
            "input dim {inp} cannot be quantized with group_size {} / {} bits",
            q.group_size, q.bits
        )));
    }
    let mut w: Vec<Option<i32>> = lead.iter().map(|&d| Some(d)).collect();
    let mut s = w.clone();
    w.extend([Some(out), Some(inp * q.bits / 32)]);
    s.extend([Some(out), Some(inp / q.group_size)]);
    Ok((w, s))
}

/// Loads a (possibly quantized) weight `[lead.., out, in]` stored under `{path}.weight` (+ `.scales`,
/// `.biases`). Quantized iff `{path}.scales` exists, as mlx-lm decides.
pub(crate) fn load_weight(
    t: &mut Tensors,
    cfg: &ModelConfig,
    path: &str,
    lead: &[i32],
    out: i32,
    inp: i32,
) -> Result<Weight> {
    if t.contains(&format!("{path}.scales")) {
        let q = cfg.quant_for(path).ok_or_else(|| {
            Error::checkpoint(
                &t.origin,
                format!("'{path}' is quantized but config.json has no quantization for it"),
            )
        })?;
        let (ws, ss) = qshapes(lead, out, inp, q)?;
        let w = t.take(&format!("{path}.weight"), &ws)?;
        let scales = t.take(&format!("{path}.scales"), &ss)?;
        let biases = if q.mode.has_biases() {
            Some(t.take(&format!("{path}.biases"), &ss)?)
        } else {
            None
        };
        if w.dtype() != Dtype::Uint32 {
            return Err(Error::checkpoint(
                &t.origin,
                format!(
                    "'{path}.weight' is quantized but has dtype {:?} (expected uint32)",
                    w.dtype()
                ),
            ));
        }
        let qw = QuantizedWeight::new(w, scales, biases, q.mode, q.group_size, q.bits)
            .map_err(|e| Error::checkpoint(&t.origin, format!("'{path}': {e}")))?;
        Ok(Weight::Quantized(qw))
    } else {
        let mut shape: Vec<Option<i32>> = lead.iter().map(|&d| Some(d)).collect();
        shape.extend([Some(out), Some(inp)]);
        let w = t.take(&format!("{path}.weight"), &shape)?;
        if !crate::array::is_float(w.dtype()) {
            return Err(Error::checkpoint(
                &t.origin,
                format!(
                    "'{path}.weight' has dtype {:?}, expected a float type",
                    w.dtype()
                ),
            ));
        }
        Ok(Weight::Dense(w))
    }
}

fn load_linear(
    t: &mut Tensors,
    cfg: &ModelConfig,
    path: &str,
    out: i32,
    inp: i32,
    bias: bool,
) -> Result<Linear> {
    let weight = load_weight(t, cfg, path, &[], out, inp)?;
    let bias = if bias {
        let b = t.take(&format!("{path}.bias"), &[Some(out)])?;
        if !crate::array::is_float(b.dtype()) {
            return Err(Error::checkpoint(
                &t.origin,
                format!(
                    "'{path}.bias' has dtype {:?}, expected a float type",
                    b.dtype()
                ),
            ));
        }
        Some(b)
    } else {
        None
    };
    Ok(Linear { weight, bias })
}

fn load_norm(t: &mut Tensors, path: &str, dim: i32, eps: f32) -> Result<RmsNorm> {
    let weight = t.take(&format!("{path}.weight"), &[Some(dim)])?;
    if !crate::array::is_float(weight.dtype()) {
        return Err(Error::checkpoint(
            &t.origin,
            format!(
                "'{path}.weight' has dtype {:?}, expected a float type",
                weight.dtype()
            ),
        ));
    }
    Ok(RmsNorm { weight, eps })
}

/// RoPE for a config (mlx-lm: Qwen3 / Mixtral use plain `nn.RoPE`; gpt-oss goes through `initialize_rope`).
pub(crate) fn make_rope(cfg: &ModelConfig) -> Result<Rope> {
    let dims = cfg.head_dim;
    let scaling = match cfg.arch {
        Arch::GptOss => cfg.rope_scaling.clone(),
        _ => RopeScaling::Plain { scale: 1.0 },
    };
    match scaling {
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

    /// Builds the model from mlx-lm-named tensors. Errors name the first missing or malformed tensor.
    pub fn from_tensors(cfg: ModelConfig, t: &mut Tensors) -> Result<Model> {
        let n = Naming::of(cfg.arch);
        let d = cfg.hidden_size;
        let hd = cfg.head_dim;
        let eps = cfg.rms_norm_eps;
        let embed = Embedding {
            weight: load_weight(t, &cfg, "model.embed_tokens", &[], cfg.vocab_size, d)?,
        };
        let rope = make_rope(&cfg)?;
        let mut layers = Vec::with_capacity(cfg.num_layers as usize);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let attn = Attention {
                q_proj: load_linear(
                    t,
                    &cfg,
                    &format!("{a}.q_proj"),
                    cfg.n_heads * hd,
                    d,
                    n.attn_bias,
                )?,
                k_proj: load_linear(
                    t,
                    &cfg,
                    &format!("{a}.k_proj"),
                    cfg.n_kv_heads * hd,
                    d,
                    n.attn_bias,
                )?,
                v_proj: load_linear(
                    t,
                    &cfg,
                    &format!("{a}.v_proj"),
                    cfg.n_kv_heads * hd,
                    d,
                    n.attn_bias,
                )?,
                o_proj: load_linear(
                    t,
                    &cfg,
                    &format!("{a}.o_proj"),
                    d,
                    cfg.n_heads * hd,
                    n.attn_bias,
                )?,
                q_norm: n
                    .qk_norm
                    .then(|| load_norm(t, &format!("{a}.q_norm"), hd, eps))
                    .transpose()?,
                k_norm: n
                    .qk_norm
                    .then(|| load_norm(t, &format!("{a}.k_norm"), hd, eps))
                    .transpose()?,
                sinks: n
                    .sinks
                    .then(|| t.take(&format!("{a}.sinks"), &[Some(cfg.n_heads)]))
                    .transpose()?,
                n_heads: cfg.n_heads,
                n_kv_heads: cfg.n_kv_heads,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                rope: rope.clone(),
                window: if cfg.sliding[i as usize] {
                    cfg.sliding_window
                } else {
                    None
                },
            };
            let ffn = if cfg.sparse[i as usize] {
                let m = format!("{p}.{}", n.moe);
                let e = cfg.num_experts;
                let inter = cfg.moe_intermediate;
                let x = format!("{m}.{}", n.experts);
                let ew =
                    |t: &mut Tensors, name: &str, out: i32, inp: i32| -> Result<ExpertWeight> {
                        Ok(
                            match load_weight(t, &cfg, &format!("{x}.{name}"), &[e], out, inp)? {
                                Weight::Dense(w) => ExpertWeight::Dense(w),
                                Weight::Quantized(q) => ExpertWeight::Quantized(q),
                            },
                        )
                    };
                let eb = |t: &mut Tensors, name: &str, out: i32| -> Result<Option<Array>> {
                    if n.expert_bias {
                        Ok(Some(t.take(
                            &format!("{x}.{name}.bias"),
                            &[Some(e), Some(out)],
                        )?))
                    } else {
                        Ok(None)
                    }
                };
                let experts = SwitchGlu {
                    gate_proj: ew(t, "gate_proj", inter, d)?,
                    up_proj: ew(t, "up_proj", inter, d)?,
                    down_proj: ew(t, "down_proj", d, inter)?,
                    gate_bias: eb(t, "gate_proj", inter)?,
                    up_bias: eb(t, "up_proj", inter)?,
                    down_bias: eb(t, "down_proj", d)?,
                    activation: n.activation,
                };
                experts.dims()?;
                Ffn::Moe(Box::new(SparseMoe {
                    router: Router {
                        gate: load_linear(
                            t,
                            &cfg,
                            &format!("{m}.{}", n.router),
                            e,
                            d,
                            n.router_bias,
                        )?,
                        top_k: cfg.top_k,
                        kind: router_kind(&cfg),
                        correction_bias: None,
                    },
                    experts,
                    shared: None,
                }))
            } else {
                let m = format!("{p}.mlp");
                Ffn::Dense(Mlp {
                    gate_proj: load_linear(
                        t,
                        &cfg,
                        &format!("{m}.gate_proj"),
                        cfg.intermediate,
                        d,
                        false,
                    )?,
                    up_proj: load_linear(
                        t,
                        &cfg,
                        &format!("{m}.up_proj"),
                        cfg.intermediate,
                        d,
                        false,
                    )?,
                    down_proj: load_linear(
                        t,
                        &cfg,
                        &format!("{m}.down_proj"),
                        d,
                        cfg.intermediate,
                        false,
                    )?,
                })
            };
            layers.push(Layer {
                attn,
                input_norm: load_norm(t, &format!("{p}.input_layernorm"), d, eps)?,
                post_attn_norm: load_norm(t, &format!("{p}.post_attention_layernorm"), d, eps)?,
                ffn,
            });
        }
        let norm = load_norm(t, "model.norm", d, eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(load_linear(t, &cfg, "lm_head", cfg.vocab_size, d, false)?)
        };
        Ok(Model {
            config: cfg,
            embed,
            layers,
            norm,
            lm_head,
            is_oracle: false,
        })
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
        let mut h = self.embed.forward_path(ids, path)?;
        for (layer, c) in self.layers.iter().zip(cache.iter_mut()) {
            let r = layer
                .attn
                .forward(&layer.input_norm.forward(&h)?, c, path)?;
            h = ops::add(&h, &r)?;
            let x = layer.post_attn_norm.forward(&h)?;
            let r = match &layer.ffn {
                Ffn::Dense(m) => m.forward(&x, path)?,
                Ffn::Moe(m) => m.forward(&x, path)?,
            };
            h = ops::add(&h, &r)?;
        }
        let h = self.norm.forward(&h)?;
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
                        Ffn::Dense(m) => Ffn::Dense(m.to_f32()?),
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

    /// Number of MoE layers.
    pub fn num_moe_layers(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| matches!(l.ffn, Ffn::Moe(_)))
            .count()
    }
}
