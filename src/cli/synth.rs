//! `zmlx synth`: write a synthetic model as an mlx-lm checkpoint directory.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use zmlx::models;

use super::synth_model;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Preset name or config.json file.
    #[arg(long)]
    preset: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: SynthArgs) -> Result<()> {
    let (_, t, cfg) = synth_model(&a.preset, a.seed, None)?;
    models::save(&a.out, &cfg, &t)?;
    println!("wrote {} tensors to {}", t.len(), a.out.display());
    Ok(())
}
