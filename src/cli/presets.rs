//! `zmlx presets`: the synthetic presets.

use anyhow::Result;

use zmlx::models;

pub fn run() -> Result<()> {
    for p in models::presets() {
        println!("{:<20} {}", p.name, p.about);
    }
    Ok(())
}
