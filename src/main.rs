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
            let peer_lost = e.chain().any(|c| {
                c.downcast_ref::<zmlx::Error>()
                    .is_some_and(|z| z.is_peer_lost())
            });
            match e.downcast_ref::<cli::Exit>() {
                Some(x) => ExitCode::from(x.code),
                None if peer_lost => ExitCode::from(zmlx::distributed::PEER_LOST_EXIT_CODE),
                None => ExitCode::FAILURE,
            }
        }
    }
}
