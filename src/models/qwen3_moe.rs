//! Qwen3-MoE (`model_type: qwen3_moe`), as mlx-lm's `qwen3_moe.py`: q/k RMSNorm per head, no attention
//! bias, softmax router with optional top-k renormalisation, SwiGLU experts under `mlp.switch_mlp`, dense MLP
//! on `mlp_only_layers` and off the `decoder_sparse_step` grid.

use serde_json::{json, Value};

use super::config::{Arch, Fields, ModelConfig, RopeScaling};
use super::preset::Dims;
use super::schema::{decoder, Layout, ModelSpec};
use crate::error::{Error, Result};
use crate::moe::{Activation, RouterKind};

/// mlx-lm's key layout and module options for Qwen3-MoE.
pub(crate) const LAYOUT: Layout = Layout {
    qkv_bias: false,
    o_bias: false,
    qk_norm: true,
    sinks: false,
    moe: "mlp",
    router: "gate",
    router_bias: false,
    router_quantized: true,
    correction_bias: false,
    shared_experts: "shared_experts",
    experts: "switch_mlp",
    expert_bias: false,
    activation: Activation::Swiglu,
};

/// The parameters of a Qwen3-MoE model.
pub(crate) fn describe(c: &ModelConfig) -> ModelSpec {
    decoder(c, &c.layout, c.routing.clone())
}

pub(crate) fn parse_config(v: &Value) -> Result<ModelConfig> {
    let f = Fields(v);
    let hidden = f.pos("hidden_size")?;
    let layers = f.pos("num_hidden_layers")?;
    let heads = f.pos("num_attention_heads")?;
    let num_experts = f.i32_opt("num_experts")?.unwrap_or(0);
    // mlx-lm tests `(i + 1) % decoder_sparse_step == 0`: zero is an error there, and a negative step
    // selects the layers its absolute value selects (Python's modulo).
    let step = match f.i32_opt("decoder_sparse_step")? {
        None => 1,
        Some(0) => {
            return Err(Error::config(
                "field 'decoder_sparse_step' must not be 0 (every layer index modulo 0)",
            ))
        }
        Some(n) => i64::from(n.unsigned_abs()),
    };
    let mlp_only = f.i32_list_or_empty("mlp_only_layers")?;
    let sparse = (0..layers)
        .map(|i| !mlp_only.contains(&i) && num_experts > 0 && i64::from(i + 1) % step == 0)
        .collect();
    let head_dim = f.i32_opt("head_dim")?.unwrap_or(hidden / heads);
    let norm_topk_prob = f.bool_or("norm_topk_prob", false)?;
    Ok(ModelConfig {
        arch: Arch::Qwen3Moe,
        hidden_size: hidden,
        num_layers: layers,
        n_heads: heads,
        n_kv_heads: f.i32_opt("num_key_value_heads")?.unwrap_or(heads),
        head_dim,
        rope_dims: head_dim,
        vocab_size: f.pos("vocab_size")?,
        rms_norm_eps: f.f32_nonneg("rms_norm_eps", 1e-6)?,
        rope_theta: f.f32_pos("rope_theta", 1e6)?,
        // mlx-lm's qwen3_moe uses a plain `nn.RoPE`, whatever `rope_scaling` says.
        rope_scaling: RopeScaling::Plain { scale: 1.0 },
        tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
        num_experts: num_experts.max(1),
        top_k: f.pos("num_experts_per_tok")?,
        moe_intermediate: f.pos("moe_intermediate_size")?,
        intermediate: f.i32_opt("intermediate_size")?.unwrap_or(0),
        norm_topk_prob,
        routing: RouterKind::SoftmaxTopK {
            renormalize: norm_topk_prob,
        },
        shared_intermediate: None,
        layout: LAYOUT,
        sparse,
        sliding: vec![false; layers as usize],
        sliding_window: None,
        dtype: mlx_rs::Dtype::Bfloat16,
        quant: None,
        raw: Value::Null,
    })
}

/// An mlx-lm style `config.json` for a Qwen3-MoE model of sizes `d` (without `quantization`): every
/// layer sparse, `d.expert_dim` per expert.
pub fn config_for(d: &Dims, dtype: &str) -> Value {
    json!({
        "model_type": "qwen3_moe",
        "architectures": ["Qwen3MoeForCausalLM"],
        "hidden_size": d.hidden,
        "num_hidden_layers": d.layers,
        "intermediate_size": d.expert_dim * 4,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "head_dim": d.head_dim,
        "num_experts": d.experts,
        "num_experts_per_tok": d.top_k,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "moe_intermediate_size": d.expert_dim,
        "rms_norm_eps": 1e-6,
        "vocab_size": d.vocab,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": false,
        "max_position_embeddings": 32768,
        "norm_topk_prob": true,
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
    moe_inter: i32,
    vocab: i32,
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
        expert_dim: moe_inter,
        vocab,
        window: None,
    };
    config_for(&d, dtype)
}
