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

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Re-exported from [`crate::nn`], where the layers shared by models and MoE blocks live.
pub use crate::nn::Mlp;
pub use common::{Ffn, Layer, Model};
pub use config::{Arch, LayerQuant, ModelConfig, QuantConfig, RopeScaling};
pub use preset::{preset, presets, Dims, Preset, QuantRecipe};
pub use schema::ModelSpec;

use crate::checkpoint::{read_config, save_dir, Tensors};
use crate::error::{Error, Result};
use crate::moe::{ExpertParallel, ExpertRange};

/// Loads an mlx-lm checkpoint directory (`config.json` + `*.safetensors`).
pub fn load(dir: &Path) -> Result<Model> {
    load_with(dir, None)
}

/// Loads this rank's part of an mlx-lm checkpoint directory under expert parallelism (see
/// [`crate::moe::parallel`]): the replicated part whole, and of each routed expert stack only this rank's
/// experts, read from the files as byte ranges (the other experts' bytes are never read). Checks that the
/// group can share out the config's experts before reading any weight.
pub fn load_parallel(dir: &Path, ep: &ExpertParallel) -> Result<Model> {
    load_with(dir, Some(ep))
}

fn load_with(dir: &Path, ep: Option<&ExpertParallel>) -> Result<Model> {
    if !dir.exists() {
        return Err(Error::checkpoint(dir, "does not exist"));
    }
    if !dir.is_dir() {
        return Err(Error::checkpoint(dir, "not a directory"));
    }
    let raw = read_config(dir)?;
    let cfg = ModelConfig::from_json(&raw)
        .map_err(|e| Error::checkpoint(dir.join("config.json"), e.to_string()))?;
    let spec = cfg.schema();
    let (model, t) = match ep {
        None => {
            let mut t = Tensors::load_dir(dir)?;
            (Model::from_spec(cfg, &spec, &mut t)?, t)
        }
        Some(ep) => {
            let range = expert_range(&cfg, ep)?;
            let modules: HashSet<&str> = spec.expert_modules().into_iter().collect();
            let select = |name: &str, shape: &[usize]| -> Result<Option<(usize, usize)>> {
                let Some((module, _)) = name.rsplit_once('.') else {
                    return Ok(None);
                };
                if !modules.contains(module) {
                    return Ok(None);
                }
                if shape.first() != Some(&(range.total as usize)) {
                    return Err(Error::checkpoint(
                        dir,
                        format!(
                            "tensor '{name}' has shape {shape:?}, but an expert stack leads with the config's {} experts",
                            range.total
                        ),
                    ));
                }
                let first = range.first as usize;
                Ok(Some((first, first + range.count as usize)))
            };
            let mut t = Tensors::load_dir_rows(dir, &select)?;
            let local = spec.with_expert_count(range.count);
            let mut model = Model::from_spec(cfg, &local, &mut t)?;
            model.share_experts(range, ep);
            (model, t)
        }
    };
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

/// This rank's share of the config's experts, or why the group cannot share them out.
fn expert_range(cfg: &ModelConfig, ep: &ExpertParallel) -> Result<ExpertRange> {
    if !cfg.sparse.iter().any(|&s| s) {
        return Err(Error::config(format!(
            "expert parallelism over {} ranks: this {} model has no MoE layer",
            ep.size(),
            cfg.arch.model_type()
        )));
    }
    ep.range(cfg.num_experts)
}

/// Builds a synthetic model for `config` (a full `config.json` value) from `seed`.
pub fn synthesize(
    config: &serde_json::Value,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<(Model, Tensors)> {
    synthesize_with(config, seed, None, progress)
}

/// [`synthesize`] for one rank under expert parallelism: the same weights as one process would have, of
/// the routed experts only this rank's (each expert stack is drawn whole, then cut to this rank's
/// experts before quantization, so the peak holds one whole stack in float32 at a time). The returned
/// tensors are this rank's.
pub fn synthesize_parallel(
    config: &serde_json::Value,
    seed: u64,
    ep: &ExpertParallel,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<(Model, Tensors)> {
    synthesize_with(config, seed, Some(ep), progress)
}

fn synthesize_with(
    config: &serde_json::Value,
    seed: u64,
    ep: Option<&ExpertParallel>,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<(Model, Tensors)> {
    let cfg = ModelConfig::from_json(config)?;
    let spec = cfg.schema();
    let model = match ep {
        None => {
            let mut t = synthetic::synth_tensors_of(&cfg, &spec, seed, None, progress)?;
            let m = Model::from_spec(cfg, &spec, &mut t)?;
            (m, t)
        }
        Some(ep) => {
            let range = expert_range(&cfg, ep)?;
            let mut t = synthetic::synth_tensors_of(&cfg, &spec, seed, Some(range), progress)?;
            let mut m = Model::from_spec(cfg, &spec.with_expert_count(range.count), &mut t)?;
            m.share_experts(range, ep);
            (m, t)
        }
    };
    // Best effort: the model works the same without huge pages.
    let _ = model.0.promote_huge_pages();
    Ok(model)
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
