//! `zmlx generate`: decode from a checkpoint or a synthetic model.

use anyhow::{bail, Result};
use clap::Args;

use zmlx::generate::{random_tokens, Sampler};
use zmlx::moe::MoePath;
use zmlx::tokenizer::parse_token_list;

use super::{load_source, moe_path, run_decode, ModelSource};

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
    let l = load_source(&a.src)?;
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
    let g = run_decode(&l.model, &prompt, a.max_tokens, sampler, a.path, &stop)?;
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
    Ok(())
}
