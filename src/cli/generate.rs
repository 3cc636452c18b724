//! `zmlx generate`: decode from a checkpoint or a synthetic model. In a distributed group of several ranks
//! (`zmlx launch -n N -- generate ...`) the ranks share out the routed experts (expert parallelism, see
//! [`zmlx::moe::parallel`]): each loads only its experts, every rank runs every step, and rank 0 prints
//! the generated text; every rank prints its share of the experts and its memory.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use zmlx::distributed::{self as dist, Backend};
use zmlx::generate::{last_logits, random_tokens, Sampler};
use zmlx::models::{Ffn, Model};
use zmlx::moe::{ExpertParallel, MoePath};
use zmlx::tokenizer::parse_token_list;

use super::{load_source, moe_path, run_decode, Exit, ModelSource};

#[derive(Args, Debug)]
pub struct GenerateArgs {
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
    #[arg(long, default_value_t = 0.0, value_parser = temperature)]
    temp: f32,
    /// MoE path.
    #[arg(long, default_value = "fused", value_parser = moe_path())]
    path: MoePath,
    /// Writes the generated tokens and the float32 logits each was chosen from to this JSON file (`{rank}`
    /// in the name is replaced by the process's rank), for comparing runs.
    #[arg(long, hide = true, value_name = "FILE")]
    logits_out: Option<String>,
    /// Fault injection: the rank of this number fails (exit status 3) once it has generated
    /// --fail-after tokens, while the other ranks go on to the next step.
    #[arg(long, hide = true)]
    fail_rank: Option<usize>,
    /// Tokens --fail-rank generates before failing.
    #[arg(long, hide = true, default_value_t = 1)]
    fail_after: usize,
}

/// `--temp`: a number >= 0.
fn temperature(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if t >= 0.0 => Ok(t),
        Ok(_) => Err("must be >= 0".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let group = dist::init(false, Backend::Any).context("joining the distributed group")?;
    let (rank, size) = (group.rank(), group.size());
    let ep = (size > 1).then(|| ExpertParallel::new(Arc::new(group)));
    let read_before = proc_io_rchar();
    let l = load_source(&a.src, ep.as_ref())?;
    let read = proc_io_rchar()
        .zip(read_before)
        .map(|(after, before)| after.saturating_sub(before));
    let prompt = match (&a.prompt, &a.tokens) {
        (Some(text), _) => match &l.tokenizer {
            Some(t) => t.encode(text)?,
            None => {
                bail!("--prompt needs tokenizer.json in the model directory; use --tokens instead")
            }
        },
        (None, Some(ids)) => parse_token_list(ids)?,
        (None, None) => random_tokens(8, l.model.config.vocab_size, 1),
    };
    let sampler = if a.temp > 0.0 {
        Sampler::Temperature {
            temperature: a.temp,
            seed: a.src.seed,
        }
    } else {
        Sampler::Greedy
    };
    let stop = zmlx::generate::eos_tokens(&l.model)?;
    let fail_here = a.fail_rank == Some(rank);
    let mut logits: Vec<Vec<f32>> = Vec::new();
    let mut steps = 0usize;
    let g = run_decode(
        &l.model,
        &prompt,
        a.max_tokens,
        sampler,
        a.path,
        &stop,
        &mut |_, step_logits| {
            steps += 1;
            if a.logits_out.is_some() {
                logits.push(last_logits(step_logits)?);
            }
            if fail_here && steps >= a.fail_after {
                // Ends the generation here; the error returned is the one below.
                return Err(zmlx::Error::Internal("--fail-rank".into()));
            }
            Ok(())
        },
    );
    if fail_here && steps >= a.fail_after {
        return Err(Exit {
            code: 3,
            msg: format!(
                "rank {rank}: failing on purpose after {steps} token(s) (--fail-rank {rank})"
            ),
        }
        .into());
    }
    let g = g?;
    if let Some(pattern) = &a.logits_out {
        let file = PathBuf::from(pattern.replace("{rank}", &rank.to_string()));
        let json = serde_json::json!({
            "rank": rank,
            "size": size,
            "path": a.path.to_string(),
            "prompt": prompt,
            "tokens": g.tokens,
            "logits": logits,
        });
        std::fs::write(&file, json.to_string())
            .with_context(|| format!("writing {}", file.display()))?;
    }
    println!("{}", memory_line(&l.model, read)?);
    if rank == 0 {
        println!("model: {}", l.name);
        println!("prompt: {:?}", prompt);
        match &l.tokenizer {
            Some(t) => println!("output: {}", t.decode(&g.tokens)?),
            None => println!("output tokens: {:?}", g.tokens),
        }
        println!(
            "{} path: prefill {} tokens in {:.3} s, decode {:.2} tok/s",
            a.path,
            g.prompt_tokens,
            g.prefill_secs,
            g.decode_tok_per_s()
        );
    }
    Ok(())
}

/// Which experts this process holds and what they and the process take in memory.
fn memory_line(model: &Model, read: Option<u64>) -> Result<String> {
    let mb = |b: u64| b as f64 / 1e6;
    let layers = model.num_moe_layers();
    let total = model.config.schema().expert_nbytes(model.config.dtype);
    let held = model.expert_bytes() as u64;
    let experts = model
        .layers
        .iter()
        .find_map(|l| match &l.ffn {
            Ffn::Moe(m) => Some(m.experts.dims()),
            Ffn::Dense(_) => None,
        })
        .transpose()?
        .map_or(0, |(e, _, _)| e);
    let mut s = match model.expert_shard() {
        Some((r, ep)) => format!(
            "rank {}/{}: experts [{}, {}) of {} in each of {layers} MoE layers",
            ep.rank(),
            ep.size(),
            r.first,
            r.first + r.count,
            r.total
        ),
        None => format!("one process: all {experts} experts of each of {layers} MoE layers"),
    };
    s += &format!(
        ": expert arrays {:.2} MB of the model's {:.2} MB",
        mb(held),
        mb(total)
    );
    if let Some((rss, peak)) = proc_rss() {
        s += &format!("; RSS {:.1} MB, peak {:.1} MB", mb(rss), mb(peak));
    }
    if let Some(r) = read {
        s += &format!("; {:.2} MB read from files while loading", mb(r));
    }
    Ok(s)
}

/// Resident and peak resident memory of this process (Linux: `/proc/self/status`).
fn proc_rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        let v: u64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(v * 1024)
    };
    Some((kb("VmRSS:")?, kb("VmHWM:")?))
}

/// Bytes this process has read through read(2) and friends so far (Linux: `/proc/self/io`).
fn proc_io_rchar() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
}
