//! Command line interface: the top-level [`Cli`], its dispatch, and what several commands share (the
//! model source options, loading, progress bars, a timed decode). One file per command.

mod bench;
mod demo;
mod dist_selftest;
mod generate;
mod info;
mod launch;
mod membw;
mod presets;
mod report;
mod synth;
mod validate;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use zmlx::generate::{generate_steps, Generation, Sampler};
use zmlx::mlx_rs::Array;
use zmlx::models::{self, Model};
use zmlx::moe::{ExpertParallel, MoePath};
use zmlx::runtime::{self, DeviceKind};
use zmlx::tokenizer::Tokenizer;

/// zmlx — MoE inference on MLX with fused quantized expert kernels, checked against MLX's own ops.
///
/// Without a subcommand: builds a small synthetic Qwen3-MoE-like model, decodes with the reference (MLX
/// composed) path and the fused path, and prints tok/s, speedup and the fidelity verdict.
#[derive(Parser, Debug)]
#[command(name = "zmlx", version, about, long_about = None)]
struct Cli {
    /// Device to run on.
    #[arg(long, global = true, default_value = "cpu", value_parser = device_kind())]
    device: DeviceKind,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: demo::DemoArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate tokens from a checkpoint or synthetic model.
    Generate(generate::GenerateArgs),
    /// Fidelity check: teacher-forced oracle vs reference vs fused.
    Validate(validate::ValidateArgs),
    /// Timing, fused vs MLX composed: one MoE layer (`bench layer`) or a model's (`bench model`).
    Bench(bench::BenchArgs),
    /// MLX version, backend, devices, features.
    Info,
    /// Write a synthetic model as an mlx-lm checkpoint directory.
    Synth(synth::SynthArgs),
    /// List the synthetic presets.
    Presets,
    /// Run a zmlx command as N ranks of a distributed group (local processes, or the hosts of a host file).
    Launch(launch::LaunchArgs),
    /// Check every collective against the single-process computation (run it under `zmlx launch`).
    #[command(hide = true)]
    DistSelftest(dist_selftest::SelftestArgs),
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    runtime::use_device(cli.device)?;
    match cli.command {
        None => demo::run(&cli.demo),
        Some(Command::Generate(a)) => generate::run(a),
        Some(Command::Validate(a)) => validate::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Info) => info::run(),
        Some(Command::Synth(a)) => synth::run(a),
        Some(Command::Presets) => presets::run(),
        Some(Command::Launch(a)) => launch::run(a),
        Some(Command::DistSelftest(a)) => dist_selftest::run(a),
    }
}

/// A failure that ends zmlx with a given exit status (a launched rank's, a timeout's) instead of 1.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub msg: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Exit {}

/// `--device`: the names MLX's devices go by.
fn device_kind() -> impl TypedValueParser<Value = DeviceKind> {
    PossibleValuesParser::new(["cpu", "gpu"]).try_map(|s| s.parse::<DeviceKind>())
}

/// `--path`: the two implementations of the model.
fn moe_path() -> impl TypedValueParser<Value = MoePath> {
    PossibleValuesParser::new(["fused", "reference"]).try_map(|s| s.parse::<MoePath>())
}

/// A count that must be at least 1 (tokens, iterations, lengths).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Where a command's model comes from.
#[derive(Args, Debug, Clone)]
struct ModelSource {
    #[command(flatten)]
    which: Which,
    /// Seed of the synthetic weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// A checkpoint or a synthetic model: exactly one.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
struct Which {
    /// mlx-lm checkpoint directory (config.json + *.safetensors).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Synthetic model: a preset name (see `zmlx presets`) or a config.json file (any config).
    #[arg(long)]
    synthetic: Option<String>,
}

fn bar(len: u64, prefix: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:32}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

/// A synthetic model from a preset, with a progress bar over its tensors; with `ep`, this rank's share
/// of the experts.
fn synth_model(
    preset: &str,
    seed: u64,
    ep: Option<&ExpertParallel>,
) -> Result<(Model, zmlx::checkpoint::Tensors, serde_json::Value)> {
    let config: serde_json::Value = if preset.ends_with(".json") {
        let text = std::fs::read_to_string(preset).map_err(|e| zmlx::Error::io(preset, e))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {preset}"))?
    } else {
        models::preset(preset)?.config
    };
    let cfg = models::ModelConfig::from_json(&config)?;
    let pb = bar(models::synthetic::param_count(&cfg) as u64, "generating");
    let mut progress = |done: usize, _: usize, name: &str| {
        pb.set_position(done as u64);
        pb.set_message(name.to_string());
    };
    let (m, t) = match ep {
        None => models::synthesize(&config, seed, &mut progress),
        Some(ep) => models::synthesize_parallel(&config, seed, ep, &mut progress),
    }
    .with_context(|| format!("building synthetic model '{preset}'"))?;
    pb.finish_and_clear();
    m.eval()?;
    Ok((m, t, config))
}

struct Loaded {
    model: Model,
    tokenizer: Option<Tokenizer>,
    name: String,
}

/// The model `src` names; with `ep`, this rank's share of its experts (see
/// [`zmlx::moe::parallel`]).
fn load_source(src: &ModelSource, ep: Option<&ExpertParallel>) -> Result<Loaded> {
    match (&src.which.model, &src.which.synthetic) {
        (Some(dir), _) => {
            let pb = ProgressBar::new_spinner();
            pb.set_message(format!("loading {}", dir.display()));
            pb.enable_steady_tick(Duration::from_millis(120));
            let model = match ep {
                None => models::load(dir)?,
                Some(ep) => models::load_parallel(dir, ep)?,
            };
            model.eval()?;
            pb.finish_and_clear();
            let tokenizer = Tokenizer::from_dir(dir)?;
            Ok(Loaded {
                model,
                tokenizer,
                name: dir.display().to_string(),
            })
        }
        (None, Some(p)) => {
            let (model, _, _) = synth_model(p, src.seed, ep)?;
            Ok(Loaded {
                model,
                tokenizer: None,
                name: format!("synthetic {p} (seed {})", src.seed),
            })
        }
        // The argument group requires one of the two.
        (None, None) => bail!("give --model DIR or --synthetic PRESET"),
    }
}

/// Decodes `n` tokens on `path` with a progress bar showing tok/s; `on_step` sees each token and its
/// logits.
fn run_decode(
    model: &Model,
    prompt: &[u32],
    n: usize,
    sampler: Sampler,
    path: MoePath,
    stop: &[u32],
    on_step: &mut dyn FnMut(u32, &Array) -> zmlx::Result<()>,
) -> Result<Generation> {
    let pb = bar(n as u64, &format!("{path}"));
    let t0 = Instant::now();
    let mut count = 0u64;
    let g = generate_steps(model, prompt, n, sampler, path, stop, &mut |tok, logits| {
        count += 1;
        pb.set_position(count);
        let s = t0.elapsed().as_secs_f64();
        if s > 0.0 {
            pb.set_message(format!("{:.1} tok/s", count as f64 / s));
        }
        on_step(tok, logits)
    })?;
    pb.finish_and_clear();
    Ok(g)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// clap's own consistency checks of the argument definitions (groups, conflicts, defaults that pass
    /// their value parsers), which otherwise run only when a command line reaches them.
    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
