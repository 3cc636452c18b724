//! Mixtral (`model_type: mixtral`), as mlx-lm's `mixtral.py`: plain attention, router `block_sparse_moe.gate`
//! (top-k on logits, softmax over the k), SwiGLU experts under `block_sparse_moe.switch_mlp`.

use serde_json::Value;

use super::config::{Arch, Fields, ModelConfig, RopeScaling};
use crate::error::Result;

pub(crate) fn parse_config(v: &Value) -> Result<ModelConfig> {
    let f = Fields(v);
    let layers = f.pos("num_hidden_layers")?;
    let hidden = f.pos("hidden_size")?;
    let heads = f.pos("num_attention_heads")?;
    let inter = f.pos("intermediate_size")?;
    Ok(ModelConfig {
        arch: Arch::Mixtral,
        hidden_size: hidden,
        num_layers: layers,
        n_heads: heads,
        n_kv_heads: f.i32_opt("num_key_value_heads")?.unwrap_or(heads),
        head_dim: f.i32_opt("head_dim")?.unwrap_or(hidden / heads),
        vocab_size: f.pos("vocab_size")?,
        rms_norm_eps: f.f64_or("rms_norm_eps", 1e-5)? as f32,
        rope_theta: f.f64_or("rope_theta", 1e6)? as f32,
        rope_scaling: RopeScaling::Plain { scale: 1.0 },
        tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
        num_experts: f.i32_opt("num_local_experts")?.unwrap_or(8),
        top_k: f.i32_opt("num_experts_per_tok")?.unwrap_or(2),
        moe_intermediate: inter,
        intermediate: inter,
        norm_topk_prob: false,
        sparse: vec![true; layers as usize],
        sliding: vec![false; layers as usize],
        sliding_window: None,
        dtype: mlx_rs::Dtype::Bfloat16,
        quant: None,
        raw: Value::Null,
    })
}
