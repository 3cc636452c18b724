//! Synthetic models: random weights from a seed, quantized as mlx-lm's converter would (per the config's
//! `quantization` block), under mlx-lm's key names — for any config, including the real models' dims.

use serde_json::{json, Value};

use super::common::Naming;
use super::config::ModelConfig;
use crate::checkpoint::Tensors;
use crate::error::{Error, Result};
use crate::quant::quantize;

/// A named synthetic configuration.
#[derive(Clone, Debug)]
pub struct Preset {
    /// Name used on the command line.
    pub name: &'static str,
    /// One-line description.
    pub about: &'static str,
    /// The full `config.json` (with `quantization`).
    pub config: Value,
}

/// mlx-lm-style `quantization` block for Qwen3-MoE: affine `bits`/`group` everywhere, router at 8 bits.
pub fn qwen3_quant(layers: i32, bits: i32, group: i32) -> Value {
    let mut q = json!({"group_size": group, "bits": bits, "mode": "affine"});
    for i in 0..layers {
        // mlx-lm's qwen3_moe quant_predicate keeps the router at 8 bits.
        q[format!("model.layers.{i}.mlp.gate")] = json!({"group_size": 64, "bits": 8});
    }
    q
}

/// mlx-lm-style `quantization` block for gpt-oss: mxfp4 experts, 8-bit affine elsewhere.
pub fn gpt_oss_quant(layers: i32) -> Value {
    // As mlx-community's gpt-oss MXFP4-Q8 conversions: experts mxfp4, everything else 8-bit affine.
    let mut q = json!({"group_size": 64, "bits": 8, "mode": "affine"});
    for i in 0..layers {
        for p in ["gate_proj", "up_proj", "down_proj"] {
            q[format!("model.layers.{i}.mlp.experts.{p}")] =
                json!({"group_size": 32, "bits": 4, "mode": "mxfp4"});
        }
    }
    q
}

/// Adds a `quantization` block (and its `quantization_config` twin, as mlx-lm writes) to a config.
pub fn with_quant(mut c: Value, q: Value) -> Value {
    c["quantization"] = q.clone();
    c["quantization_config"] = q;
    c
}

/// All presets.
pub fn presets() -> Vec<Preset> {
    use super::{gpt_oss, qwen3_moe};
    vec![
        Preset {
            name: "qwen3-tiny",
            about: "Qwen3-MoE-like, 4 layers, D 512, 32 experts top-4, I 256, bf16, 4-bit affine g64",
            config: with_quant(
                qwen3_moe::config_json(512, 4, 8, 2, 64, 32, 4, 256, 4096, "bfloat16"),
                qwen3_quant(4, 4, 64),
            ),
        },
        Preset {
            name: "qwen3-mini",
            about: "Qwen3-MoE-like, 2 layers, D 256, 16 experts top-4, I 128, bf16, 4-bit affine g64",
            config: with_quant(
                qwen3_moe::config_json(256, 2, 4, 2, 64, 16, 4, 128, 2048, "bfloat16"),
                qwen3_quant(2, 4, 64),
            ),
        },
        Preset {
            name: "qwen3-tiny-q8-f16",
            about: "Qwen3-MoE-like, 4 layers, D 512, 32 experts top-4, I 256, float16, 8-bit affine g32",
            config: with_quant(
                qwen3_moe::config_json(512, 4, 8, 2, 64, 32, 4, 256, 4096, "float16"),
                qwen3_quant(4, 8, 32),
            ),
        },
        Preset {
            name: "qwen3-tiny-f32",
            about: "Qwen3-MoE-like, 4 layers, D 512, 32 experts top-4, I 256, float32, 4-bit affine g64",
            config: with_quant(
                qwen3_moe::config_json(512, 4, 8, 2, 64, 32, 4, 256, 4096, "float32"),
                qwen3_quant(4, 4, 64),
            ),
        },
        Preset {
            name: "gpt-oss-tiny",
            about: "gpt-oss-like, 4 layers, D 512, 16 experts top-4, I 512, bf16, mxfp4 experts, 8-bit rest, window 64",
            config: with_quant(
                gpt_oss::config_json(512, 4, 8, 2, 64, 16, 4, 512, 4096, 64, "bfloat16"),
                gpt_oss_quant(4),
            ),
        },
        Preset {
            name: "qwen3-30b-a3b",
            about: "Qwen3-30B-A3B dims (48 layers, D 2048, 128 experts top-8, I 768), bf16, 4-bit g64 (~17 GB)",
            config: with_quant(
                qwen3_moe::config_json(2048, 48, 32, 4, 128, 128, 8, 768, 151936, "bfloat16"),
                qwen3_quant(48, 4, 64),
            ),
        },
        Preset {
            name: "gpt-oss-20b",
            about: "gpt-oss-20b dims (24 layers, D 2880, 32 experts top-4), bf16, mxfp4 experts (~12 GB)",
            config: with_quant(
                gpt_oss::config_json(2880, 24, 64, 8, 64, 32, 4, 2880, 201088, 128, "bfloat16"),
                gpt_oss_quant(24),
            ),
        },
    ]
}

/// Looks a preset up by name.
pub fn preset(name: &str) -> Result<Preset> {
    presets()
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = presets().iter().map(|p| p.name).collect();
            Error::invalid(format!(
                "unknown synthetic preset '{name}' (available: {})",
                names.join(", ")
            ))
        })
}

enum Init {
    /// N(0, std).
    Normal(f32),
    /// 1 + N(0, std).
    OnePlus(f32),
}

struct Param {
    name: String,
    shape: Vec<i32>,
    init: Init,
    /// Module path to quantize under (weights of linear layers / experts / embedding).
    quant_path: Option<String>,
}

fn params(cfg: &ModelConfig) -> Vec<Param> {
    let n = Naming::of(cfg.arch);
    let d = cfg.hidden_size;
    let hd = cfg.head_dim;
    let mut v = Vec::new();
    let inv = |k: i32| 1.0 / (k as f32).sqrt();
    // Residual-branch outputs (o_proj, down_proj) scaled by 1/sqrt(2 L), as in GPT-2-style init.
    let res = 1.0 / (2.0 * cfg.num_layers as f32).sqrt();
    let lin = |v: &mut Vec<Param>,
               path: String,
               lead: &[i32],
               out: i32,
               inp: i32,
               std: f32,
               bias: bool| {
        let mut shape = lead.to_vec();
        shape.extend([out, inp]);
        v.push(Param {
            name: format!("{path}.weight"),
            shape,
            init: Init::Normal(std),
            quant_path: Some(path.clone()),
        });
        if bias {
            let mut bshape = lead.to_vec();
            bshape.push(out);
            v.push(Param {
                name: format!("{path}.bias"),
                shape: bshape,
                init: Init::Normal(0.1),
                quant_path: None,
            });
        }
    };
    lin(
        &mut v,
        "model.embed_tokens".into(),
        &[],
        cfg.vocab_size,
        d,
        1.0,
        false,
    );
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        let ab = n.attn_bias;
        lin(
            &mut v,
            format!("{a}.q_proj"),
            &[],
            cfg.n_heads * hd,
            d,
            inv(d),
            ab,
        );
        lin(
            &mut v,
            format!("{a}.k_proj"),
            &[],
            cfg.n_kv_heads * hd,
            d,
            inv(d),
            ab,
        );
        lin(
            &mut v,
            format!("{a}.v_proj"),
            &[],
            cfg.n_kv_heads * hd,
            d,
            inv(d),
            ab,
        );
        lin(
            &mut v,
            format!("{a}.o_proj"),
            &[],
            d,
            cfg.n_heads * hd,
            res * inv(cfg.n_heads * hd),
            ab,
        );
        if n.qk_norm {
            for nm in ["q_norm", "k_norm"] {
                v.push(Param {
                    name: format!("{a}.{nm}.weight"),
                    shape: vec![hd],
                    init: Init::OnePlus(0.1),
                    quant_path: None,
                });
            }
        }
        if n.sinks {
            v.push(Param {
                name: format!("{a}.sinks"),
                shape: vec![cfg.n_heads],
                init: Init::Normal(1.0),
                quant_path: None,
            });
        }
        for nm in ["input_layernorm", "post_attention_layernorm"] {
            v.push(Param {
                name: format!("{p}.{nm}.weight"),
                shape: vec![d],
                init: Init::OnePlus(0.1),
                quant_path: None,
            });
        }
        if cfg.sparse[i as usize] {
            let m = format!("{p}.{}", n.moe);
            let e = cfg.num_experts;
            let it = cfg.moe_intermediate;
            lin(
                &mut v,
                format!("{m}.{}", n.router),
                &[],
                e,
                d,
                2.0 * inv(d),
                n.router_bias,
            );
            let x = format!("{m}.{}", n.experts);
            let eb = n.expert_bias;
            lin(&mut v, format!("{x}.gate_proj"), &[e], it, d, inv(d), eb);
            lin(&mut v, format!("{x}.up_proj"), &[e], it, d, inv(d), eb);
            lin(
                &mut v,
                format!("{x}.down_proj"),
                &[e],
                d,
                it,
                res * inv(it),
                eb,
            );
        } else {
            let m = format!("{p}.mlp");
            let it = cfg.intermediate;
            lin(&mut v, format!("{m}.gate_proj"), &[], it, d, inv(d), false);
            lin(&mut v, format!("{m}.up_proj"), &[], it, d, inv(d), false);
            lin(
                &mut v,
                format!("{m}.down_proj"),
                &[],
                d,
                it,
                res * inv(it),
                false,
            );
        }
    }
    v.push(Param {
        name: "model.norm.weight".into(),
        shape: vec![d],
        init: Init::OnePlus(0.1),
        quant_path: None,
    });
    if !cfg.tie_word_embeddings {
        lin(
            &mut v,
            "lm_head".into(),
            &[],
            cfg.vocab_size,
            d,
            3.0 * inv(d),
            false,
        );
    }
    v
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a of the tensor name mixed with the seed: each tensor has its own stream.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Number of tensors [`synth_tensors`] generates for `cfg` (before quantization adds scales/biases).
pub fn param_count(cfg: &ModelConfig) -> usize {
    params(cfg).len()
}

/// Random weights for `cfg` from `seed`, quantized per the config, under mlx-lm's key names.
/// `progress(done, total, name)` is called after each parameter.
pub fn synth_tensors(
    cfg: &ModelConfig,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Tensors> {
    let ps = params(cfg);
    let total = ps.len();
    let mut t = Tensors::new(format!("<synthetic seed {seed}>"));
    for (i, p) in ps.into_iter().enumerate() {
        let key = mlx_rs::random::key(name_seed(seed, &p.name))?;
        let (std, one) = match p.init {
            Init::Normal(s) => (s, false),
            Init::OnePlus(s) => (s, true),
        };
        let mut a = mlx_rs::random::normal::<f32>(&p.shape[..], 0.0, std, &key)?;
        if one {
            a = mlx_rs::ops::add(&a, mlx_rs::Array::from_f32(1.0))?;
        }
        let a = a.as_dtype(cfg.dtype)?;
        let q = p.quant_path.as_deref().and_then(|qp| cfg.quant_for(qp));
        match (q, p.quant_path) {
            (Some(q), Some(path)) => {
                let qw = quantize(&a, q.mode, Some(q.group_size), Some(q.bits))?;
                qw.eval()?;
                t.insert(format!("{path}.weight"), qw.w);
                t.insert(format!("{path}.scales"), qw.scales);
                if let Some(b) = qw.biases {
                    t.insert(format!("{path}.biases"), b);
                }
            }
            _ => {
                a.eval()?;
                t.insert(p.name.clone(), a);
            }
        }
        progress(i + 1, total, &p.name);
    }
    Ok(t)
}
