//! Command line interface.

mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use zmlx::generate::{generate_until, random_tokens, Generation, Sampler};
use zmlx::models::{self, Model};
use zmlx::moe::MoePath;
use zmlx::runtime::{self, DeviceKind};
use zmlx::tokenizer::{parse_token_list, Tokenizer};

/// zmlx — MoE inference on MLX with fused quantized expert kernels, checked against MLX's own ops.
///
/// Without a subcommand: builds a small synthetic Qwen3-MoE-like model, decodes with the reference (MLX
/// composed) path and the fused path, and prints tok/s, speedup and the fidelity verdict.
#[derive(Parser, Debug)]
#[command(name = "zmlx", version, about, long_about = None)]
struct Cli {
    /// Device to run on.
    #[arg(long, global = true, default_value = "cpu", value_parser = ["cpu", "gpu"])]
    device: String,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: DemoArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate tokens from a checkpoint or synthetic model.
    Generate(GenerateArgs),
    /// Fidelity check: teacher-forced oracle vs reference vs fused.
    Validate(ValidateArgs),
    /// Per-layer timing: fused vs MLX composed MoE layer.
    Bench(BenchArgs),
    /// MLX version, backend, devices, features.
    Info,
    /// Write a synthetic model as an mlx-lm checkpoint directory.
    Synth(SynthArgs),
    /// List the synthetic presets.
    Presets,
}

#[derive(Args, Debug, Clone)]
struct ModelSource {
    /// mlx-lm checkpoint directory (config.json + *.safetensors).
    #[arg(long, conflicts_with = "synthetic")]
    model: Option<PathBuf>,
    /// Synthetic model: a preset name (see `zmlx presets`) or a config.json file (any config).
    #[arg(long)]
    synthetic: Option<String>,
    /// Seed of the synthetic weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Synthetic preset of the default run.
    #[arg(long, default_value = "qwen3-tiny")]
    preset: String,
    /// Tokens to decode per path in the default run.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Teacher-forced steps of the default run's fidelity check.
    #[arg(long, default_value_t = 256)]
    fidelity_steps: usize,
    /// Preset of the default run's fidelity check (smaller than the decode preset so that the three
    /// 256-step teacher-forced passes fit the run's time budget on 2 cores).
    #[arg(long, default_value = "qwen3-mini")]
    fidelity_preset: String,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    #[command(flatten)]
    src: ModelSource,
    /// Prompt text (needs tokenizer.json in the model directory).
    #[arg(long, conflicts_with = "tokens")]
    prompt: Option<String>,
    /// Prompt token ids, e.g. "1,2,3".
    #[arg(long)]
    tokens: Option<String>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    /// MoE path.
    #[arg(long, default_value = "fused", value_parser = ["fused", "reference"])]
    path: String,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    #[command(flatten)]
    src: ModelSource,
    /// Teacher-forced steps.
    #[arg(long, default_value_t = 256)]
    steps: usize,
    /// Prompt length (random token ids).
    #[arg(long, default_value_t = 16)]
    prompt_len: usize,
    /// Write the per-step errors, margins and tokens as CSV to this file.
    #[arg(long)]
    csv: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Per-layer timing of a model's MoE layers (with --model or --synthetic). Without a model: the MoE layer
    /// benchmark at real model dimensions (see --layer).
    #[command(flatten)]
    src: ModelSource,
    /// Layer benchmark: `qwen3`, `mixtral`, `gpt-oss` or `all`.
    #[arg(long, default_value = "all")]
    layer: String,
    /// Tokens per call: one value for a model, a comma-separated list for the layer benchmark (default:
    /// each layer's own list).
    #[arg(long, value_delimiter = ',')]
    tokens: Vec<usize>,
    /// Timed iterations per layer and path (default 20 for a model); for the layer benchmark the most
    /// calls per path and token count within the budget (default 1000: at T=1 a median over a few dozen
    /// calls is unsteady on a shared machine).
    #[arg(long)]
    iters: Option<usize>,
    /// Layer benchmark: seconds of timed calls per path and token count (at least one call each).
    #[arg(long, default_value_t = 2.0)]
    budget: f64,
}

#[derive(Args, Debug)]
struct SynthArgs {
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

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    let dev: DeviceKind = cli.device.parse()?;
    runtime::use_device(dev)?;
    match cli.command {
        None => demo(&cli.demo),
        Some(Command::Generate(a)) => cmd_generate(a),
        Some(Command::Validate(a)) => cmd_validate(a),
        Some(Command::Bench(a)) => cmd_bench(a),
        Some(Command::Info) => cmd_info(),
        Some(Command::Synth(a)) => cmd_synth(a),
        Some(Command::Presets) => {
            for p in models::presets() {
                println!("{:<20} {}", p.name, p.about);
            }
            Ok(())
        }
    }
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

/// A synthetic model from a preset, with a progress bar over its tensors.
fn synth_model(
    preset: &str,
    seed: u64,
) -> Result<(Model, zmlx::checkpoint::Tensors, serde_json::Value)> {
    let config: serde_json::Value = if preset.ends_with(".json") {
        let text = std::fs::read_to_string(preset).with_context(|| format!("reading {preset}"))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {preset}"))?
    } else {
        models::preset(preset)?.config
    };
    let cfg = models::ModelConfig::from_json(&config)?;
    let pb = bar(models::synthetic::param_count(&cfg) as u64, "generating");
    let (m, t) = models::synthesize(&config, seed, &mut |done, _, name| {
        pb.set_position(done as u64);
        pb.set_message(name.to_string());
    })
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

fn load_source(src: &ModelSource) -> Result<Loaded> {
    match (&src.model, &src.synthetic) {
        (Some(dir), None) => {
            let pb = ProgressBar::new_spinner();
            pb.set_message(format!("loading {}", dir.display()));
            pb.enable_steady_tick(Duration::from_millis(120));
            let model = models::load(dir)?;
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
            let (model, _, _) = synth_model(p, src.seed)?;
            Ok(Loaded {
                model,
                tokenizer: None,
                name: format!("synthetic {p} (seed {})", src.seed),
            })
        }
        (None, None) => bail!("give --model DIR or --synthetic PRESET"),
        (Some(_), Some(_)) => bail!("give either --model or --synthetic, not both"),
    }
}

fn decode_bar(n: usize, path: MoePath) -> ProgressBar {
    bar(n as u64, &format!("{path}"))
}

fn run_decode(
    model: &Model,
    prompt: &[u32],
    n: usize,
    sampler: Sampler,
    path: MoePath,
    stop: &[u32],
) -> Result<Generation> {
    let pb = decode_bar(n, path);
    let t0 = Instant::now();
    let mut count = 0u64;
    let g = generate_until(model, prompt, n, sampler, path, stop, &mut |_| {
        count += 1;
        pb.set_position(count);
        let s = t0.elapsed().as_secs_f64();
        if s > 0.0 {
            pb.set_message(format!("{:.1} tok/s", count as f64 / s));
        }
    })?;
    pb.finish_and_clear();
    Ok(g)
}

fn demo(a: &DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    report::header()?;
    let (model, _, _) = synth_model(&a.preset, 0)?;
    report::model_line(&model, &format!("synthetic {} (seed 0)", a.preset));
    if a.decode_tokens == 0 {
        bail!("--decode-tokens must be at least 1");
    }
    let prompt = random_tokens(16, model.config.vocab_size, 1);
    let r = run_decode(
        &model,
        &prompt,
        a.decode_tokens,
        Sampler::Greedy,
        MoePath::Reference,
        &[],
    )?;
    let f = run_decode(
        &model,
        &prompt,
        a.decode_tokens,
        Sampler::Greedy,
        MoePath::Fused,
        &[],
    )?;
    report::decode_table(prompt.len(), &r, &f);

    let fmodel = if a.fidelity_preset == a.preset {
        model
    } else {
        drop(model);
        let m = synth_model(&a.fidelity_preset, 0)?.0;
        println!();
        println!(
            "fidelity check on the smaller preset '{}' (to fit the time budget):",
            a.fidelity_preset
        );
        report::model_line(&m, &format!("synthetic {} (seed 0)", a.fidelity_preset));
        m
    };
    let rep = validate_model(&fmodel, a.fidelity_steps, 16)?;
    report::fidelity(&rep);
    println!("total wall time: {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn validate_model(
    model: &Model,
    steps: usize,
    prompt_len: usize,
) -> Result<zmlx::fidelity::Report> {
    if prompt_len == 0 {
        bail!("--prompt-len must be at least 1");
    }
    let sp = ProgressBar::new_spinner();
    sp.set_message("dequantizing the float32 oracle");
    sp.enable_steady_tick(Duration::from_millis(120));
    let oracle = model.to_oracle()?;
    sp.finish_and_clear();
    let prompt = random_tokens(prompt_len, model.config.vocab_size, 2);
    let pb = bar(steps as u64 + 1, "fidelity");
    let rep = zmlx::fidelity::run(model, &oracle, &prompt, steps, &mut |d, _| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    let layers = zmlx::fidelity::moe_layer_errors(model, &oracle, 16, 3)?;
    report::layer_errors(&layers);
    Ok(rep)
}

fn cmd_validate(a: ValidateArgs) -> Result<()> {
    report::header()?;
    let l = load_source(&a.src)?;
    report::model_line(&l.model, &l.name);
    let rep = validate_model(&l.model, a.steps, a.prompt_len)?;
    report::fidelity(&rep);
    if let Some(p) = &a.csv {
        let mut out = String::from(
            "pos,err_ref,err_fused,oracle_scale,ref_margin,oracle_tok,ref_tok,fused_tok\n",
        );
        for s in &rep.steps {
            out += &format!(
                "{},{},{},{},{},{},{},{}\n",
                s.pos,
                s.err_ref,
                s.err_fused,
                s.oracle_scale,
                s.ref_margin,
                s.oracle_tok,
                s.ref_tok,
                s.fused_tok
            );
        }
        std::fs::write(p, out).with_context(|| format!("writing {}", p.display()))?;
    }
    if !rep.pass() {
        bail!("fidelity check failed");
    }
    Ok(())
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let l = load_source(&a.src)?;
    let prompt = match (&a.prompt, &a.tokens) {
        (Some(text), None) => match &l.tokenizer {
            Some(t) => t.encode(text)?,
            None => {
                bail!("--prompt needs tokenizer.json in the model directory; use --tokens instead")
            }
        },
        (None, Some(ids)) => parse_token_list(ids)?,
        (None, None) => random_tokens(8, l.model.config.vocab_size, 1),
        (Some(_), Some(_)) => bail!("give either --prompt or --tokens"),
    };
    let sampler = if a.temp > 0.0 {
        Sampler::Temperature {
            temperature: a.temp,
            seed: a.src.seed,
        }
    } else if a.temp == 0.0 {
        Sampler::Greedy
    } else {
        bail!("--temp must be >= 0");
    };
    let path: MoePath = a.path.parse()?;
    let stop = zmlx::generate::eos_tokens(&l.model);
    let g = run_decode(&l.model, &prompt, a.max_tokens, sampler, path, &stop)?;
    println!("model: {}", l.name);
    println!("prompt: {:?}", prompt);
    match &l.tokenizer {
        Some(t) => println!("output: {}", t.decode(&g.tokens)?),
        None => println!("output tokens: {:?}", g.tokens),
    }
    println!(
        "{} path: prefill {} tokens in {:.3} s, decode {:.2} tok/s",
        path,
        g.prompt_tokens,
        g.prefill_secs,
        g.decode_tok_per_s()
    );
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    if a.iters == Some(0) || a.tokens.contains(&0) {
        bail!("--tokens and --iters must be at least 1");
    }
    if a.src.model.is_none() && a.src.synthetic.is_none() {
        return cmd_layer_bench(&a);
    }
    report::header()?;
    let l = load_source(&a.src)?;
    report::model_line(&l.model, &l.name);
    let tokens = match a.tokens.as_slice() {
        [] => 1,
        [t] => *t,
        _ => bail!("--tokens takes one value when benchmarking a model"),
    };
    let rows = zmlx::bench::moe_layers(&l.model, tokens, a.iters.unwrap_or(20), a.src.seed)?;
    report::bench_table(&rows, tokens);
    Ok(())
}

/// The MoE layer benchmark: MLX's composed path vs the fused path at real model dimensions, with the
/// machine's read bandwidth measured in the same run.
fn cmd_layer_bench(a: &BenchArgs) -> Result<()> {
    let specs: Vec<_> = zmlx::bench::layer_specs()
        .into_iter()
        .filter(|s| a.layer == "all" || a.layer == s.name)
        .collect();
    if specs.is_empty() {
        bail!(
            "unknown --layer '{}': use qwen3, mixtral, gpt-oss or all",
            a.layer
        );
    }
    if a.budget.is_nan() || a.budget <= 0.0 {
        bail!("--budget must be positive");
    }
    report::header()?;
    let on_gpu = runtime::default_device()? == DeviceKind::Gpu;
    // What achieved GB/s are compared with, measured in this run: on a GPU the card's device-to-device
    // copy bandwidth; on a CPU the read bandwidth this process gets, which on a shared host moves (on
    // the 2-vCPU development machine between ~26 and ~62 GB/s, in spells of seconds): it is measured
    // before each block of the fused calls, which are compared with the bandwidth of their moment (see
    // BenchLayer::time), and, for the record, before and after each layer's rows.
    let (probe, probe_about): (Box<dyn zmlx::bench::BandwidthProbe>, String) = if on_gpu {
        let name = runtime::gpu_name()?.unwrap_or_else(|| "unnamed GPU".to_string());
        println!("GPU: {name}; fused ops: {}", zmlx::fused::gpu_coverage()?);
        let p = zmlx::bench::GpuCopyProbe::new(1 << 30)?;
        let about = format!(
            "device-to-device copy, {} chained copies of a {} MiB buffer, bytes read + written",
            zmlx::bench::GpuCopyProbe::CHAIN,
            p.buffer_bytes() >> 20
        );
        (Box::new(p), about)
    } else {
        let threads = zmlx::fused::num_threads()?;
        let p =
            zmlx::membw::ReadProbe::new(1 << 30, threads as usize).map_err(anyhow::Error::msg)?;
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
        let layer = zmlx::bench::BenchLayer::build(&spec, a.src.seed, 2, min_bytes, |d, t| {
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
                layer.agreement(t, a.src.seed ^ 0xa9)?
            );
            let row = layer.time(
                t,
                a.src.seed.wrapping_add(n as u64 + 1),
                a.budget,
                a.iters.unwrap_or(1000),
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

fn cmd_info() -> Result<()> {
    println!("zmlx {}", env!("CARGO_PKG_VERSION"));
    println!(
        "MLX version: {} (pinned {})",
        runtime::mlx_version()?,
        zmlx::sys::MLX_VERSION
    );
    println!("backend: {}", runtime::backend());
    for k in [DeviceKind::Cpu, DeviceKind::Gpu] {
        println!(
            "device {}: {} ({} device(s))",
            k.name(),
            if runtime::is_available(k) {
                "available"
            } else {
                "not available"
            },
            runtime::device_count(k)
        );
    }
    println!("default device: {}", runtime::default_device()?.name());
    let modes: Vec<&str> = zmlx::QuantMode::ALL.iter().map(|m| m.name()).collect();
    println!("quantization modes: {}", modes.join(", "));
    println!(
        "fused MoE ops: gather_qmm_swiglu, gather_qmm_combine (CPU kernels: {} threads, SIMD {})",
        zmlx::fused::num_threads()?,
        zmlx::fused::simd_level()?
    );
    if let Some(name) = runtime::gpu_name()? {
        println!("GPU: {name}");
    }
    println!(
        "fused MoE ops on GPU streams: {}",
        zmlx::fused::gpu_coverage()?
    );
    println!(
        "models: qwen3_moe, gpt_oss, mixtral; cargo features: {}",
        if cfg!(feature = "cuda") {
            "cuda"
        } else {
            "(none)"
        }
    );
    Ok(())
}

fn cmd_synth(a: SynthArgs) -> Result<()> {
    let (_, t, cfg) = synth_model(&a.preset, a.seed)?;
    models::save(&a.out, &cfg, &t)?;
    println!("wrote {} tensors to {}", t.len(), a.out.display());
    Ok(())
}
