//! Mixtral (`model_type: mixtral`), as mlx-lm's `mixtral.py`: plain attention, router `block_sparse_moe.gate`
//! (top-k on logits, softmax over the k), SwiGLU experts under `block_sparse_moe.switch_mlp`.

use serde_json::{json, Value};

use super::config::{Arch, Fields, ModelConfig, RopeScaling};
use super::preset::Dims;
use super::schema::{decoder, Layout, ModelSpec};
use crate::error::Result;
use crate::moe::{Activation, RouterKind};

/// mlx-lm's key layout and module options for Mixtral.
pub(crate) const LAYOUT: Layout = Layout {
    qkv_bias: false,
    o_bias: false,
    qk_norm: false,
    sinks: false,
    moe: "block_sparse_moe",
    router: "gate",
    router_bias: false,
    router_quantized: true,
    correction_bias: false,
    shared_experts: "shared_experts",
    experts: "switch_mlp",
    expert_bias: false,
    activation: Activation::Swiglu,
};

/// The parameters of a Mixtral model.
pub(crate) fn describe(c: &ModelConfig) -> ModelSpec {
    decoder(c, &c.layout, c.routing.clone())
}

pub(crate) fn parse_config(v: &Value) -> Result<ModelConfig> {
    let f = Fields(v);
    let layers = f.pos("num_hidden_layers")?;
    let hidden = f.pos("hidden_size")?;
    let heads = f.pos("num_attention_heads")?;
    let inter = f.pos("intermediate_size")?;
    let head_dim = f.i32_opt("head_dim")?.unwrap_or(hidden / heads);
    Ok(ModelConfig {
        arch: Arch::Mixtral,
        hidden_size: hidden,
        num_layers: layers,
        n_heads: heads,
        n_kv_heads: f.i32_opt("num_key_value_heads")?.unwrap_or(heads),
        head_dim,
        rope_dims: head_dim,
        vocab_size: f.pos("vocab_size")?,
        rms_norm_eps: f.f32_nonneg("rms_norm_eps", 1e-5)?,
        rope_theta: f.f32_pos("rope_theta", 1e6)?,
        // mlx-lm's mixtral uses a plain `nn.RoPE`, whatever `rope_scaling` says.
        rope_scaling: RopeScaling::Plain { scale: 1.0 },
        tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
        num_experts: f.i32_opt("num_local_experts")?.unwrap_or(8),
        top_k: f.i32_opt("num_experts_per_tok")?.unwrap_or(2),
        moe_intermediate: inter,
        intermediate: inter,
        norm_topk_prob: false,
        routing: RouterKind::TopKSoftmaxNeg,
        shared_intermediate: None,
        layout: LAYOUT,
        sparse: vec![true; layers as usize],
        sliding: vec![false; layers as usize],
        sliding_window: None,
        dtype: mlx_rs::Dtype::Bfloat16,
        quant: None,
        raw: Value::Null,
    })
}

/// An mlx-lm style `config.json` for a Mixtral model of sizes `d` (without `quantization`).
pub fn config_for(d: &Dims, dtype: &str) -> Value {
    json!({
        "model_type": "mixtral",
        "architectures": ["MixtralForCausalLM"],
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
        "rope_theta": 1000000.0,
        "tie_word_embeddings": false,
        "torch_dtype": dtype,
    })
}
