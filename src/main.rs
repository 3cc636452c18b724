//! `zmlx`: run MoE models on MLX with the fused or the reference MoE path and check fidelity.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable line.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", msg.join(": ").replace('\n', " "));
            e.downcast_ref::<cli::Exit>()
                .map_or(ExitCode::FAILURE, |x| ExitCode::from(x.code))
        }
    }
}
