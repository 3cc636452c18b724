//! Model configuration (`config.json` as mlx-lm reads it) and the quantization block.

use std::collections::HashMap;

use mlx_rs::Dtype;
use serde_json::{json, Map, Value};

use super::preset::Dims;
use super::schema::{Layout, ModelSpec};
use crate::error::{Error, Result};
use crate::moe::RouterKind;
use crate::quant::QuantMode;

/// Limits on a config's sizes (the largest published MoE models are far inside them): checked before
/// anything is allocated from them, so a wrong config is an error, not an allocation failure.
pub const MAX_LAYERS: i32 = 4096;
pub const MAX_DIM: i32 = 1 << 20;
pub const MAX_HEADS: i32 = 4096;
pub const MAX_VOCAB: i32 = 1 << 24;
pub const MAX_EXPERTS: i32 = 1 << 16;

/// Where a float32 config field must lie (besides being finite).
enum F32Domain {
    Positive,
    NonNegative,
    Any,
}

/// Typed access to a JSON object with one-line errors.
pub(crate) struct Fields<'a>(pub &'a Value);

impl Fields<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    pub fn i32(&self, k: &str) -> Result<i32> {
        self.i32_opt(k)?
            .ok_or_else(|| Error::config(format!("missing field '{k}'")))
    }
    pub fn i32_opt(&self, k: &str) -> Result<Option<i32>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .and_then(|x| i32::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| Error::config(format!("field '{k}' must be an integer, got {v}"))),
        }
    }
    pub fn pos(&self, k: &str) -> Result<i32> {
        let v = self.i32(k)?;
        if v <= 0 {
            return Err(Error::config(format!(
                "field '{k}' must be positive, got {v}"
            )));
        }
        Ok(v)
    }
    pub fn f64_or(&self, k: &str, d: f64) -> Result<f64> {
        match self.get(k) {
            None => Ok(d),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| Error::config(format!("field '{k}' must be a number, got {v}"))),
        }
    }
    /// A float field the model reads as float32: finite there (1e39 would be infinity) and in
    /// `domain` (a negative epsilon or RoPE base would make NaN).
    fn f32_in(&self, k: &str, d: f64, domain: F32Domain) -> Result<f32> {
        let v = self.f64_or(k, d)?;
        let x = v as f32;
        let (ok, what) = match domain {
            F32Domain::Positive => (x > 0.0, "positive and "),
            F32Domain::NonNegative => (x >= 0.0, "non-negative and "),
            F32Domain::Any => (true, ""),
        };
        if !x.is_finite() || !ok {
            return Err(Error::config(format!(
                "field '{k}' must be {what}within float32's range (magnitude at most {:e}), got {v}",
                f32::MAX
            )));
        }
        Ok(x)
    }
    /// A positive float32 field (`rope_theta`).
    pub fn f32_pos(&self, k: &str, d: f64) -> Result<f32> {
        self.f32_in(k, d, F32Domain::Positive)
    }
    /// A non-negative float32 field (`rms_norm_eps`).
    pub fn f32_nonneg(&self, k: &str, d: f64) -> Result<f32> {
        self.f32_in(k, d, F32Domain::NonNegative)
    }
    /// A float32 field of any sign (`routed_scaling_factor`).
    pub fn f32_finite(&self, k: &str, d: f64) -> Result<f32> {
        self.f32_in(k, d, F32Domain::Any)
    }
    pub fn bool_or(&self, k: &str, d: bool) -> Result<bool> {
        match self.get(k) {
            None => Ok(d),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| Error::config(format!("field '{k}' must be true/false, got {v}"))),
        }
    }
    pub fn str_opt(&self, k: &str) -> Result<Option<&str>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Error::config(format!("field '{k}' must be a string, got {v}"))),
        }
    }
    pub fn i32_list_or_empty(&self, k: &str) -> Result<Vec<i32>> {
        match self.get(k) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_i64()
                        .and_then(|x| i32::try_from(x).ok())
                        .ok_or_else(|| Error::config(format!("field '{k}' must hold integers")))
                })
                .collect(),
            Some(v) => Err(Error::config(format!(
                "field '{k}' must be a list, got {v}"
            ))),
        }
    }
}

/// Quantization parameters of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerQuant {
    /// Mode.
    pub mode: QuantMode,
    /// Group size.
    pub group_size: i32,
    /// Bits.
    pub bits: i32,
}

/// The `quantization` block of an mlx-lm `config.json`: global parameters plus per-module overrides
/// (`"model.layers.0.mlp.gate": {"group_size": 64, "bits": 8}`, or `false` for an unquantized module).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantConfig {
    /// Global parameters.
    pub default: LayerQuant,
    /// Per-module overrides (`None` = not quantized).
    pub overrides: HashMap<String, Option<LayerQuant>>,
}

/// One layer's parameters. The global block names all three (its `mode` defaults to affine). A
/// per-module entry is what mlx-lm hands to that module's `to_quantized(**entry)`: a `mode` it leaves
/// out is affine and a `group_size` / `bits` it leaves out is that mode's default, whatever the global
/// block says (mlx-lm's gpt-oss writes `{"group_size": 64, "bits": 8}` for its routers in an mxfp4
/// conversion, and means 8-bit affine).
fn parse_layer_quant(v: &Value, global: bool, what: &str) -> Result<LayerQuant> {
    let f = Fields(v);
    let mode = match f.str_opt("mode")? {
        Some(m) => m.parse()?,
        None => QuantMode::Affine,
    };
    let (default_group, default_bits) = mode.default_group_size_bits();
    let required = |k: &str, d: i32| -> Result<i32> {
        match f.i32_opt(k)? {
            Some(x) => Ok(x),
            None if global => Err(Error::config(format!("{what}: missing '{k}'"))),
            None => Ok(d),
        }
    };
    let group_size = required("group_size", default_group)?;
    let bits = required("bits", default_bits)?;
    if group_size <= 0 || !(1..=8).contains(&bits) {
        return Err(Error::config(format!(
            "{what}: group_size {group_size} / bits {bits} out of range"
        )));
    }
    Ok(LayerQuant {
        mode,
        group_size,
        bits,
    })
}

impl QuantConfig {
    /// Parses a `quantization` object.
    pub fn parse(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::config("'quantization' must be an object"))?;
        let default = parse_layer_quant(v, true, "quantization")?;
        let mut overrides = HashMap::new();
        for (k, val) in obj {
            match val {
                Value::Object(_) => {
                    overrides.insert(
                        k.clone(),
                        Some(parse_layer_quant(val, false, &format!("quantization.{k}"))?),
                    );
                }
                Value::Bool(false) => {
                    overrides.insert(k.clone(), None);
                }
                _ => {}
            }
        }
        Ok(QuantConfig { default, overrides })
    }

    /// Parameters for the module at `path` (`None`: left unquantized).
    pub fn for_path(&self, path: &str) -> Option<LayerQuant> {
        match self.overrides.get(path) {
            Some(o) => *o,
            None => Some(self.default),
        }
    }

    /// The JSON form (as mlx-lm writes it).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("group_size".into(), json!(self.default.group_size));
        m.insert("bits".into(), json!(self.default.bits));
        m.insert("mode".into(), json!(self.default.mode.name()));
        let mut keys: Vec<&String> = self.overrides.keys().collect();
        keys.sort();
        for k in keys {
            let v = match &self.overrides[k] {
                Some(q) => {
                    json!({"group_size": q.group_size, "bits": q.bits, "mode": q.mode.name()})
                }
                None => json!(false),
            };
            m.insert(k.clone(), v);
        }
        Value::Object(m)
    }
}

/// The supported architectures. Everything that differs between them is in their files
/// (`qwen3_moe.rs`, ...), reached from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `qwen3_moe`.
    Qwen3Moe,
    /// `gpt_oss`.
    GptOss,
    /// `mixtral`.
    Mixtral,
    /// `glm4_moe`.
    Glm4Moe,
}

impl Arch {
    /// All architectures.
    pub const ALL: [Arch; 4] = [Arch::Qwen3Moe, Arch::GptOss, Arch::Mixtral, Arch::Glm4Moe];

    /// The `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Qwen3Moe => "qwen3_moe",
            Arch::GptOss => "gpt_oss",
            Arch::Mixtral => "mixtral",
            Arch::Glm4Moe => "glm4_moe",
        }
    }

    /// The family's name in prose.
    pub fn family_name(self) -> &'static str {
        match self {
            Arch::Qwen3Moe => "Qwen3-MoE",
            Arch::GptOss => "gpt-oss",
            Arch::Mixtral => "Mixtral",
            Arch::Glm4Moe => "GLM-4-MoE",
        }
    }

    /// The family's fields of a `config.json` (the rest is read by [`ModelConfig::from_json`]).
    fn parse_config(self, v: &Value) -> Result<ModelConfig> {
        match self {
            Arch::Qwen3Moe => super::qwen3_moe::parse_config(v),
            Arch::GptOss => super::gpt_oss::parse_config(v),
            Arch::Mixtral => super::mixtral::parse_config(v),
            Arch::Glm4Moe => super::glm4_moe::parse_config(v),
        }
    }

    /// mlx-lm's key layout and module options for the family (a config may switch some options: see
    /// [`ModelConfig::layout`]).
    pub fn layout(self) -> &'static Layout {
        match self {
            Arch::Qwen3Moe => &super::qwen3_moe::LAYOUT,
            Arch::GptOss => &super::gpt_oss::LAYOUT,
            Arch::Mixtral => &super::mixtral::LAYOUT,
            Arch::Glm4Moe => &super::glm4_moe::LAYOUT,
        }
    }

    /// The parameters of a model of this family.
    fn describe(self, cfg: &ModelConfig) -> ModelSpec {
        match self {
            Arch::Qwen3Moe => super::qwen3_moe::describe(cfg),
            Arch::GptOss => super::gpt_oss::describe(cfg),
            Arch::Mixtral => super::mixtral::describe(cfg),
            Arch::Glm4Moe => super::glm4_moe::describe(cfg),
        }
    }

    /// An mlx-lm style `config.json` (without `quantization`) for a model of this family of sizes `d`.
    pub fn config_for(self, d: &Dims, dtype: &str) -> Value {
        match self {
            Arch::Qwen3Moe => super::qwen3_moe::config_for(d, dtype),
            Arch::GptOss => super::gpt_oss::config_for(d, dtype),
            Arch::Mixtral => super::mixtral::config_for(d, dtype),
            Arch::Glm4Moe => super::glm4_moe::config_for(d, dtype),
        }
    }
}

/// Rotary embedding scaling.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE with a position scale (1.0 = none; `linear` uses 1/factor).
    Plain {
        /// Position scale.
        scale: f32,
    },
    /// YaRN.
    Yarn {
        /// `factor`.
        factor: f64,
        /// `original_max_position_embeddings`.
        original_max: f64,
        /// `beta_fast`.
        beta_fast: f64,
        /// `beta_slow`.
        beta_slow: f64,
        /// `mscale`.
        mscale: f64,
        /// `mscale_all_dim`.
        mscale_all_dim: f64,
    },
}

impl RopeScaling {
    /// Parses a `rope_scaling` object (absent = plain).
    pub fn parse(v: Option<&Value>) -> Result<Self> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(RopeScaling::Plain { scale: 1.0 });
        };
        let f = Fields(v);
        let ty = f
            .str_opt("type")?
            .or(f.str_opt("rope_type")?)
            .unwrap_or("default");
        match ty {
            "default" => Ok(RopeScaling::Plain { scale: 1.0 }),
            "linear" => {
                let factor = f.f64_or("factor", 0.0)?;
                // The position scale 1 / factor is a float32: positive and finite.
                let scale = (1.0 / factor) as f32;
                if factor <= 0.0 || !scale.is_finite() || scale <= 0.0 {
                    return Err(Error::config(format!(
                        "rope_scaling.factor must be positive, with 1 / factor a positive float32, got {factor}"
                    )));
                }
                Ok(RopeScaling::Plain { scale })
            }
            "yarn" => {
                let factor = f.f64_or("factor", 0.0)?;
                if factor <= 0.0 {
                    return Err(Error::config("rope_scaling.factor must be positive"));
                }
                Ok(RopeScaling::Yarn {
                    factor,
                    original_max: f.f64_or("original_max_position_embeddings", 4096.0)?,
                    beta_fast: f.f64_or("beta_fast", 32.0)?,
                    beta_slow: f.f64_or("beta_slow", 1.0)?,
                    mscale: f.f64_or("mscale", 1.0)?,
                    mscale_all_dim: f.f64_or("mscale_all_dim", 0.0)?,
                })
            }
            other => Err(Error::config(format!(
                "unsupported rope_scaling type '{other}'"
            ))),
        }
    }
}

/// Everything the model code needs from `config.json`, for all architectures.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Model width D.
    pub hidden_size: i32,
    /// Layers.
    pub num_layers: i32,
    /// Query heads.
    pub n_heads: i32,
    /// KV heads.
    pub n_kv_heads: i32,
    /// Head dimension.
    pub head_dim: i32,
    /// Dimensions of each head that RoPE rotates (`head_dim`, fewer with glm4_moe's
    /// `partial_rotary_factor`).
    pub rope_dims: i32,
    /// Vocabulary size.
    pub vocab_size: i32,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Output projection tied to the embedding.
    pub tie_word_embeddings: bool,
    /// Routed experts.
    pub num_experts: i32,
    /// Experts per token.
    pub top_k: i32,
    /// Expert hidden size.
    pub moe_intermediate: i32,
    /// Dense MLP hidden size (non-MoE layers).
    pub intermediate: i32,
    /// Renormalise top-k router scores.
    pub norm_topk_prob: bool,
    /// How the routers choose and weigh experts.
    pub routing: RouterKind,
    /// Hidden size of each MoE block's always-on shared experts (`None`: there are none).
    pub shared_intermediate: Option<i32>,
    /// The family's module layout as this config sets it ([`Arch::layout`], with glm4_moe's
    /// `attention_bias` and `use_qk_norm` applied).
    pub layout: Layout,
    /// Per layer: MoE (true) or dense MLP.
    pub sparse: Vec<bool>,
    /// Per layer: sliding-window attention.
    pub sliding: Vec<bool>,
    /// Sliding window size.
    pub sliding_window: Option<i32>,
    /// Float dtype of the weights (`torch_dtype`).
    pub dtype: Dtype,
    /// Quantization block.
    pub quant: Option<QuantConfig>,
    /// The original JSON.
    pub raw: Value,
}

impl ModelConfig {
    /// Parses a `config.json` value for any supported `model_type`.
    pub fn from_json(v: &Value) -> Result<Self> {
        if !v.is_object() {
            return Err(Error::config("config.json must be a JSON object"));
        }
        let f = Fields(v);
        let mt = f
            .str_opt("model_type")?
            .ok_or_else(|| Error::config("missing field 'model_type'"))?;
        // Before the per-layer lists are built from it.
        if let Some(n) = f.i32_opt("num_hidden_layers")? {
            if n > MAX_LAYERS {
                return Err(Error::config(format!(
                    "field 'num_hidden_layers' is {n}, more than the {MAX_LAYERS} supported"
                )));
            }
        }
        let arch = Arch::ALL
            .into_iter()
            .find(|a| a.model_type() == mt)
            .ok_or_else(|| {
                let names: Vec<&str> = Arch::ALL.iter().map(|a| a.model_type()).collect();
                Error::config(format!(
                    "unsupported model_type '{mt}' (supported: {})",
                    names.join(", ")
                ))
            })?;
        let mut c = arch.parse_config(v)?;
        c.dtype = match f.str_opt("torch_dtype")?.or(f.str_opt("dtype")?) {
            Some(d) => crate::array::parse_dtype(d).map_err(|e| Error::config(e.to_string()))?,
            None => Dtype::Bfloat16,
        };
        let q = v
            .get("quantization")
            .or_else(|| v.get("quantization_config"));
        c.quant = match q {
            Some(q) if !q.is_null() => Some(QuantConfig::parse(q)?),
            _ => None,
        };
        c.raw = v.clone();
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        let n = self.num_layers as usize;
        if self.sparse.len() != n || self.sliding.len() != n {
            return Err(Error::config(
                "per-layer lists do not match num_hidden_layers",
            ));
        }
        for (field, v, max) in [
            ("hidden_size", self.hidden_size, MAX_DIM),
            ("num_attention_heads", self.n_heads, MAX_HEADS),
            ("num_key_value_heads", self.n_kv_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_DIM),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("num_experts", self.num_experts, MAX_EXPERTS),
            ("moe_intermediate_size", self.moe_intermediate, MAX_DIM),
        ] {
            if v < 1 || v > max {
                return Err(Error::config(format!(
                    "field '{field}' must be in 1..={max}, got {v}"
                )));
            }
        }
        if self.sparse.iter().any(|&s| !s) && !(1..=MAX_DIM).contains(&self.intermediate) {
            return Err(Error::config(format!(
                "field 'intermediate_size' must be in 1..={MAX_DIM} for the dense MLP layers, got {}",
                self.intermediate
            )));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(Error::config(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.n_heads, self.n_kv_heads
            )));
        }
        if self.top_k < 1 || self.top_k > self.num_experts {
            return Err(Error::config(format!(
                "num_experts_per_tok {} out of range for {} experts",
                self.top_k, self.num_experts
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(Error::config("head_dim must be even"));
        }
        if self.rope_dims < 2 || self.rope_dims > self.head_dim || self.rope_dims % 2 != 0 {
            return Err(Error::config(format!(
                "RoPE would rotate {} of {} head dimensions (an even number from 2 to head_dim is needed)",
                self.rope_dims, self.head_dim
            )));
        }
        if let Some(s) = self.shared_intermediate {
            if !(1..=MAX_DIM).contains(&s) {
                return Err(Error::config(format!(
                    "the shared experts' hidden size must be in 1..={MAX_DIM}, got {s}"
                )));
            }
        }
        if self.sliding.iter().any(|&s| s) && self.sliding_window.is_none_or(|w| w < 1) {
            return Err(Error::config(
                "sliding attention layers need a positive sliding_window",
            ));
        }
        self.max_position_embeddings()?;
        self.eos_token_ids()?;
        Ok(())
    }

    /// `max_position_embeddings`, if the config gives one (a positive integer).
    pub fn max_position_embeddings(&self) -> Result<Option<u64>> {
        match self.raw.get("max_position_embeddings") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(Error::config(format!(
                    "field 'max_position_embeddings' must be a positive integer, got {v}"
                ))),
            },
        }
    }

    /// The end-of-sequence token ids, `eos_token_id` (a number or a list; none when absent). Ids past
    /// the vocabulary are kept: the model never produces them, as in mlx-lm.
    pub fn eos_token_ids(&self) -> Result<Vec<u32>> {
        let id = |v: &Value| {
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| {
                    Error::config(format!(
                        "field 'eos_token_id' must hold token ids (integers in 0..={}), got {v}",
                        u32::MAX
                    ))
                })
        };
        match self.raw.get("eos_token_id") {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(a)) => a.iter().map(id).collect(),
            Some(v) => Ok(vec![id(v)?]),
        }
    }

    /// The model's parameters, as its family describes them.
    pub fn schema(&self) -> ModelSpec {
        self.arch.describe(self)
    }

    /// Quantization of the module at `path` per the config (`None`: unquantized or no quantization).
    pub fn quant_for(&self, path: &str) -> Option<LayerQuant> {
        self.quant.as_ref().and_then(|q| q.for_path(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_entry_means_what_mlx_lm_passes_to_to_quantized() {
        // mlx-lm's gpt-oss conversion to mxfp4: its quant_predicate keeps the routers at
        // {"group_size": 64, "bits": 8}, which `to_quantized` takes as affine.
        let q = QuantConfig::parse(&json!({
            "group_size": 32, "bits": 4, "mode": "mxfp4",
            "model.layers.0.mlp.router": {"group_size": 64, "bits": 8},
            "model.layers.0.mlp.experts.up_proj": {"mode": "mxfp8"},
            "model.layers.0.mlp.experts.gate_proj": {"bits": 8},
            "model.embed_tokens": false,
        }))
        .unwrap();
        let lq = |mode, group_size, bits| {
            Some(LayerQuant {
                mode,
                group_size,
                bits,
            })
        };
        assert_eq!(
            q.for_path("model.layers.1.mlp.router"),
            lq(QuantMode::Mxfp4, 32, 4)
        );
        assert_eq!(
            q.for_path("model.layers.0.mlp.router"),
            lq(QuantMode::Affine, 64, 8)
        );
        // Left out: the mode's defaults, not the global block's.
        let up = q.for_path("model.layers.0.mlp.experts.up_proj");
        assert_eq!(up, lq(QuantMode::Mxfp8, 32, 8));
        let gate = q.for_path("model.layers.0.mlp.experts.gate_proj");
        assert_eq!(gate, lq(QuantMode::Affine, 64, 8));
        assert_eq!(q.for_path("model.embed_tokens"), None);
        // The global block must name its sizes.
        let e = QuantConfig::parse(&json!({"bits": 4}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing 'group_size'"), "{e}");
        // Written back and read again, every entry means the same.
        assert_eq!(QuantConfig::parse(&q.to_json()).unwrap(), q);
    }
}
