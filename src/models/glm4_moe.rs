//! GLM-4 MoE (`model_type: glm4_moe`: GLM-4.5, GLM-4.5-Air, ...), as mlx-lm's `glm4_moe.py`: attention
//! with optional q/k/v biases (`attention_bias`) and per-head q/k RMSNorm (`use_qk_norm`), RoPE over the
//! first `partial_rotary_factor` of each head, the first `first_k_dense_replace` layers dense, then MoE
//! blocks under `mlp`: a sigmoid router `mlp.gate` (a bare matrix, never quantized) whose float32 scores
//! pick the experts after adding `e_score_correction_bias` (float32) within the `topk_group` best of
//! `n_group` expert groups, weighted by the scores (renormalised with `norm_topk_prob`) times
//! `routed_scaling_factor`; SwiGLU experts under `mlp.switch_mlp`; `n_shared_experts` always-on experts
//! under `mlp.shared_experts`. The output projection is never tied to the embedding.

use serde_json::{json, Value};

use super::config::{Arch, Fields, ModelConfig, RopeScaling};
use super::preset::Dims;
use super::schema::{decoder, Layout, ModelSpec};
use crate::error::{Error, Result};
use crate::moe::{Activation, RouterKind};

/// mlx-lm's key layout and module options for GLM-4 MoE (q/k/v biases and q/k norms as a config's
/// `attention_bias` and `use_qk_norm` say; these are their defaults).
pub(crate) const LAYOUT: Layout = Layout {
    qkv_bias: false,
    o_bias: false,
    qk_norm: false,
    sinks: false,
    moe: "mlp",
    router: "gate",
    router_bias: false,
    router_quantized: false,
    correction_bias: true,
    shared_experts: "shared_experts",
    experts: "switch_mlp",
    expert_bias: false,
    activation: Activation::Swiglu,
};

/// The parameters of a GLM-4 MoE model.
pub(crate) fn describe(c: &ModelConfig) -> ModelSpec {
    decoder(c, &c.layout, c.routing.clone())
}

pub(crate) fn parse_config(v: &Value) -> Result<ModelConfig> {
    let f = Fields(v);
    let hidden = f.pos("hidden_size")?;
    let layers = f.pos("num_hidden_layers")?;
    let heads = f.pos("num_attention_heads")?;
    // The defaults are those of the Hugging Face `Glm4MoeConfig` (mlx-lm requires every field).
    let head_dim = f.i32_opt("head_dim")?.unwrap_or(128);
    let partial = f.f64_or("partial_rotary_factor", 0.5)?;
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(Error::config(format!(
            "field 'partial_rotary_factor' must be in (0, 1], got {partial}"
        )));
    }
    // mlx-lm: `int(head_dim * partial_rotary_factor)`.
    let rope_dims = (head_dim as f64 * partial) as i32;
    // `n_routed_experts: null` makes every layer dense in mlx-lm.
    let routed = f.i32_opt("n_routed_experts")?;
    let first_dense = f.i32_opt("first_k_dense_replace")?.unwrap_or(1).max(0);
    let sparse = (0..layers)
        .map(|i| routed.is_some() && i >= first_dense)
        .collect();
    let num_experts = routed.unwrap_or(0).max(1);
    let shared = match f.i32_opt("n_shared_experts")? {
        None => None,
        Some(n) if n > 0 => Some(n),
        Some(n) => {
            return Err(Error::config(format!(
                "field 'n_shared_experts' must be positive or null, got {n}"
            )))
        }
    };
    let moe_intermediate = f.pos("moe_intermediate_size")?;
    let n_group = f.i32_opt("n_group")?.unwrap_or(1);
    let topk_group = f.i32_opt("topk_group")?.unwrap_or(1);
    if n_group < 1 || topk_group < 1 || topk_group > n_group || num_experts % n_group != 0 {
        return Err(Error::config(format!(
            "n_group {n_group} / topk_group {topk_group} do not divide {num_experts} experts into groups"
        )));
    }
    if n_group > 1 && num_experts / n_group < 2 {
        return Err(Error::config(format!(
            "n_group {n_group} leaves fewer than 2 of the {num_experts} experts per group (a group scores by its best 2)"
        )));
    }
    if let Some(m) = f.str_opt("topk_method")? {
        if m != "noaux_tc" {
            return Err(Error::config(format!(
                "unsupported topk_method '{m}' (mlx-lm's glm4_moe supports only 'noaux_tc')"
            )));
        }
    }
    if let Some(s) = f.str_opt("scoring_func")? {
        if s != "sigmoid" {
            return Err(Error::config(format!(
                "unsupported scoring_func '{s}' (glm4_moe routes with sigmoid scores)"
            )));
        }
    }
    // The shared experts are one dense MLP of n_shared_experts x moe_intermediate_size.
    let shared_intermediate = match shared {
        None => None,
        Some(n) => Some(moe_intermediate.checked_mul(n).ok_or_else(|| {
            Error::config(format!(
                "n_shared_experts {n} x moe_intermediate_size {moe_intermediate} overflows the shared experts' hidden size"
            ))
        })?),
    };
    let top_k = f.pos("num_experts_per_tok")?;
    let norm_topk_prob = f.bool_or("norm_topk_prob", true)?;
    let scaling = f.f32_finite("routed_scaling_factor", 1.0)?;
    Ok(ModelConfig {
        arch: Arch::Glm4Moe,
        hidden_size: hidden,
        num_layers: layers,
        n_heads: heads,
        n_kv_heads: f.i32_opt("num_key_value_heads")?.unwrap_or(heads),
        head_dim,
        rope_dims,
        vocab_size: f.pos("vocab_size")?,
        rms_norm_eps: f.f32_nonneg("rms_norm_eps", 1e-5)?,
        rope_theta: f.f32_pos("rope_theta", 10000.0)?,
        // mlx-lm's glm4_moe uses a plain `nn.RoPE`, whatever `rope_scaling` says.
        rope_scaling: RopeScaling::Plain { scale: 1.0 },
        // mlx-lm's glm4_moe always has its own `lm_head`.
        tie_word_embeddings: false,
        num_experts,
        // Unused where no layer routes.
        top_k: if routed.is_some() { top_k } else { 1 },
        moe_intermediate,
        intermediate: f.i32_opt("intermediate_size")?.unwrap_or(0),
        norm_topk_prob,
        routing: RouterKind::SigmoidTopK {
            renormalize: norm_topk_prob,
            scaling,
            n_group,
            topk_group,
        },
        shared_intermediate,
        layout: Layout {
            qkv_bias: f.bool_or("attention_bias", false)?,
            qk_norm: f.bool_or("use_qk_norm", false)?,
            ..LAYOUT
        },
        sparse,
        sliding: vec![false; layers as usize],
        sliding_window: None,
        dtype: mlx_rs::Dtype::Bfloat16,
        quant: None,
        raw: Value::Null,
    })
}

/// An mlx-lm style `config.json` for a GLM-4 MoE model of sizes `d` (without `quantization`), with
/// GLM-4.5-Air's choices for the rest: the first layer dense (MLP `intermediate_size` 8 x `d.expert_dim`),
/// one shared expert, half-rotary heads, q/k/v biases, no q/k norm, one expert group, scores
/// renormalised and scaled by 1.
pub fn config_for(d: &Dims, dtype: &str) -> Value {
    json!({
        "model_type": "glm4_moe",
        "architectures": ["Glm4MoeForCausalLM"],
        "hidden_size": d.hidden,
        "num_hidden_layers": d.layers,
        "intermediate_size": d.expert_dim * 8,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "head_dim": d.head_dim,
        "partial_rotary_factor": 0.5,
        "attention_bias": true,
        "use_qk_norm": false,
        "n_routed_experts": d.experts,
        "num_experts_per_tok": d.top_k,
        "n_shared_experts": 1,
        "moe_intermediate_size": d.expert_dim,
        "first_k_dense_replace": 1,
        "n_group": 1,
        "topk_group": 1,
        "norm_topk_prob": true,
        "routed_scaling_factor": 1.0,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "rms_norm_eps": 1e-5,
        "vocab_size": d.vocab,
        "rope_theta": 1000000.0,
        "rope_scaling": null,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": false,
        "torch_dtype": dtype,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::schema::{FfnSpec, Kind};

    /// A GLM-4.5-Air-shaped config.json with mlx-lm's field names (and the MTP layer count HF writes).
    fn air(extra: Value) -> Value {
        let mut c = json!({
            "model_type": "glm4_moe", "vocab_size": 151552, "hidden_size": 4096,
            "intermediate_size": 10944, "max_position_embeddings": 131072,
            "moe_intermediate_size": 1408, "norm_topk_prob": true, "num_attention_heads": 96,
            "n_group": 1, "head_dim": 128, "topk_group": 1, "n_shared_experts": 1,
            "n_routed_experts": 128, "routed_scaling_factor": 1.0, "num_experts_per_tok": 8,
            "first_k_dense_replace": 1, "num_hidden_layers": 46, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-5, "rope_theta": 1000000, "rope_scaling": null, "use_qk_norm": false,
            "tie_word_embeddings": false, "attention_bias": true, "partial_rotary_factor": 0.5,
            "num_nextn_predict_layers": 1, "torch_dtype": "bfloat16"
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn reads_every_field_of_mlx_lm_model_args() {
        let c = ModelConfig::from_json(&air(json!({}))).unwrap();
        assert_eq!(c.arch, Arch::Glm4Moe);
        assert_eq!(
            (c.hidden_size, c.num_layers, c.n_heads, c.n_kv_heads),
            (4096, 46, 96, 8)
        );
        assert_eq!((c.head_dim, c.rope_dims), (128, 64));
        assert_eq!((c.num_experts, c.top_k, c.moe_intermediate), (128, 8, 1408));
        assert_eq!((c.intermediate, c.shared_intermediate), (10944, Some(1408)));
        assert_eq!(c.sparse.iter().filter(|s| !**s).count(), 1);
        assert!(!c.sparse[0] && c.sparse[1]);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.rope_theta, 1e6);
        assert!(c.layout.qkv_bias && !c.layout.o_bias && !c.layout.qk_norm);
        assert!(!c.tie_word_embeddings);
        assert_eq!(
            c.routing,
            RouterKind::SigmoidTopK {
                renormalize: true,
                scaling: 1.0,
                n_group: 1,
                topk_group: 1
            }
        );
        // GLM-4.5's choices: q/k norm, groups, scaling, three dense layers, two shared experts.
        let c = ModelConfig::from_json(&air(json!({
            "use_qk_norm": true, "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5,
            "norm_topk_prob": false, "first_k_dense_replace": 3, "n_shared_experts": 2,
            "attention_bias": false, "partial_rotary_factor": 1.0
        })))
        .unwrap();
        assert!(c.layout.qk_norm && !c.layout.qkv_bias);
        assert_eq!(c.rope_dims, 128);
        assert_eq!(c.shared_intermediate, Some(2816));
        assert_eq!(c.sparse.iter().filter(|s| !**s).count(), 3);
        assert_eq!(
            c.routing,
            RouterKind::SigmoidTopK {
                renormalize: false,
                scaling: 2.5,
                n_group: 8,
                topk_group: 4
            }
        );
        // No shared experts; no routed experts at all (every layer dense).
        let c = ModelConfig::from_json(&air(json!({"n_shared_experts": null}))).unwrap();
        assert_eq!(c.shared_intermediate, None);
        let c = ModelConfig::from_json(&air(json!({"n_routed_experts": null}))).unwrap();
        assert!(c.sparse.iter().all(|s| !s));
        // mlx-lm ignores tie_word_embeddings here: the model always has lm_head.
        let c = ModelConfig::from_json(&air(json!({"tie_word_embeddings": true}))).unwrap();
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn rejects_what_mlx_lm_cannot_route() {
        for (extra, msg) in [
            (json!({"n_group": 3}), "do not divide 128 experts"),
            (json!({"n_group": 4, "topk_group": 5}), "topk_group 5"),
            (json!({"n_group": 128}), "fewer than 2"),
            (json!({"topk_method": "greedy"}), "topk_method 'greedy'"),
            (json!({"scoring_func": "softmax"}), "scoring_func 'softmax'"),
            (json!({"n_shared_experts": 0}), "n_shared_experts"),
            (
                json!({"partial_rotary_factor": 0.0}),
                "partial_rotary_factor",
            ),
            (
                json!({"partial_rotary_factor": 0.01}),
                "RoPE would rotate 1 of 128",
            ),
        ] {
            let e = ModelConfig::from_json(&air(extra.clone()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(msg), "{extra}: {e}");
        }
    }

    #[test]
    fn describes_mlx_lm_keys() {
        let q = json!({"group_size": 64, "bits": 4, "mode": "affine"});
        let mut v = air(json!({"num_hidden_layers": 2, "use_qk_norm": true}));
        v["quantization"] = q;
        let c = ModelConfig::from_json(&v).unwrap();
        let spec = c.schema();
        let FfnSpec::Dense(d) = &spec.layers[0].ffn else {
            panic!("layer 0 is dense")
        };
        assert_eq!(d.gate.weight.name, "model.layers.0.mlp.gate_proj.weight");
        assert_eq!(d.gate.weight.shape, [10944, 4096]);
        let FfnSpec::Moe(m) = &spec.layers[1].ffn else {
            panic!("layer 1 is MoE")
        };
        // The gate is a bare matrix mlx-lm never quantizes; its correction bias stays float32.
        assert_eq!(m.router.weight.name, "model.layers.1.mlp.gate.weight");
        assert_eq!(m.router.weight.kind, Kind::Weight(None));
        assert!(m.router.bias.is_none());
        let b = m.correction_bias.as_ref().unwrap();
        assert_eq!(b.name, "model.layers.1.mlp.gate.e_score_correction_bias");
        assert_eq!(b.kind, Kind::Float32);
        assert_eq!(
            m.experts.down.weight.name,
            "model.layers.1.mlp.switch_mlp.down_proj.weight"
        );
        assert_eq!(m.experts.down.weight.shape, [128, 4096, 1408]);
        let s = m.shared.as_ref().unwrap();
        assert_eq!(
            s.up.weight.name,
            "model.layers.1.mlp.shared_experts.up_proj.weight"
        );
        assert_eq!(s.up.weight.shape, [1408, 4096]);
        assert!(matches!(s.up.weight.kind, Kind::Weight(Some(_))));
        let a = &spec.layers[1].attn;
        assert!(a.q.bias.is_some() && a.k.bias.is_some() && a.v.bias.is_some());
        assert!(a.o.bias.is_none() && a.sinks.is_none());
        assert_eq!(a.q_norm.as_ref().unwrap().shape, [128]);
        assert!(spec.lm_head.is_some());
    }
}
