//! Our models against mlx-lm's own Python implementation.
//!
//! Logits: zmlx writes a synthetic Qwen3-MoE, gpt-oss or GLM-4 MoE checkpoint, `scripts/compare_mlx_lm.py`
//! runs mlx-lm (pip `mlx-lm`, `mlx`/`mlx-cpu` 0.32.4) over a token sequence, and the logits must agree
//! within the tolerance below, both for zmlx's one-pass forward (prefill, expert rows sorted as mlx-lm
//! does) and for token-by-token decoding with the KV cache (teacher-forced).
//!
//! Tokens: `scripts/mlx_lm_greedy.py` writes checkpoints with mlx-lm's own model classes, quantization and
//! saving, and greedy-decodes them with mlx-lm; zmlx's reference path must decode exactly the same tokens.
//!
//! Needs a Python with mlx-lm (`ZMLX_PYTHON`, default `python3`). Without it the tests print why and
//! pass, unless `ZMLX_REQUIRE_MLX_LM=1` (set by CI), where a missing mlx-lm fails them.

mod common;

use std::process::Command;

use common::{max_diff, TempDir};
use zmlx::checkpoint::Tensors;
use zmlx::generate::Sampler;
use zmlx::mlx_rs::Array;
use zmlx::models::synthetic::{gpt_oss_quant, qwen3_quant, with_quant};
use zmlx::models::{self, gpt_oss, qwen3_moe, Arch, Dims, Model, QuantRecipe};
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

#[test]
fn glm4_moe_matches_mlx_lm() {
    // 3 layers (the first dense), D 256, 16 experts top-4 in 4 groups of which 2 are kept, scores
    // scaled by 2.5, q/k norms, q/k/v biases, half-rotary heads, one shared expert; bf16, 4-bit affine
    // g64 (the gate stays bf16, its correction bias float32): the one-pass forward sorts 24 x 4 rows.
    let d = Dims {
        hidden: 256,
        layers: 3,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        experts: 16,
        top_k: 4,
        expert_dim: 128,
        vocab: 1024,
        window: None,
    };
    let mut c = Arch::Glm4Moe.config_for(&d, "bfloat16");
    c["n_group"] = 4.into();
    c["topk_group"] = 2.into();
    c["routed_scaling_factor"] = 2.5.into();
    c["use_qk_norm"] = true.into();
    let q = QuantRecipe::AFFINE_4.block(d.layers, Arch::Glm4Moe.layout());
    compare("glm4-moe", with_quant(c, q), 24);
}

/// Greedy tokens decoded after the prompt: mlx-lm's, from `scripts/mlx_lm_greedy.py`, and zmlx's reference
/// path on each checkpoint that script wrote with mlx-lm's own classes (`nn.quantize`, `save_model`).
const GREEDY_STEPS: usize = 40;

/// Each family in each mode mlx-lm quantizes it in on the CPU (unquantized MoE experts would need
/// bfloat16 `gather_mm`, which MLX's CPU backend lacks).
const GREEDY_CASES: [&str; 8] = [
    "qwen3_moe:affine",
    "qwen3_moe:mxfp4",
    "gpt_oss:affine",
    "gpt_oss:mxfp4",
    "mixtral:affine",
    "mixtral:mxfp4",
    "glm4_moe:affine",
    "glm4_moe:mxfp4",
];

#[test]
fn reference_path_decodes_the_tokens_mlx_lm_decodes() {
    let Some(py) = python() else { return };
    let dir = TempDir::new("mlx-lm-greedy");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/mlx_lm_greedy.py");
    let st = Command::new(&py)
        .arg(script)
        .arg(&dir.0)
        .arg(GREEDY_STEPS.to_string())
        .args(GREEDY_CASES)
        .output()
        .expect("run python");
    assert!(
        st.status.success(),
        "mlx_lm_greedy.py failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let text = std::fs::read_to_string(dir.0.join("tokens.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect()
    };
    let mut failures = vec![];
    for case in GREEDY_CASES {
        let c = &cases[case];
        let want = ids(&c["tokens"]);
        assert_eq!(want.len(), GREEDY_STEPS, "{case}");
        let model = match models::load(std::path::Path::new(c["dir"].as_str().unwrap())) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{case}: {e}");
                failures.push(format!("{case}: {e}"));
                continue;
            }
        };
        let got = zmlx::generate::generate(
            &model,
            &ids(&c["prompt"]),
            GREEDY_STEPS,
            Sampler::Greedy,
            MoePath::Reference,
            &mut |_| {},
        )
        .unwrap()
        .tokens;
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        eprintln!("{case}: {same}/{GREEDY_STEPS} tokens as mlx-lm's");
        if got != want {
            failures.push(format!(
                "{case}: first difference at token {same}\n  zmlx   {got:?}\n  mlx-lm {want:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
