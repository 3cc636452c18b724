//! Token generation with a KV cache: greedy or temperature sampling, timed prefill and decode.

use std::time::Instant;

use mlx_rs::{ops, Array, Dtype};

use crate::array::{slice_axis, to_f32_vec};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::path::MoePath;

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    /// Argmax.
    Greedy,
    /// Sample from `softmax(logits / temperature)` with MLX's categorical sampler (seeded).
    Temperature {
        /// > 0.
        temperature: f32,
        /// Seed of the sampling keys.
        seed: u64,
    },
}

/// Result of a generation.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    /// Generated token ids (prompt excluded).
    pub tokens: Vec<u32>,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Seconds for the prompt (prefill, first token included).
    pub prefill_secs: f64,
    /// Seconds for the remaining tokens.
    pub decode_secs: f64,
}

impl Generation {
    /// Decode throughput (tokens after the first / decode time).
    pub fn decode_tok_per_s(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1);
        if self.decode_secs > 0.0 {
            n as f64 / self.decode_secs
        } else {
            0.0
        }
    }
}

/// Index of the maximum of a slice (first on ties); `None` when empty or all NaN.
pub fn argmax(v: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in v.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

/// Logits of the last position of `[1, L, V]` as float32 values.
pub fn last_logits(logits: &Array) -> Result<Vec<f32>> {
    let l = logits.shape()[1];
    let last = slice_axis(logits, 1, l - 1, l)?;
    to_f32_vec(&last)
}

/// The next token from `[1, L, V]` logits (their last position): the argmax, as mlx-lm's greedy
/// sampler takes it (of the log-probabilities in the logits' dtype), or a draw from
/// `softmax(logits / temperature)`. Logits that are NaN or +infinity (activations that overflowed) give
/// no token and are an error, as are logits that are all -infinity; a -infinity logit is a token that is
/// never chosen.
pub fn next_token(logits: &Array, sampler: Sampler, step: usize) -> Result<u32> {
    let l = logits.shape()[1];
    let last = slice_axis(logits, 1, l - 1, l)?;
    let not_finite = || {
        Error::Numerical(
            "the logits are not finite (NaN or +infinity, or all -infinity): the activations overflowed"
                .into(),
        )
    };
    match sampler {
        Sampler::Greedy => {
            // mlx-lm takes the argmax of `logits - logsumexp(logits)` in the logits' dtype, where
            // rounding can make two different logits equal (and the first of them wins). A NaN or
            // +infinity logit, or only -infinity ones, make every log-probability NaN.
            let logprobs = ops::subtract(&last, ops::logsumexp_axis(&last, -1, true)?)?;
            let v = to_f32_vec(&logprobs)?;
            if v.iter().any(|x| x.is_nan()) {
                return Err(not_finite());
            }
            argmax(&v).map(|i| i as u32).ok_or_else(not_finite)
        }
        Sampler::Temperature { temperature, seed } => {
            if temperature <= 0.0 || !temperature.is_finite() {
                return Err(Error::invalid(format!(
                    "temperature must be positive and finite, got {temperature}"
                )));
            }
            let last = last.as_dtype(Dtype::Float32)?;
            let v = to_f32_vec(&last)?;
            if v.iter().any(|x| x.is_nan() || *x == f32::INFINITY) {
                return Err(not_finite());
            }
            let max = v
                .iter()
                .copied()
                .filter(|x| x.is_finite())
                .reduce(f32::max)
                .ok_or_else(not_finite)?;
            // softmax((logits - max) / t) is softmax(logits / t), without its overflow: every value is
            // at most 0 and none is NaN, so a temperature near 0 gives the argmax and the largest float
            // a near-uniform draw (logits * (1 / t), mlx-lm's form, is infinite or NaN below t ~ 1e-38).
            let shifted = ops::subtract(&last, Array::from_f32(max))?;
            let scaled = ops::divide(&shifted, Array::from_f32(temperature))?;
            let key = mlx_rs::random::key(seed.wrapping_add(step as u64))?;
            let t = mlx_rs::random::categorical(&scaled, -1, None, &key)?;
            let v = crate::array::to_u32_vec(&t)?;
            v.first()
                .copied()
                .ok_or_else(|| Error::Internal("the sampler returned no token".into()))
        }
    }
}

/// Validates token ids against the vocabulary.
pub fn check_tokens(model: &Model, tokens: &[u32]) -> Result<()> {
    let v = model.config.vocab_size as u32;
    if let Some(bad) = tokens.iter().find(|&&t| t >= v) {
        return Err(Error::invalid(format!(
            "token id {bad} is outside the vocabulary (size {v})"
        )));
    }
    Ok(())
}

/// Generates `max_tokens` tokens after `prompt` (all but its last token prefilled in chunks of
/// [`PREFILL_CHUNK`], as mlx-lm does). `on_token` sees each new token as it is produced.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    max_tokens: usize,
    sampler: Sampler,
    path: MoePath,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    generate_until(model, prompt, max_tokens, sampler, path, &[], on_token)
}

/// The end-of-sequence token ids of a model's `config.json` (`eos_token_id`, a number or a list).
pub fn eos_tokens(model: &Model) -> Result<Vec<u32>> {
    model.config.eos_token_ids()
}

/// [`generate`], stopping early after any token of `stop` (which is included in the output).
pub fn generate_until(
    model: &Model,
    prompt: &[u32],
    max_tokens: usize,
    sampler: Sampler,
    path: MoePath,
    stop: &[u32],
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    generate_steps(
        model,
        prompt,
        max_tokens,
        sampler,
        path,
        stop,
        &mut |tok, _| {
            on_token(tok);
            Ok(())
        },
    )
}

/// [`generate_until`] that shows `on_step` each new token with the logits `[1, 1, vocab]` it was chosen
/// from; an error from `on_step` ends the generation with that error.
pub fn generate_steps(
    model: &Model,
    prompt: &[u32],
    max_tokens: usize,
    sampler: Sampler,
    path: MoePath,
    stop: &[u32],
    on_step: &mut dyn FnMut(u32, &Array) -> Result<()>,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt is empty"));
    }
    check_tokens(model, prompt)?;
    if let Some(max) = max_positions(model)? {
        let need = prompt.len() as u64 + max_tokens as u64;
        if need > max {
            return Err(Error::invalid(format!(
                "the prompt ({} tokens) and max_tokens ({max_tokens}) need {need} positions, more than this model's max_position_embeddings ({max})",
                prompt.len()
            )));
        }
    }
    let mut cache = model.new_cache();
    let mut out = Generation {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    if max_tokens == 0 {
        return Ok(out);
    }
    let t0 = Instant::now();
    // As mlx-lm's `generate_step`: the prompt but its last token fills the cache, and the last token is
    // the first step.
    let (&last, head) = prompt
        .split_last()
        .ok_or_else(|| Error::invalid("the prompt is empty"))?;
    if !head.is_empty() {
        // Only the cache is evaluated: the head's logits are never computed.
        prefill(model, head, &mut cache, path)?;
        for kv in &cache {
            kv.eval()?;
        }
    }
    let logits = model.forward(&Array::from_slice(&[last], &[1, 1]), &mut cache, path)?;
    let mut tok = next_token(&logits, sampler, 0)?;
    out.prefill_secs = t0.elapsed().as_secs_f64();
    out.tokens.push(tok);
    on_step(tok, &logits)?;
    let t1 = Instant::now();
    for step in 1..max_tokens {
        if stop.contains(&tok) {
            break;
        }
        let ids = Array::from_slice(&[tok], &[1, 1]);
        let logits = model.forward(&ids, &mut cache, path)?;
        tok = next_token(&logits, sampler, step)?;
        out.tokens.push(tok);
        on_step(tok, &logits)?;
    }
    out.decode_secs = t1.elapsed().as_secs_f64();
    Ok(out)
}

/// Prompt tokens per forward pass of the prefill (mlx-lm's `prefill_step_size`): attention over a chunk
/// needs memory for chunk x positions scores, not positions^2 (a 40,000-token prompt in one pass made
/// the CPU attention allocate tens of GB and crash).
pub const PREFILL_CHUNK: usize = 2048;

/// The model's `max_position_embeddings`, if its config gives one.
pub fn max_positions(model: &Model) -> Result<Option<u64>> {
    model.config.max_position_embeddings()
}

/// Runs `prompt` through the model in chunks of [`PREFILL_CHUNK`] tokens, filling `cache`, and returns
/// the logits of the last chunk. The caches are evaluated after each earlier chunk (whose logits are
/// never computed), as mlx-lm does.
pub fn prefill(
    model: &Model,
    prompt: &[u32],
    cache: &mut [crate::nn::KvCache],
    path: MoePath,
) -> Result<Array> {
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt is empty"));
    }
    let chunks: Vec<&[u32]> = prompt.chunks(PREFILL_CHUNK).collect();
    let (last, head) = chunks
        .split_last()
        .ok_or_else(|| Error::invalid("the prompt is empty"))?;
    for c in head {
        let ids = Array::from_slice(c, &[1, c.len() as i32]);
        model.forward(&ids, cache, path)?;
        for kv in cache.iter() {
            kv.eval()?;
        }
    }
    let ids = Array::from_slice(last, &[1, last.len() as i32]);
    model.forward(&ids, cache, path)
}

/// Deterministic pseudo-random token ids in `[0, vocab)` (a prompt for synthetic models).
pub fn random_tokens(n: usize, vocab: i32, seed: u64) -> Vec<u32> {
    let mut s = seed ^ 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab.max(1) as u64) as u32
        })
        .collect()
}
