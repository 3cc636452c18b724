//! The fidelity verdict: one token sequence, teacher-forced through a float32 oracle (weights dequantized
//! exactly to float32 once — see [`crate::quant::dequantize_f32`] — and no quantized kernels), the reference
//! path (MLX's composed ops and `quantized_matmul` in the model's dtype, as mlx-lm) and the fused path
//! (zmlx's fused kernels for the experts and every other quantized layer, float32 accumulation and
//! float32 activations).
//!
//! PASS iff (1) at every step the fused path's max logit error vs the oracle is at most
//! [`Tolerance::error_ratio`] × the reference path's (+ a tiny slack), and (2) the fused path's greedy token
//! equals the reference path's wherever the reference's top-2 logit margin exceeds twice the sum of both
//! paths' errors (for float32 models: at every step). Every logit of the two paths differs by at most that
//! sum, so two logits' order can differ between them only where they are within twice the sum: a flip
//! inside that margin is explained by the errors, one beyond it is not. All tolerance numbers live in
//! [`Tolerance::DEFAULT`].

use mlx_rs::{Array, Dtype};

use crate::error::{Error, Result};
use crate::generate::{argmax, last_logits};
use crate::models::Model;
use crate::path::MoePath;

/// The numbers of the verdict (one place).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Fused error may be at most this multiple of the reference error.
    pub error_ratio: f64,
    /// Plus this fraction of the step's largest |oracle logit|.
    pub rel_slack: f64,
    /// Plus this absolute amount.
    pub abs_slack: f64,
}

impl Tolerance {
    /// The project's verdict tolerances.
    pub const DEFAULT: Tolerance = Tolerance {
        error_ratio: 1.05,
        rel_slack: 1e-4,
        abs_slack: 1e-6,
    };

    /// The largest fused error allowed given the reference error and the oracle's scale.
    pub fn allowed(&self, err_ref: f64, oracle_scale: f64) -> f64 {
        self.error_ratio * err_ref + self.rel_slack * oracle_scale + self.abs_slack
    }
}

/// One teacher-forced step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Position of the token whose next-token logits are compared.
    pub pos: usize,
    /// max |reference - oracle|.
    pub err_ref: f64,
    /// max |fused - oracle|.
    pub err_fused: f64,
    /// Largest |oracle logit|.
    pub oracle_scale: f64,
    /// Reference top-1 minus top-2 logit.
    pub ref_margin: f64,
    /// Greedy tokens.
    pub oracle_tok: u32,
    /// Reference greedy token.
    pub ref_tok: u32,
    /// Fused greedy token.
    pub fused_tok: u32,
}

/// The verdict and its evidence.
#[derive(Clone, Debug)]
pub struct Report {
    /// Steps (prefill's last position first).
    pub steps: Vec<Step>,
    /// Whether the model computes in float32 (token identity required everywhere).
    pub float32: bool,
    /// Tolerances used.
    pub tol: Tolerance,
    /// Steps where the error criterion failed.
    pub error_failures: Vec<usize>,
    /// First position where fused and reference greedy tokens differ although the margin exceeds twice the
    /// sum of both errors (any difference for float32).
    pub first_divergence: Option<usize>,
    /// Token differences explained by a margin within the errors.
    pub explained_mismatches: usize,
    /// Prompt length.
    pub prompt_len: usize,
}

impl Report {
    /// The verdict.
    pub fn pass(&self) -> bool {
        self.error_failures.is_empty() && self.first_divergence.is_none() && !self.steps.is_empty()
    }

    /// Max over steps of the reference / fused errors.
    pub fn max_errors(&self) -> (f64, f64) {
        self.steps.iter().fold((0.0, 0.0), |(a, b), s| {
            (a.max(s.err_ref), b.max(s.err_fused))
        })
    }

    /// Mean over steps of the reference / fused errors.
    pub fn mean_errors(&self) -> (f64, f64) {
        let n = self.steps.len().max(1) as f64;
        let (a, b) = self
            .steps
            .iter()
            .fold((0.0, 0.0), |(a, b), s| (a + s.err_ref, b + s.err_fused));
        (a / n, b / n)
    }

    /// Steps whose fused error is below the reference error.
    pub fn fused_better_steps(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.err_fused < s.err_ref)
            .count()
    }

    /// Positions where the reference / fused greedy tokens agree with the oracle's.
    pub fn oracle_agreement(&self) -> (usize, usize) {
        self.steps.iter().fold((0, 0), |(a, b), s| {
            (
                a + usize::from(s.ref_tok == s.oracle_tok),
                b + usize::from(s.fused_tok == s.oracle_tok),
            )
        })
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
}

fn top2_margin(v: &[f32]) -> f64 {
    let (mut a, mut b) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for &x in v {
        let x = x as f64;
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    a - b
}

/// Judges recorded steps.
pub fn judge(steps: Vec<Step>, float32: bool, tol: Tolerance, prompt_len: usize) -> Report {
    let mut error_failures = Vec::new();
    let mut first_divergence = None;
    let mut explained = 0;
    for s in &steps {
        if s.err_fused > tol.allowed(s.err_ref, s.oracle_scale) {
            error_failures.push(s.pos);
        }
        if s.fused_tok != s.ref_tok {
            let real = float32 || s.ref_margin > 2.0 * (s.err_ref + s.err_fused);
            if real {
                first_divergence.get_or_insert(s.pos);
            } else {
                explained += 1;
            }
        }
    }
    Report {
        steps,
        float32,
        tol,
        error_failures,
        first_divergence,
        explained_mismatches: explained,
        prompt_len,
    }
}

/// Runs the check: prefill `prompt` on all three paths, then `steps` teacher-forced tokens (the oracle's
/// greedy continuation). `oracle` must come from `model.to_oracle()`. `progress(done, total)` after each step.
pub fn run(
    model: &Model,
    oracle: &Model,
    prompt: &[u32],
    steps: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report> {
    if !oracle.is_oracle || model.is_oracle {
        return Err(Error::invalid(
            "fidelity::run needs a model and its float32 oracle",
        ));
    }
    if prompt.is_empty() || steps == 0 {
        return Err(Error::invalid(
            "fidelity needs a non-empty prompt and at least one step",
        ));
    }
    crate::generate::check_tokens(model, prompt)?;
    let mut c_o = oracle.new_cache();
    let mut c_r = model.new_cache();
    let mut c_f = model.new_cache();
    let mut input: Vec<u32> = prompt.to_vec();
    let mut recs = Vec::with_capacity(steps + 1);
    let total = steps + 1;
    for (i, pos) in (0..total).zip(prompt.len() - 1..) {
        let ids = Array::from_slice(&input, &[1, input.len() as i32]);
        let lo = last_logits(&oracle.forward(&ids, &mut c_o, MoePath::Reference)?)?;
        let lr = last_logits(&model.forward(&ids, &mut c_r, MoePath::Reference)?)?;
        let lf = last_logits(&model.forward(&ids, &mut c_f, MoePath::Fused)?)?;
        let pick = |v: &[f32]| {
            argmax(v)
                .map(|t| t as u32)
                .ok_or_else(|| Error::Numerical("logits are all NaN".into()))
        };
        let oracle_tok = pick(&lo)?;
        recs.push(Step {
            pos,
            err_ref: max_abs_diff(&lr, &lo),
            err_fused: max_abs_diff(&lf, &lo),
            oracle_scale: lo.iter().map(|x| x.abs() as f64).fold(0.0, f64::max),
            ref_margin: top2_margin(&lr),
            oracle_tok,
            ref_tok: pick(&lr)?,
            fused_tok: pick(&lf)?,
        });
        input = vec![oracle_tok];
        progress(i + 1, total);
    }
    Ok(judge(
        recs,
        model.config.dtype == Dtype::Float32,
        Tolerance::DEFAULT,
        prompt.len(),
    ))
}

/// Layer-level accuracy of one MoE block: max |path - oracle| / max |oracle| on the same input.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerError {
    /// Layer index.
    pub layer: usize,
    /// Reference path relative error.
    pub reference: f64,
    /// Fused path relative error.
    pub fused: f64,
}

/// Feeds the same random input (`tokens` rows, model dtype) and the same routing (the model's router on
/// that input) through every MoE block's experts three ways — the float32 oracle's experts (input and
/// scores upcast), the reference path and the fused path — and reports each path's relative error. Both
/// paths get the same model-dtype input here (in the model the fused path feeds float32 activations), so
/// this isolates the experts' arithmetic from everything else in the model.
pub fn moe_layer_errors(
    model: &Model,
    oracle: &Model,
    tokens: usize,
    seed: u64,
) -> Result<Vec<LayerError>> {
    use crate::models::Ffn;
    let d = model.config.hidden_size;
    let key = mlx_rs::random::key(seed)?;
    let x = mlx_rs::random::normal::<f32>(&[1, tokens as i32, d][..], 0.0, 1.0, &key)?
        .as_dtype(model.config.dtype)?;
    let xo = x.as_dtype(Dtype::Float32)?;
    let mut out = Vec::new();
    for (i, (l, lo)) in model.layers.iter().zip(&oracle.layers).enumerate() {
        let (Ffn::Moe(m), Ffn::Moe(mo)) = (&l.ffn, &lo.ffn) else {
            continue;
        };
        // One routing decision for all three, so only the experts' arithmetic differs.
        let (inds, scores) = m.router.route(&x)?;
        let so = scores.as_dtype(Dtype::Float32)?;
        let yo = mo
            .experts
            .forward_combined(&xo, &inds, &so, MoePath::Reference)?;
        let yo = crate::array::to_f32_vec(&yo)?;
        let scale = yo
            .iter()
            .map(|v| v.abs() as f64)
            .fold(0.0, f64::max)
            .max(1e-30);
        let run = |p| -> Result<Vec<f32>> {
            crate::array::to_f32_vec(&m.experts.forward_combined(&x, &inds, &scores, p)?)
        };
        let (yr, yf) = (run(MoePath::Reference)?, run(MoePath::Fused)?);
        out.push(LayerError {
            layer: i,
            reference: max_abs_diff(&yr, &yo) / scale,
            fused: max_abs_diff(&yf, &yo) / scale,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(pos: usize, er: f64, ef: f64, margin: f64, rt: u32, ft: u32) -> Step {
        Step {
            pos,
            err_ref: er,
            err_fused: ef,
            oracle_scale: 10.0,
            ref_margin: margin,
            oracle_tok: rt,
            ref_tok: rt,
            fused_tok: ft,
        }
    }

    #[test]
    fn verdict_rules() {
        let t = Tolerance::DEFAULT;
        // Fused error within 5 % (+ slack) passes; identical tokens.
        let r = judge(vec![step(0, 0.1, 0.104, 1.0, 3, 3)], false, t, 1);
        assert!(r.pass());
        // Fused error 10 % above the reference fails.
        let r = judge(vec![step(0, 0.1, 0.11, 1.0, 3, 3)], false, t, 1);
        assert!(!r.pass());
        assert_eq!(r.error_failures, vec![0]);
        // A token flip where the margin is within the errors is explained, not a divergence.
        let r = judge(vec![step(5, 0.1, 0.05, 0.08, 3, 4)], false, t, 1);
        assert!(r.pass());
        assert_eq!(r.explained_mismatches, 1);
        // Each path may move each logit by its error: a margin of 0.25 between two logits can be
        // reversed by errors of 0.1 and 0.05 (0.25 < 2 x 0.15), so that flip is explained too.
        let r = judge(vec![step(5, 0.1, 0.05, 0.25, 3, 4)], false, t, 1);
        assert!(r.pass());
        assert_eq!(r.explained_mismatches, 1);
        // A flip with a clear margin is a real divergence at its position.
        let r = judge(
            vec![
                step(5, 0.1, 0.05, 0.08, 3, 3),
                step(6, 0.1, 0.05, 0.5, 3, 4),
            ],
            false,
            t,
            1,
        );
        assert!(!r.pass());
        assert_eq!(r.first_divergence, Some(6));
        // float32 models need token identity everywhere.
        let r = judge(vec![step(2, 1e-5, 1e-5, 1e-6, 3, 4)], true, t, 1);
        assert_eq!(r.first_divergence, Some(2));
    }
}
