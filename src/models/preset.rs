//! Synthetic presets as numbers: a family, sizes, a float dtype and a quantization recipe, from which each
//! preset's `config.json` and one-line description are derived.

use mlx_rs::Dtype;
use serde_json::{json, Map, Value};

use super::config::{Arch, LayerQuant, ModelConfig};
use super::schema::{Layout, MLP_PROJECTIONS};
use super::{gpt_oss, qwen3_moe};
use crate::error::{Error, Result};
use crate::quant::QuantMode;

/// The sizes of a decoder-only MoE model, from which a family writes its `config.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Model width D.
    pub hidden: i32,
    /// Layers.
    pub layers: i32,
    /// Query heads.
    pub heads: i32,
    /// KV heads.
    pub kv_heads: i32,
    /// Head dimension.
    pub head_dim: i32,
    /// Routed experts.
    pub experts: i32,
    /// Experts per token.
    pub top_k: i32,
    /// Expert hidden size.
    pub expert_dim: i32,
    /// Vocabulary size.
    pub vocab: i32,
    /// Sliding-window size, for families with sliding-window layers (`None`: the family's default).
    pub window: Option<i32>,
}

/// How a model's weights are quantized: one default, optional overrides for the routers and the experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantRecipe {
    /// Every weight not overridden.
    pub default: LayerQuant,
    /// The routers.
    pub router: Option<LayerQuant>,
    /// The experts.
    pub experts: Option<LayerQuant>,
}

const fn affine(bits: i32, group_size: i32) -> LayerQuant {
    LayerQuant {
        mode: QuantMode::Affine,
        group_size,
        bits,
    }
}

impl QuantRecipe {
    /// `bits`-bit affine with groups of `group`, the routers at 8 bits as mlx-lm's Qwen3-MoE
    /// `quant_predicate` keeps them.
    pub const fn qwen3(bits: i32, group: i32) -> Self {
        QuantRecipe {
            default: affine(bits, group),
            router: Some(affine(8, 64)),
            experts: None,
        }
    }

    /// 4-bit affine with groups of 64 everywhere mlx-lm quantizes (its default conversion).
    pub const AFFINE_4: Self = QuantRecipe {
        default: affine(4, 64),
        router: None,
        experts: None,
    };

    /// mxfp4 experts, 8-bit affine elsewhere, as mlx-community's gpt-oss MXFP4-Q8 conversions.
    pub const MXFP4_Q8: Self = QuantRecipe {
        default: affine(8, 64),
        router: None,
        experts: Some(LayerQuant {
            mode: QuantMode::Mxfp4,
            group_size: 32,
            bits: 4,
        }),
    };

    /// The mlx-lm `quantization` block for `layers` MoE layers laid out as `layout` (an override names
    /// its mode unless it is affine, which is what mlx-lm takes for an override without one).
    pub fn block(&self, layers: i32, layout: &Layout) -> Value {
        let d = self.default;
        let entry = |q: LayerQuant| {
            let mut m = Map::new();
            m.insert("group_size".into(), json!(q.group_size));
            m.insert("bits".into(), json!(q.bits));
            if q.mode != QuantMode::Affine {
                m.insert("mode".into(), json!(q.mode.name()));
            }
            Value::Object(m)
        };
        let mut b = json!({"group_size": d.group_size, "bits": d.bits, "mode": d.mode.name()});
        for i in 0..layers {
            if let Some(q) = self.router {
                b[layout.router_path(i)] = entry(q);
            }
            if let Some(q) = self.experts {
                for p in MLP_PROJECTIONS {
                    b[format!("{}.{p}", layout.experts_path(i))] = entry(q);
                }
            }
        }
        b
    }

    fn describe(&self) -> String {
        let one = |q: LayerQuant| format!("{}-bit {} g{}", q.bits, q.mode, q.group_size);
        let mut s = one(self.default);
        for (what, q) in [("router", self.router), ("experts", self.experts)] {
            if let Some(q) = q {
                s += &format!(", {what} {}", one(q));
            }
        }
        s
    }
}

/// mlx-lm-style `quantization` block for Qwen3-MoE: [`QuantRecipe::qwen3`].
pub fn qwen3_quant(layers: i32, bits: i32, group: i32) -> Value {
    QuantRecipe::qwen3(bits, group).block(layers, &qwen3_moe::LAYOUT)
}

/// mlx-lm-style `quantization` block for gpt-oss: [`QuantRecipe::MXFP4_Q8`].
pub fn gpt_oss_quant(layers: i32) -> Value {
    QuantRecipe::MXFP4_Q8.block(layers, &gpt_oss::LAYOUT)
}

/// Adds a `quantization` block (and its `quantization_config` twin, as mlx-lm writes) to a config.
pub fn with_quant(mut c: Value, q: Value) -> Value {
    c["quantization"] = q.clone();
    c["quantization_config"] = q;
    c
}

/// A named synthetic configuration.
#[derive(Clone, Debug)]
pub struct Preset {
    /// Name used on the command line.
    pub name: &'static str,
    /// One-line description.
    pub about: String,
    /// The full `config.json` (with `quantization`).
    pub config: Value,
}

/// A preset's numbers.
struct Def {
    name: &'static str,
    /// The published model whose sizes these are (`None`: a small model of the family's kind).
    model: Option<&'static str>,
    arch: Arch,
    dims: Dims,
    dtype: Dtype,
    quant: QuantRecipe,
    /// Integer fields of the published model's config that its family's `config_for` does not derive
    /// from `dims`.
    fields: &'static [(&'static str, i64)],
}

/// A small Qwen3-MoE.
const QWEN3_TINY: Dims = Dims {
    hidden: 512,
    layers: 4,
    heads: 8,
    kv_heads: 2,
    head_dim: 64,
    experts: 32,
    top_k: 4,
    expert_dim: 256,
    vocab: 4096,
    window: None,
};

const DEFS: [Def; 9] = [
    Def {
        name: "qwen3-tiny",
        model: None,
        arch: Arch::Qwen3Moe,
        dims: QWEN3_TINY,
        dtype: Dtype::Bfloat16,
        quant: QuantRecipe::qwen3(4, 64),
        fields: &[],
    },
    Def {
        name: "qwen3-mini",
        model: None,
        arch: Arch::Qwen3Moe,
        dims: Dims {
            hidden: 256,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            experts: 16,
            top_k: 4,
            expert_dim: 128,
            vocab: 2048,
            window: None,
        },
        dtype: Dtype::Bfloat16,
        quant: QuantRecipe::qwen3(4, 64),
        fields: &[],
    },
    Def {
        name: "qwen3-tiny-q8-f16",
        model: None,
        arch: Arch::Qwen3Moe,
        dims: QWEN3_TINY,
        dtype: Dtype::Float16,
        quant: QuantRecipe::qwen3(8, 32),
        fields: &[],
    },
    Def {
        name: "qwen3-tiny-f32",
        model: None,
        arch: Arch::Qwen3Moe,
        dims: QWEN3_TINY,
        dtype: Dtype::Float32,
        quant: QuantRecipe::qwen3(4, 64),
        fields: &[],
    },
    Def {
        name: "gpt-oss-tiny",
        model: None,
        arch: Arch::GptOss,
        dims: Dims {
            hidden: 512,
            layers: 4,
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
            experts: 16,
            top_k: 4,
            expert_dim: 512,
            vocab: 4096,
            window: Some(64),
        },
        dtype: Dtype::Bfloat16,
        quant: QuantRecipe::MXFP4_Q8,
        fields: &[],
    },
    Def {
        name: "qwen3-30b-a3b",
        model: Some("Qwen3-30B-A3B"),
        arch: Arch::Qwen3Moe,
        dims: Dims {
            hidden: 2048,
            layers: 48,
            heads: 32,
            kv_heads: 4,
            head_dim: 128,
            experts: 128,
            top_k: 8,
            expert_dim: 768,
            vocab: 151936,
            window: None,
        },
        dtype: Dtype::Bfloat16,
        quant: QuantRecipe::qwen3(4, 64),
        fields: &[],
    },
    Def {
        name: "gpt-oss-20b",
        model: Some("gpt-oss-20b"),
        arch: Arch::GptOss,
        dims: Dims {
            hidden: 2880,
            layers: 24,
            heads: 64,
            kv_heads: 8,
            head_dim: 64,
            experts: 32,
            top_k: 4,
            expert_dim: 2880,
            vocab: 201088,
            window: Some(128),
        },
        dtype: Dtype::Bfloat16,
        quant: QuantRecipe::MXFP4_Q8,
        fields: &[],
    },
    Def {
        name: "glm4-tiny",
        model: None,
        arch: Arch::Glm4Moe,
        dims: Dims {
            hidden: 512,
            layers: 4,
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
            experts: 32,
            top_k: 4,
            expert_dim: 256,
            vocab: 4096,
            window: None,
        },
        dtype: Dtype::Bfloat16,
        quant: QuantRecipe::AFFINE_4,
        fields: &[],
    },
    Def {
        name: "glm-4.5-air",
        model: Some("GLM-4.5-Air"),
        arch: Arch::Glm4Moe,
        dims: Dims {
            hidden: 4096,
            layers: 46,
            heads: 96,
            kv_heads: 8,
            head_dim: 128,
            experts: 128,
            top_k: 8,
            expert_dim: 1408,
            vocab: 151552,
            window: None,
        },
        dtype: Dtype::Bfloat16,
        quant: QuantRecipe::AFFINE_4,
        fields: &[("intermediate_size", 10944)],
    },
];

impl Def {
    fn preset(&self) -> Preset {
        let dtype = crate::array::dtype_name(self.dtype);
        let mut config = with_quant(
            self.arch.config_for(&self.dims, dtype),
            self.quant.block(self.dims.layers, self.arch.layout()),
        );
        for (k, v) in self.fields {
            config[*k] = json!(v);
        }
        let d = &self.dims;
        let mut about = match self.model {
            Some(m) => format!("{m} dims: "),
            None => format!("{}-like: ", self.arch.family_name()),
        };
        about += &format!(
            "{} layers, D {}, {} experts top-{}, I {}",
            d.layers, d.hidden, d.experts, d.top_k, d.expert_dim
        );
        if let Some(w) = d.window {
            about += &format!(", window {w}");
        }
        about += &format!(", {dtype}, {}", self.quant.describe());
        // Derived from the description itself, so it cannot disagree with what `synth` writes; a preset
        // that does not parse is caught by the tests, and its line just goes without a size.
        if let Ok(c) = ModelConfig::from_json(&config) {
            about += &format!(" ({})", approx_size(c.schema().nbytes(c.dtype)));
        }
        Preset {
            name: self.name,
            about,
            config,
        }
    }
}

fn approx_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("~{:.0} GB", b / 1e9)
    } else {
        format!("~{:.0} MB", b / 1e6)
    }
}

/// All presets.
pub fn presets() -> Vec<Preset> {
    DEFS.iter().map(Def::preset).collect()
}

/// Looks a preset up by name.
pub fn preset(name: &str) -> Result<Preset> {
    match DEFS.iter().find(|d| d.name == name) {
        Some(d) => Ok(d.preset()),
        None => {
            let names: Vec<&str> = DEFS.iter().map(|d| d.name).collect();
            Err(Error::invalid(format!(
                "unknown synthetic preset '{name}' (available: {})",
                names.join(", ")
            )))
        }
    }
}
