//! Our Qwen3-MoE and gpt-oss against mlx-lm's own Python implementation on the same synthetic checkpoint:
//! zmlx writes the checkpoint, `scripts/compare_mlx_lm.py` runs mlx-lm (pip `mlx-lm`, `mlx`/`mlx-cpu`
//! 0.32.4) over a token sequence, and the logits must agree within the tolerance below, both for zmlx's
//! one-pass forward (prefill, expert rows sorted as mlx-lm does) and for token-by-token decoding with the KV
//! cache (teacher-forced).
//!
//! Needs a Python with mlx-lm (`ZMLX_PYTHON`, default `python3`). Without it the test prints why and
//! passes, unless `ZMLX_REQUIRE_MLX_LM=1` (set by CI), where a missing mlx-lm fails it.

mod common;

use std::process::Command;

use common::{max_diff, TempDir};
use zmlx::checkpoint::Tensors;
use zmlx::mlx_rs::Array;
use zmlx::models::synthetic::{gpt_oss_quant, qwen3_quant, with_quant};
use zmlx::models::{self, gpt_oss, qwen3_moe, Model};
use zmlx::moe::MoePath;

/// Logits may differ from mlx-lm's by at most this fraction of the largest |logit| (both sides compute in
/// bfloat16 with the same MLX kernels; differences come from op order, e.g. decode vs one-pass attention).
const REL_TOL: f64 = 5e-3;

fn python() -> Option<String> {
    let py = std::env::var("ZMLX_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import mlx_lm, mlx.core"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        Some(py)
    } else if std::env::var("ZMLX_REQUIRE_MLX_LM").is_ok_and(|v| v == "1") {
        panic!("ZMLX_REQUIRE_MLX_LM=1 but `{py}` cannot import mlx_lm");
    } else {
        eprintln!(
            "skipping the mlx-lm comparison: `{py}` cannot import mlx_lm (pip install mlx-lm)"
        );
        None
    }
}

fn logits_rows(a: &Array) -> Vec<Vec<f32>> {
    let v = zmlx::array::to_f32_vec(a).expect("logits");
    let vocab = *a.shape().last().unwrap() as usize;
    v.chunks(vocab).map(|c| c.to_vec()).collect()
}

fn compare(preset: &str, config: serde_json::Value, len: usize) {
    let Some(py) = python() else { return };
    let dir = TempDir::new(preset);
    let (_, tensors) = models::synthesize(&config, 7, &mut |_, _, _| {}).unwrap();
    models::save(&dir.0, &config, &tensors).unwrap();

    let model: Model = models::load(&dir.0).unwrap();
    let tokens = zmlx::generate::random_tokens(len, model.config.vocab_size, 11);
    let list: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    let out = dir.0.join("mlx_lm_logits.safetensors");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/compare_mlx_lm.py");
    let st = Command::new(&py)
        .arg(script)
        .arg(&dir.0)
        .arg(list.join(","))
        .arg(&out)
        .output()
        .expect("run python");
    assert!(
        st.status.success(),
        "compare_mlx_lm.py failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let mut t = Tensors::new(&out);
    t.load_file(&out).unwrap();
    let want = t
        .take(
            "logits",
            &[Some(1), Some(len as i32), Some(model.config.vocab_size)],
        )
        .unwrap();
    let want = logits_rows(&want);

    // One pass over the sequence (prefill: expert rows sorted, as mlx-lm does for >= 64 rows).
    let ids = Array::from_slice(&tokens, &[1, len as i32]);
    let mut cache = model.new_cache();
    let got = model.forward(&ids, &mut cache, MoePath::Reference).unwrap();
    let got = logits_rows(&got);
    let mut worst = 0f64;
    for (pos, (g, w)) in got.iter().zip(&want).enumerate() {
        let (d, s) = max_diff(g, w);
        worst = worst.max(d / s);
        assert!(s > 0.5, "{preset}: degenerate logits at position {pos}");
        assert!(
            d <= REL_TOL * s,
            "{preset} one-pass, position {pos}: max diff {d} vs scale {s}"
        );
    }
    // Token by token with the KV cache.
    let mut cache = model.new_cache();
    let mut worst_dec = 0f64;
    for (pos, tok) in tokens.iter().enumerate() {
        let ids = Array::from_slice(&[*tok], &[1, 1]);
        let g = model.forward(&ids, &mut cache, MoePath::Reference).unwrap();
        let g = zmlx::array::to_f32_vec(&g).unwrap();
        let (d, s) = max_diff(&g, &want[pos]);
        worst_dec = worst_dec.max(d / s);
        assert!(
            d <= REL_TOL * s,
            "{preset} decode, position {pos}: max diff {d} vs scale {s}"
        );
    }
    eprintln!(
        "{preset}: {len} positions, max |zmlx - mlx-lm| / max|logit|: one-pass {worst:.5}, decode {worst_dec:.5}"
    );
}

#[test]
fn qwen3_moe_matches_mlx_lm() {
    // 2 layers, D 256, 16 experts top-4, bf16, 4-bit affine g64 (router 8-bit): 24 x 4 rows >= 64, so
    // the one-pass forward takes mlx-lm's sorted path.
    let c = qwen3_moe::config_json(256, 2, 4, 2, 64, 16, 4, 128, 1024, "bfloat16");
    compare("qwen3", with_quant(c, qwen3_quant(2, 4, 64)), 24);
}

#[test]
fn gpt_oss_matches_mlx_lm() {
    // 2 layers (sliding + full), D 256, 8 experts top-4, mxfp4 experts with biases, window 16 < 40
    // positions: the window, sinks, clamped activation, expert biases and YaRN RoPE are all exercised.
    let mut c = gpt_oss::config_json(256, 2, 4, 2, 64, 8, 4, 256, 1024, 16, "bfloat16");
    // YaRN RoPE as in the released gpt-oss configs.
    c["rope_scaling"] = serde_json::json!({
        "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
        "original_max_position_embeddings": 4096, "truncate": false
    });
    compare("gpt-oss", with_quant(c, gpt_oss_quant(2)), 40);
}
