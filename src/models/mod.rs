//! Models: Qwen3-MoE, gpt-oss, Mixtral and GLM-4 MoE, loaded from mlx-lm checkpoints or built
//! synthetically. Each family describes its parameters once ([`schema`], from its `Layout` and its
//! config); the loader and the synthesizer both follow that description, and the presets are numbers
//! ([`preset`](mod@preset)).

pub mod common;
pub mod config;
pub mod glm4_moe;
pub mod gpt_oss;
mod load;
pub mod mixtral;
pub mod preset;
pub mod qwen3_moe;
pub mod schema;
pub mod synthetic;

use std::collections::BTreeMap;
use std::path::Path;

/// Re-exported from [`crate::nn`], where the layers shared by models and MoE blocks live.
pub use crate::nn::Mlp;
pub use common::{Ffn, Layer, Model};
pub use config::{Arch, LayerQuant, ModelConfig, QuantConfig, RopeScaling};
pub use preset::{preset, presets, Dims, Preset, QuantRecipe};
pub use schema::ModelSpec;

use crate::checkpoint::{read_config, save_dir, Tensors};
use crate::error::{Error, Result};

/// Loads an mlx-lm checkpoint directory (`config.json` + `*.safetensors`).
pub fn load(dir: &Path) -> Result<Model> {
    if !dir.exists() {
        return Err(Error::checkpoint(dir, "does not exist"));
    }
    if !dir.is_dir() {
        return Err(Error::checkpoint(dir, "not a directory"));
    }
    let raw = read_config(dir)?;
    let cfg = ModelConfig::from_json(&raw)
        .map_err(|e| Error::checkpoint(dir.join("config.json"), e.to_string()))?;
    let mut t = Tensors::load_dir(dir)?;
    let model = Model::from_tensors(cfg, &mut t)?;
    let unused = t.unused();
    if !unused.is_empty() {
        let tied = if unused.iter().any(|n| n == "lm_head.weight")
            && model.config.tie_word_embeddings
        {
            " (tie_word_embeddings is true, so the embedding is the output layer and lm_head.weight is not used)"
        } else {
            ""
        };
        let shown: Vec<&str> = unused.iter().take(8).map(String::as_str).collect();
        return Err(Error::checkpoint(
            dir,
            format!(
                "{} tensor(s) that this {} model does not use: {}{}{tied}",
                unused.len(),
                model.config.arch.model_type(),
                shown.join(", "),
                if unused.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
        ));
    }
    // Best effort: the model works the same without huge pages.
    let _ = model.promote_huge_pages();
    Ok(model)
}

/// Builds a synthetic model for `config` (a full `config.json` value) from `seed`.
pub fn synthesize(
    config: &serde_json::Value,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<(Model, Tensors)> {
    let cfg = ModelConfig::from_json(config)?;
    let mut t = synthetic::synth_tensors(&cfg, seed, progress)?;
    let model = Model::from_tensors(cfg, &mut t)?;
    // Best effort: the model works the same without huge pages.
    let _ = model.promote_huge_pages();
    Ok((model, t))
}

/// Writes tensors + config as an mlx-lm checkpoint directory.
pub fn save(dir: &Path, config: &serde_json::Value, tensors: &Tensors) -> Result<()> {
    let map: BTreeMap<String, mlx_rs::Array> = tensors
        .sorted()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    save_dir(dir, config, &map)
}
