//! Building a [`Model`] from mlx-lm-named tensors, each checked against the model's description
//! ([`super::schema`]): present, of the described shape, of a float dtype or quantized as the config says.

use mlx_rs::{Array, Dtype};

use super::common::{make_rope, Ffn, Layer, Model};
use super::config::{LayerQuant, ModelConfig};
use super::schema::{AttentionSpec, FfnSpec, Kind, LinearSpec, MlpSpec, ModelSpec, MoeSpec, Param};
use super::Mlp;
use crate::checkpoint::Tensors;
use crate::error::{Error, Result};
use crate::moe::{ExpertWeight, Router, SparseMoe, SwitchGlu};
use crate::nn::{Attention, Embedding, Linear, RmsNorm, Rope, Weight};
use crate::quant::QuantizedWeight;

/// An expected tensor shape.
type Shape = Vec<Option<i32>>;

fn expect(dims: &[i32]) -> Shape {
    dims.iter().map(|&d| Some(d)).collect()
}

/// Expected shapes of a quantized `[.., out, in]` weight's codes and scales.
fn qshapes(lead: &[i32], out: i32, inp: i32, q: LayerQuant) -> Result<(Shape, Shape)> {
    if inp % q.group_size != 0 || (inp * q.bits) % 32 != 0 {
        return Err(Error::config(format!(
            "input dim {inp} cannot be quantized with group_size {} / {} bits",
            q.group_size, q.bits
        )));
    }
    let mut w = expect(lead);
    let mut s = w.clone();
    w.extend([Some(out), Some(inp * q.bits / 32)]);
    s.extend([Some(out), Some(inp / q.group_size)]);
    Ok((w, s))
}

/// A float tensor of the described shape.
fn float(t: &mut Tensors, p: &Param) -> Result<Array> {
    let a = t.take(&p.name, &expect(&p.shape))?;
    if !crate::array::is_float(a.dtype()) {
        return Err(Error::checkpoint(
            &t.origin,
            format!(
                "'{}' has dtype {:?}, expected a float type",
                p.name,
                a.dtype()
            ),
        ));
    }
    Ok(a)
}

/// A weight `[lead.., out, in]`: quantized iff `{module}.scales` exists, as mlx-lm decides.
fn weight(t: &mut Tensors, p: &Param) -> Result<Weight> {
    let path = p.module();
    if !t.contains(&format!("{path}.scales")) {
        return Ok(Weight::Dense(float(t, p)?));
    }
    let q = match p.kind {
        Kind::Weight(q) => q,
        Kind::Float | Kind::Float32 => None,
    }
    .ok_or_else(|| {
        Error::checkpoint(
            &t.origin,
            format!("'{path}' is quantized but config.json has no quantization for it"),
        )
    })?;
    let &[ref lead @ .., out, inp] = &p.shape[..] else {
        return Err(Error::Internal(format!(
            "weight '{path}' described with shape {:?}",
            p.shape
        )));
    };
    let (ws, ss) = qshapes(lead, out, inp, q)?;
    let w = t.take(&p.name, &ws)?;
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
                "'{}' is quantized but has dtype {:?} (expected uint32)",
                p.name,
                w.dtype()
            ),
        ));
    }
    let qw = QuantizedWeight::new(w, scales, biases, q.mode, q.group_size, q.bits)
        .map_err(|e| Error::checkpoint(&t.origin, format!("'{path}': {e}")))?;
    Ok(Weight::Quantized(qw))
}

fn optional(t: &mut Tensors, p: &Option<Param>) -> Result<Option<Array>> {
    p.as_ref().map(|p| float(t, p)).transpose()
}

fn linear(t: &mut Tensors, s: &LinearSpec) -> Result<Linear> {
    Ok(Linear {
        weight: weight(t, &s.weight)?,
        bias: optional(t, &s.bias)?,
        lora: None,
    })
}

fn norm(t: &mut Tensors, p: &Param, eps: f32) -> Result<RmsNorm> {
    Ok(RmsNorm {
        weight: float(t, p)?,
        eps,
    })
}

fn mlp(t: &mut Tensors, s: &MlpSpec) -> Result<Mlp> {
    Ok(Mlp {
        gate_proj: linear(t, &s.gate)?,
        up_proj: linear(t, &s.up)?,
        down_proj: linear(t, &s.down)?,
    })
}

fn attention(
    t: &mut Tensors,
    s: &AttentionSpec,
    cfg: &ModelConfig,
    rope: &Rope,
) -> Result<Attention> {
    let eps = cfg.rms_norm_eps;
    Ok(Attention {
        q_proj: linear(t, &s.q)?,
        k_proj: linear(t, &s.k)?,
        v_proj: linear(t, &s.v)?,
        o_proj: linear(t, &s.o)?,
        q_norm: s.q_norm.as_ref().map(|p| norm(t, p, eps)).transpose()?,
        k_norm: s.k_norm.as_ref().map(|p| norm(t, p, eps)).transpose()?,
        sinks: optional(t, &s.sinks)?,
        n_heads: cfg.n_heads,
        n_kv_heads: cfg.n_kv_heads,
        head_dim: cfg.head_dim,
        // mlx-lm computes it in double precision (`head_dim**-0.5`) before MLX rounds it.
        scale: (cfg.head_dim as f64).powf(-0.5) as f32,
        rope: rope.clone(),
        window: s.window,
    })
}

fn moe(t: &mut Tensors, s: &MoeSpec, cfg: &ModelConfig) -> Result<SparseMoe> {
    let e = &s.experts;
    let stack = |t: &mut Tensors, p: &Param| -> Result<ExpertWeight> {
        Ok(match weight(t, p)? {
            Weight::Dense(w) => ExpertWeight::Dense(w),
            Weight::Quantized(q) => ExpertWeight::Quantized(q),
        })
    };
    // All three weights before the biases, so that a checkpoint missing several tensors is reported
    // by the first weight it lacks.
    let experts = SwitchGlu {
        gate_proj: stack(t, &e.gate.weight)?,
        up_proj: stack(t, &e.up.weight)?,
        down_proj: stack(t, &e.down.weight)?,
        gate_bias: optional(t, &e.gate.bias)?,
        up_bias: optional(t, &e.up.bias)?,
        down_bias: optional(t, &e.down.bias)?,
        activation: s.activation,
    };
    experts.dims()?;
    Ok(SparseMoe {
        router: Router {
            gate: linear(t, &s.router)?,
            top_k: cfg.top_k,
            kind: s.routing.clone(),
            correction_bias: optional(t, &s.correction_bias)?,
        },
        experts,
        shared: s.shared.as_ref().map(|m| mlp(t, m)).transpose()?,
        parallel: None,
    })
}

impl Model {
    /// Builds the model from mlx-lm-named tensors as its family describes them
    /// ([`ModelConfig::schema`]). Errors name the first missing or malformed tensor.
    pub fn from_tensors(cfg: ModelConfig, t: &mut Tensors) -> Result<Model> {
        let spec = cfg.schema();
        Model::from_spec(cfg, &spec, t)
    }

    /// Builds the model from the tensors `spec` describes.
    pub(crate) fn from_spec(cfg: ModelConfig, spec: &ModelSpec, t: &mut Tensors) -> Result<Model> {
        let eps = cfg.rms_norm_eps;
        let embed = Embedding {
            weight: weight(t, &spec.embed)?,
        };
        let rope = make_rope(&cfg)?;
        let layers = spec
            .layers
            .iter()
            .map(|l| {
                let attn = attention(t, &l.attn, &cfg, &rope)?;
                let ffn = match &l.ffn {
                    FfnSpec::Moe(m) => Ffn::Moe(Box::new(moe(t, m, &cfg)?)),
                    FfnSpec::Dense(m) => Ffn::Dense(Box::new(mlp(t, m)?)),
                };
                Ok(Layer {
                    attn,
                    input_norm: norm(t, &l.input_norm, eps)?,
                    post_attn_norm: norm(t, &l.post_attn_norm, eps)?,
                    ffn,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = norm(t, &spec.norm, eps)?;
        let lm_head = spec.lm_head.as_ref().map(|h| linear(t, h)).transpose()?;
        Ok(Model {
            config: cfg,
            embed,
            layers,
            norm,
            lm_head,
            is_oracle: false,
        })
    }
}
