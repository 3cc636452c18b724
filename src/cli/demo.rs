//! The default run (no subcommand): decode on both paths, then the fidelity check.

use std::time::Instant;

use anyhow::Result;
use clap::Args;

use zmlx::generate::{random_tokens, Sampler};
use zmlx::moe::MoePath;

use super::{at_least_one, report, run_decode, synth_model, validate::validate_model};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Synthetic preset of the default run.
    #[arg(long, default_value = "qwen3-tiny")]
    preset: String,
    /// Prompt length of the default run's decode (its prefill is timed on both paths).
    #[arg(long, default_value_t = 128, value_parser = at_least_one)]
    prompt_tokens: usize,
    /// Tokens to decode per path in the default run.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    decode_tokens: usize,
    /// Teacher-forced steps of the default run's fidelity check.
    #[arg(long, default_value_t = 256)]
    fidelity_steps: usize,
    /// Preset of the default run's fidelity check (smaller than the decode preset so that the three
    /// 256-step teacher-forced passes fit the run's time budget on 2 cores).
    #[arg(long, default_value = "qwen3-mini")]
    fidelity_preset: String,
}

pub fn run(a: &DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    report::header()?;
    let (model, _, _) = synth_model(&a.preset, 0, None)?;
    report::model_line(&model, &format!("synthetic {} (seed 0)", a.preset));
    let prompt = random_tokens(a.prompt_tokens, model.config.vocab_size, 1);
    let r = run_decode(
        &model,
        &prompt,
        a.decode_tokens,
        Sampler::Greedy,
        MoePath::Reference,
        &[],
        &mut |_, _| Ok(()),
    )?;
    let f = run_decode(
        &model,
        &prompt,
        a.decode_tokens,
        Sampler::Greedy,
        MoePath::Fused,
        &[],
        &mut |_, _| Ok(()),
    )?;
    report::decode_table(prompt.len(), &r, &f);

    let fmodel = if a.fidelity_preset == a.preset {
        model
    } else {
        drop(model);
        let m = synth_model(&a.fidelity_preset, 0, None)?.0;
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
