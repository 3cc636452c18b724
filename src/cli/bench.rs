//! `zmlx bench`: fused vs MLX composed MoE layers. `bench layer`: one MoE layer at real model dimensions,
//! with the machine's bandwidth measured in the same run ([`layer`]); `bench model`: every MoE layer of a
//! model ([`model`]); `bench norm`: the fused add_rms_norm against MLX's add + rms_norm ([`norm`]).

pub mod layer;
pub mod model;
pub mod norm;

use anyhow::Result;
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};

use zmlx::runtime::{self, DeviceKind};

use super::membw::ReadProbe;
use super::{at_least_one, bar, load_source, report, ModelSource};
use layer::{BandwidthProbe, BenchLayer, GpuCopyProbe};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// One MoE layer at real model dimensions, with the machine's bandwidth measured alongside.
    ///
    /// The layers of Qwen3-30B-A3B, Mixtral-8x7B and gpt-oss-20b: MLX's composed path vs the fused path
    /// on cold weights (several copies, so no call finds its experts in cache), one layer per evaluation
    /// and chained as in decoding.
    Layer(LayerArgs),
    /// Every MoE layer of a model (--model or --synthetic): router + experts + combine on each path.
    Model(ModelArgs),
    /// add_rms_norm (residual add + RMS norm, one pass) vs MLX's add then fast::rms_norm.
    Norm(NormArgs),
    /// The backward pass through one MoE layer: forward and forward + vjp (w.r.t. x and the scores),
    /// fused path (its derivative is the composed path's) vs MLX's composed path.
    Grad(GradArgs),
}

#[derive(Args, Debug)]
struct GradArgs {
    /// The layer: one of the benchmark's layers.
    #[arg(long, default_value = "qwen3", value_parser = layer_choice())]
    layer: String,
    /// Tokens per call, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = at_least_one, default_value = "1,16,64")]
    tokens: Vec<usize>,
    /// Seconds of timed calls per token count.
    #[arg(long, default_value_t = 2.0, value_parser = positive_secs)]
    budget: f64,
    /// The most calls per path and token count.
    #[arg(long, default_value_t = 200, value_parser = at_least_one)]
    iters: usize,
    /// Seed of the weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
struct NormArgs {
    /// Rows (tokens) per call, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = at_least_one, default_value = "1,16,128,1024,4096")]
    tokens: Vec<usize>,
    /// Row length D (the model's hidden size; Qwen3-30B-A3B: 2048).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(i32).range(1..))]
    dim: i32,
    /// Activation dtypes, comma-separated (the fused model path runs float32 activations).
    #[arg(long, value_delimiter = ',', default_value = "bfloat16,float32", value_parser = ["bfloat16", "float16", "float32"])]
    dtype: Vec<String>,
    /// Seconds of timed calls per row and mode.
    #[arg(long, default_value_t = 1.0, value_parser = positive_secs)]
    budget: f64,
    /// The most calls per path, row and mode.
    #[arg(long, default_value_t = 2000, value_parser = at_least_one)]
    iters: usize,
    /// Seed of the inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
struct LayerArgs {
    /// The layer: `all` or one of the benchmark's layers.
    #[arg(long, default_value = "all", value_parser = layer_choice())]
    layer: String,
    /// Tokens per call, comma-separated (default: each layer's own list).
    #[arg(long, value_delimiter = ',', value_parser = at_least_one)]
    tokens: Vec<usize>,
    /// The most calls per path and token count within the budget (at T=1 a median over a few dozen
    /// calls is unsteady on a shared machine).
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    iters: usize,
    /// Seconds of timed calls per path and token count (at least one call each).
    #[arg(long, default_value_t = 2.0, value_parser = positive_secs)]
    budget: f64,
    /// Seed of the weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
struct ModelArgs {
    #[command(flatten)]
    src: ModelSource,
    /// Tokens per call.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    tokens: usize,
    /// Timed iterations per layer and path.
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    iters: usize,
}

/// `--layer`: the names of [`layer::layer_specs`], or `all`.
fn layer_choice() -> PossibleValuesParser {
    PossibleValuesParser::new(
        layer::layer_specs()
            .into_iter()
            .map(|s| s.name)
            .chain(["all"]),
    )
}

/// `--budget`: seconds, a positive number.
fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(b) if b > 0.0 => Ok(b),
        Ok(_) => Err("must be positive".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.command {
        BenchCommand::Layer(a) => run_layer(&a),
        BenchCommand::Model(a) => run_model(&a),
        BenchCommand::Norm(a) => run_norm(&a),
        BenchCommand::Grad(a) => run_grad(&a),
    }
}

fn run_grad(a: &GradArgs) -> Result<()> {
    report::header()?;
    for spec in layer::layer_specs()
        .into_iter()
        .filter(|s| a.layer == "all" || a.layer == s.name)
    {
        println!("== {}: {}", spec.name, spec.about);
        // Two copies (weights alternate between calls), no minimum size: the backward is compute-bound.
        let layer = BenchLayer::build(&spec, a.seed, 2, 0.0, |_, _| {})?;
        println!(
            "  {:>5} | {:>12} {:>14} {:>9} | {:>12} {:>14} {:>9} | {:>13}",
            "T",
            "fused fwd ms",
            "fused fwd+vjp",
            "vjp/fwd",
            "MLX fwd ms",
            "MLX fwd+vjp",
            "vjp/fwd",
            "fused vs MLX"
        );
        for &t in &a.tokens {
            let [[ff, fg], [mf, mg]] = layer.time_grad(t, a.seed ^ t as u64, a.budget, a.iters)?;
            println!(
                "  {:>5} | {:>12.3} {:>14.3} {:>8.2}x | {:>12.3} {:>14.3} {:>8.2}x | {:>12.2}x",
                t,
                ff * 1e3,
                fg * 1e3,
                fg / ff,
                mf * 1e3,
                mg * 1e3,
                mg / mf,
                mg / fg
            );
        }
    }
    println!("  (fwd+vjp: one evaluation of the layer and its vector-Jacobian product w.r.t. x and the scores; the fused path's vjp is the composed path's, so its backward costs MLX's)");
    Ok(())
}

/// Names the GPU and its fused-kernel coverage, and makes the copy-bandwidth probe (1 GiB) that GPU
/// benchmarks compare with.
fn gpu_copy_probe() -> Result<GpuCopyProbe> {
    let name = runtime::gpu_name()?.unwrap_or_else(|| "unnamed GPU".to_string());
    println!("GPU: {name}; fused ops: {}", zmlx::fused::gpu_coverage()?);
    Ok(GpuCopyProbe::new(1 << 30)?)
}

fn run_norm(a: &NormArgs) -> Result<()> {
    report::header()?;
    // On a GPU the card's copy bandwidth, measured before each row. On a CPU the inputs of a norm are
    // the residual stream, hot in cache in a forward pass: GB/s there are not compared with the
    // memory's bandwidth.
    let probe = if runtime::default_device()? == DeviceKind::Gpu {
        Some(gpu_copy_probe()?)
    } else {
        None
    };
    report::norm_header(norm::CHAIN, probe.is_some());
    for (i, dt) in a.dtype.iter().enumerate() {
        let dtype = match dt.as_str() {
            "float32" => zmlx::mlx_rs::Dtype::Float32,
            "float16" => zmlx::mlx_rs::Dtype::Float16,
            _ => zmlx::mlx_rs::Dtype::Bfloat16,
        };
        for (j, &t) in a.tokens.iter().enumerate() {
            let seed = a.seed.wrapping_add((i * 1000 + j) as u64);
            let bw = match &probe {
                Some(p) => Some(p.gb_per_sec(3)?),
                None => None,
            };
            report::norm_row(&norm::time(t, a.dim, dtype, a.budget, a.iters, seed)?, bw);
        }
    }
    Ok(())
}

fn run_model(a: &ModelArgs) -> Result<()> {
    report::header()?;
    let l = load_source(&a.src, None)?;
    report::model_line(&l.model, &l.name);
    let rows = model::moe_layers(&l.model, a.tokens, a.iters, a.src.seed)?;
    report::bench_table(&rows, a.tokens);
    Ok(())
}

/// The MoE layer benchmark: MLX's composed path vs the fused path at real model dimensions, with the
/// machine's read bandwidth measured in the same run.
fn run_layer(a: &LayerArgs) -> Result<()> {
    let specs: Vec<_> = layer::layer_specs()
        .into_iter()
        .filter(|s| a.layer == "all" || a.layer == s.name)
        .collect();
    report::header()?;
    let on_gpu = runtime::default_device()? == DeviceKind::Gpu;
    // What achieved GB/s are compared with, measured in this run: on a GPU the card's device-to-device
    // copy bandwidth; on a CPU the read bandwidth this process gets, which on a shared host moves in
    // spells of seconds: it is measured before each block of the fused calls, which are compared with
    // the bandwidth of their moment (see BenchLayer::time), and, for the record, before and after each
    // layer's rows.
    let (probe, probe_about): (Box<dyn BandwidthProbe>, String) = if on_gpu {
        let p = gpu_copy_probe()?;
        let about = format!(
            "device-to-device copy, {} chained copies of a {} MiB buffer, bytes read + written",
            GpuCopyProbe::CHAIN,
            p.buffer_bytes() >> 20
        );
        (Box::new(p), about)
    } else {
        let threads = zmlx::fused::num_threads()?;
        let p = ReadProbe::new(1 << 30, threads as usize)?;
        let about = format!(
            "{threads} threads reading a 1024 MiB buffer{}",
            if zmlx::hugepages::enabled() {
                " on huge pages"
            } else {
                ""
            }
        );
        (Box::new(p), about)
    };
    let measure_bw = |when: &str| -> Result<f64> {
        let bw = probe.gb_per_sec(5)?;
        println!(
            "{} bandwidth {when}: {bw:.1} GB/s ({probe_about}, best of 5)",
            if on_gpu { "GPU memory" } else { "machine read" }
        );
        Ok(bw)
    };
    // Weights of all copies: on a CPU at least 8 x a 32 MiB last-level cache, on a GPU 1 GiB (over 8 x
    // its L2), and two copies, so no call finds its experts in cache.
    let min_bytes = if on_gpu {
        (1u64 << 30) as f64
    } else {
        (256u64 << 20) as f64
    };
    for spec in specs {
        println!();
        println!("== {}: {}", spec.name, spec.about);
        let pb = bar(0, "weights");
        let layer = BenchLayer::build(&spec, a.seed, 2, min_bytes, |d, t| {
            pb.set_length(t as u64);
            pb.set_position(d as u64);
        })?;
        pb.finish_and_clear();
        println!(
            "weights: {} copies, {:.0} MB in all; one expert (gate+up+down) {:.2} MB",
            layer.copies(),
            layer.total_bytes() / 1e6,
            layer.expert_bytes / 1e6
        );
        if !on_gpu && zmlx::hugepages::enabled() {
            let hp = layer.promote_huge_pages()?;
            println!(
                "huge pages: {:.0} of {:.0} MB of weights backed by 2 MiB pages (MADV_COLLAPSE){} (ZMLX_HUGE_PAGES=0: off)",
                hp.collapsed_bytes as f64 / 1e6,
                hp.total_bytes as f64 / 1e6,
                if hp.advised_bytes > 0 {
                    format!(", {:.0} MB only advised", hp.advised_bytes as f64 / 1e6)
                } else {
                    String::new()
                }
            );
        } else if !on_gpu {
            println!("huge pages: off (ZMLX_HUGE_PAGES=0)");
        }
        let tokens = if a.tokens.is_empty() {
            spec.default_tokens.to_vec()
        } else {
            a.tokens.clone()
        };
        let bw = measure_bw("before these rows")?;
        if on_gpu {
            report::layer_header_gpu();
        } else {
            report::layer_header();
        }
        for (n, &t) in tokens.iter().enumerate() {
            println!(
                "  T={t}: fused vs MLX composed on one call: max |difference| / max |MLX| = {:.2e}",
                layer.agreement(t, a.seed ^ 0xa9)?
            );
            let row = layer.time(
                t,
                a.seed.wrapping_add(n as u64 + 1),
                a.budget,
                a.iters,
                Some(probe.as_ref()),
            )?;
            if on_gpu {
                report::layer_row_gpu(&row, bw);
            } else {
                report::layer_row(&row, bw);
            }
        }
        measure_bw("after these rows")?;
    }
    Ok(())
}

/// Median of `v` (0 when empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}
