//! `zmlx validate`: the fidelity check of a model (teacher-forced float32 oracle vs reference vs fused).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::ProgressBar;

use zmlx::generate::random_tokens;
use zmlx::models::Model;

use super::{at_least_one, bar, load_source, report, ModelSource};

#[derive(Args, Debug)]
pub struct ValidateArgs {
    #[command(flatten)]
    src: ModelSource,
    /// Teacher-forced steps.
    #[arg(long, default_value_t = 256)]
    steps: usize,
    /// Prompt length (random token ids).
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    prompt_len: usize,
    /// Write the per-step errors, margins and tokens as CSV to this file.
    #[arg(long)]
    csv: Option<PathBuf>,
}

pub fn run(a: ValidateArgs) -> Result<()> {
    report::header()?;
    let l = load_source(&a.src, None)?;
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

/// The fidelity check on a `prompt_len`-token random prompt (`prompt_len` at least 1), printing the
/// per-layer MoE errors on the way.
pub(super) fn validate_model(
    model: &Model,
    steps: usize,
    prompt_len: usize,
) -> Result<zmlx::fidelity::Report> {
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
