//! gpt-oss (`model_type: gpt_oss`), as mlx-lm's `gpt_oss.py`: attention with biases and per-head sinks,
//! alternating sliding-window / full attention, router with bias (top-k on logits, softmax over the k),
//! experts under `mlp.experts` with per-expert biases and the clamped SwiGLU (`alpha` 1.702, `limit` 7),
//! weights usually mxfp4.

use serde_json::{json, Value};

use super::config::{Arch, Fields, ModelConfig, RopeScaling};
use super::preset::Dims;
use super::schema::{decoder, Layout, ModelSpec};
use crate::error::{Error, Result};
use crate::moe::{Activation, RouterKind};

/// `sliding_window` where a config leaves it out (mlx-lm's default).
const DEFAULT_WINDOW: i32 = 128;

/// mlx-lm's key layout and module options for gpt-oss.
pub(crate) const LAYOUT: Layout = Layout {
    qkv_bias: true,
    o_bias: true,
    qk_norm: false,
    sinks: true,
    moe: "mlp",
    router: "router",
    router_bias: true,
    router_quantized: true,
    correction_bias: false,
    shared_experts: "shared_experts",
    experts: "experts",
    expert_bias: true,
    activation: Activation::GPT_OSS,
};

/// The parameters of a gpt-oss model.
pub(crate) fn describe(c: &ModelConfig) -> ModelSpec {
    decoder(c, &c.layout, c.routing.clone())
}

pub(crate) fn parse_config(v: &Value) -> Result<ModelConfig> {
    let f = Fields(v);
    let layers = f.pos("num_hidden_layers")?;
    let hidden = f.pos("hidden_size")?;
    let heads = f.pos("num_attention_heads")?;
    let sliding: Vec<bool> = match v.get("layer_types").filter(|x| !x.is_null()) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(Error::config(format!("unknown layer type {t}"))),
            })
            .collect::<Result<_>>()?,
        Some(other) => {
            return Err(Error::config(format!(
                "layer_types must be a list, got {other}"
            )))
        }
        None => (0..layers).map(|i| i % 2 == 0).collect(),
    };
    if sliding.len() != layers as usize {
        return Err(Error::config(format!(
            "layer_types has {} entries for {layers} layers",
            sliding.len()
        )));
    }
    let inter = f.pos("intermediate_size")?;
    let head_dim = f.i32_opt("head_dim")?.unwrap_or(64);
    Ok(ModelConfig {
        arch: Arch::GptOss,
        hidden_size: hidden,
        num_layers: layers,
        n_heads: heads,
        n_kv_heads: f.pos("num_key_value_heads")?,
        head_dim,
        rope_dims: head_dim,
        vocab_size: f.pos("vocab_size")?,
        rms_norm_eps: f.f32_nonneg("rms_norm_eps", 1e-5)?,
        rope_theta: f.f32_pos("rope_theta", 150000.0)?,
        rope_scaling: RopeScaling::parse(v.get("rope_scaling"))?,
        tie_word_embeddings: false,
        num_experts: f.pos("num_local_experts")?,
        top_k: f.pos("num_experts_per_tok")?,
        moe_intermediate: inter,
        intermediate: inter,
        norm_topk_prob: false,
        routing: RouterKind::TopKSoftmax,
        shared_intermediate: None,
        layout: LAYOUT,
        sparse: vec![true; layers as usize],
        sliding,
        sliding_window: Some(f.i32_opt("sliding_window")?.unwrap_or(DEFAULT_WINDOW)),
        dtype: mlx_rs::Dtype::Bfloat16,
        quant: None,
        raw: Value::Null,
    })
}

/// An mlx-lm style `config.json` for a gpt-oss model of sizes `d` (without `quantization`): sliding
/// and full attention alternating, `d.expert_dim` per expert.
pub fn config_for(d: &Dims, dtype: &str) -> Value {
    let types: Vec<&str> = (0..d.layers)
        .map(|i| {
            if i % 2 == 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    json!({
        "model_type": "gpt_oss",
        "architectures": ["GptOssForCausalLM"],
        "hidden_size": d.hidden,
        "num_hidden_layers": d.layers,
        "intermediate_size": d.expert_dim,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "head_dim": d.head_dim,
        "num_local_experts": d.experts,
        "num_experts_per_tok": d.top_k,
        "rms_norm_eps": 1e-5,
        "vocab_size": d.vocab,
        "rope_theta": 150000,
        "sliding_window": d.window.unwrap_or(DEFAULT_WINDOW),
        "layer_types": types,
        "torch_dtype": dtype,
    })
}

/// [`config_for`] with the sizes given one by one.
#[allow(clippy::too_many_arguments)]
pub fn config_json(
    hidden: i32,
    layers: i32,
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    experts: i32,
    top_k: i32,
    inter: i32,
    vocab: i32,
    sliding_window: i32,
    dtype: &str,
) -> Value {
    let d = Dims {
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        experts,
        top_k,
        expert_dim: inter,
        vocab,
        window: Some(sliding_window),
    };
    config_for(&d, dtype)
}
