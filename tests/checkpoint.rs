//! mlx-lm checkpoint directories: a tiny checkpoint written here (safetensors with mlx-lm's key names and
//! a `quantization` block) loads and decodes; malformed checkpoints give clear errors.

mod common;

use common::TempDir;
use serde_json::{json, Value};
use zmlx::checkpoint::{save_dir, Tensors};
use zmlx::generate::{generate, Sampler};
use zmlx::mlx_rs::{Array, Dtype};
use zmlx::models::synthetic::{qwen3_quant, with_quant};
use zmlx::models::{self, qwen3_moe};
use zmlx::moe::MoePath;
use zmlx::quant::{quantize, QuantMode};

fn tiny_config() -> Value {
    let c = qwen3_moe::config_json(128, 2, 4, 2, 32, 8, 2, 64, 256, "bfloat16");
    with_quant(c, qwen3_quant(2, 4, 64))
}

/// Writes the checkpoint tensor by tensor with the key names mlx-lm uses (not through the synthetic
/// builder), so the loader is checked against the layout itself.
fn write_tiny(dir: &std::path::Path) -> Value {
    let cfg = tiny_config();
    let mut t = std::collections::BTreeMap::new();
    let mut seed = 1u64;
    let mut rnd = |shape: &[i32], std: f32| {
        seed += 1;
        let k = zmlx::mlx_rs::random::key(seed).unwrap();
        zmlx::mlx_rs::random::normal::<f32>(shape, 0.0, std, &k)
            .unwrap()
            .as_dtype(Dtype::Bfloat16)
            .unwrap()
    };
    let q = |t: &mut std::collections::BTreeMap<String, Array>, name: &str, w: Array, bits: i32| {
        let qw = quantize(&w, QuantMode::Affine, Some(64), Some(bits)).unwrap();
        t.insert(format!("{name}.weight"), qw.w);
        t.insert(format!("{name}.scales"), qw.scales);
        t.insert(format!("{name}.biases"), qw.biases.unwrap());
    };
    let ones = |n: i32| {
        Array::ones::<f32>(&[n])
            .unwrap()
            .as_dtype(Dtype::Bfloat16)
            .unwrap()
    };
    q(&mut t, "model.embed_tokens", rnd(&[256, 128], 1.0), 4);
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        q(
            &mut t,
            &format!("{p}.self_attn.q_proj"),
            rnd(&[128, 128], 0.1),
            4,
        );
        q(
            &mut t,
            &format!("{p}.self_attn.k_proj"),
            rnd(&[64, 128], 0.1),
            4,
        );
        q(
            &mut t,
            &format!("{p}.self_attn.v_proj"),
            rnd(&[64, 128], 0.1),
            4,
        );
        q(
            &mut t,
            &format!("{p}.self_attn.o_proj"),
            rnd(&[128, 128], 0.1),
            4,
        );
        t.insert(format!("{p}.self_attn.q_norm.weight"), ones(32));
        t.insert(format!("{p}.self_attn.k_norm.weight"), ones(32));
        t.insert(format!("{p}.input_layernorm.weight"), ones(128));
        t.insert(format!("{p}.post_attention_layernorm.weight"), ones(128));
        q(&mut t, &format!("{p}.mlp.gate"), rnd(&[8, 128], 0.2), 8);
        q(
            &mut t,
            &format!("{p}.mlp.switch_mlp.gate_proj"),
            rnd(&[8, 64, 128], 0.1),
            4,
        );
        q(
            &mut t,
            &format!("{p}.mlp.switch_mlp.up_proj"),
            rnd(&[8, 64, 128], 0.1),
            4,
        );
        q(
            &mut t,
            &format!("{p}.mlp.switch_mlp.down_proj"),
            rnd(&[8, 128, 64], 0.1),
            4,
        );
    }
    t.insert("model.norm.weight".into(), ones(128));
    q(&mut t, "lm_head", rnd(&[256, 128], 0.2), 4);
    save_dir(dir, &cfg, &t).unwrap();
    cfg
}

#[test]
fn tiny_checkpoint_loads_and_decodes() {
    let dir = TempDir::new("ckpt");
    write_tiny(&dir.0);
    let m = models::load(&dir.0).unwrap();
    assert_eq!(m.layers.len(), 2);
    assert_eq!(m.num_moe_layers(), 2);
    let prompt = [1u32, 2, 3, 4];
    let mut seen = Vec::new();
    let g = generate(
        &m,
        &prompt,
        6,
        Sampler::Greedy,
        MoePath::Reference,
        &mut |t| seen.push(t),
    )
    .unwrap();
    assert_eq!(g.tokens.len(), 6);
    assert_eq!(g.tokens, seen);
    assert!(g.tokens.iter().all(|&t| t < 256));
    // Greedy decoding is deterministic.
    let g2 = generate(
        &m,
        &prompt,
        6,
        Sampler::Greedy,
        MoePath::Reference,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(g.tokens, g2.tokens);
    // Sampling with a seed is reproducible too.
    let s = Sampler::Temperature {
        temperature: 0.8,
        seed: 5,
    };
    let a = generate(&m, &prompt, 6, s, MoePath::Reference, &mut |_| {}).unwrap();
    let b = generate(&m, &prompt, 6, s, MoePath::Reference, &mut |_| {}).unwrap();
    assert_eq!(a.tokens, b.tokens);
    // Generation stops after a stop token (e.g. eos_token_id), which is kept.
    let stop = [g.tokens[2]];
    let first = g.tokens.iter().position(|t| *t == stop[0]).unwrap();
    let u = zmlx::generate::generate_until(
        &m,
        &prompt,
        6,
        Sampler::Greedy,
        MoePath::Reference,
        &stop,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(u.tokens, g.tokens[..=first].to_vec());
    // Out-of-vocabulary prompt tokens are rejected.
    let e = generate(
        &m,
        &[999],
        2,
        Sampler::Greedy,
        MoePath::Reference,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
}

/// Loads `dir` after `edit` changed its tensors / config; returns the error text.
fn load_err(
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, Array>, &mut Value),
) -> String {
    let dir = TempDir::new("bad");
    let mut cfg = write_tiny(&dir.0);
    let t = Tensors::load_dir(&dir.0).unwrap();
    let mut map: std::collections::BTreeMap<String, Array> = t
        .sorted()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    edit(&mut map, &mut cfg);
    // save_dir writes only into an empty directory.
    std::fs::remove_file(dir.0.join("model.safetensors")).unwrap();
    std::fs::remove_file(dir.0.join("config.json")).unwrap();
    save_dir(&dir.0, &cfg, &map).unwrap();
    match models::load(&dir.0) {
        Ok(_) => panic!("malformed checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_tensor_is_named() {
    let e = load_err(|m, _| {
        m.remove("model.layers.1.mlp.switch_mlp.up_proj.scales");
        m.remove("model.layers.1.mlp.switch_mlp.up_proj.biases");
    });
    // Without scales the weight is read as dense and its shape no longer fits.
    assert!(
        e.contains("model.layers.1.mlp.switch_mlp.up_proj.weight"),
        "{e}"
    );
    let e = load_err(|m, _| {
        m.remove("model.layers.0.self_attn.k_norm.weight");
    });
    assert!(
        e.contains("missing tensor 'model.layers.0.self_attn.k_norm.weight'"),
        "{e}"
    );
}

#[test]
fn wrong_shape_is_reported() {
    let e = load_err(|m, _| {
        m.insert(
            "model.norm.weight".into(),
            Array::ones::<f32>(&[100]).unwrap(),
        );
    });
    assert!(
        e.contains("'model.norm.weight' has shape [100], expected [128]"),
        "{e}"
    );
}

#[test]
fn bad_config_is_reported() {
    let e = load_err(|_, c| {
        c.as_object_mut().unwrap().remove("hidden_size");
    });
    assert!(e.contains("missing field 'hidden_size'"), "{e}");
    let e = load_err(|_, c| c["model_type"] = json!("llama"));
    assert!(e.contains("unsupported model_type 'llama'"), "{e}");
    let e = load_err(|_, c| c["num_experts_per_tok"] = json!(99));
    assert!(e.contains("num_experts_per_tok 99"), "{e}");
    let e = load_err(|_, c| c["quantization"]["mode"] = json!("int3"));
    assert!(e.contains("unknown quantization mode 'int3'"), "{e}");
    // Wrong bits in the config: the packed shapes no longer match.
    let e = load_err(|_, c| {
        c["quantization"]["bits"] = json!(8);
        c["quantization_config"]["bits"] = json!(8);
    });
    assert!(e.contains("has shape"), "{e}");
}

#[test]
fn unreadable_inputs_are_reported() {
    let dir = TempDir::new("empty");
    let e = models::load(&dir.0).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
    std::fs::write(dir.0.join("config.json"), "{ not json").unwrap();
    let e = models::load(&dir.0).unwrap_err().to_string();
    assert!(e.contains("invalid JSON"), "{e}");
    std::fs::write(dir.0.join("config.json"), tiny_config().to_string()).unwrap();
    let e = models::load(&dir.0).unwrap_err().to_string();
    assert!(e.contains("no *.safetensors"), "{e}");
    std::fs::write(dir.0.join("model.safetensors"), b"garbage").unwrap();
    let e = models::load(&dir.0).unwrap_err().to_string();
    assert!(e.contains("not a valid safetensors file"), "{e}");
    let e = models::load(&dir.0.join("nope")).unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
    let e = models::load(&dir.0.join("config.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a directory"), "{e}");
}

#[test]
fn presets_parse_including_real_dims() {
    for p in models::presets() {
        let c =
            models::ModelConfig::from_json(&p.config).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert!(c.quant.is_some(), "{}", p.name);
        assert!(zmlx::models::synthetic::param_count(&c) > 0);
    }
    let q =
        models::ModelConfig::from_json(&models::preset("qwen3-30b-a3b").unwrap().config).unwrap();
    assert_eq!(
        (
            q.hidden_size,
            q.num_layers,
            q.num_experts,
            q.top_k,
            q.moe_intermediate
        ),
        (2048, 48, 128, 8, 768)
    );
    let g = models::ModelConfig::from_json(&models::preset("gpt-oss-20b").unwrap().config).unwrap();
    assert_eq!(
        (
            g.hidden_size,
            g.num_layers,
            g.num_experts,
            g.top_k,
            g.sliding_window
        ),
        (2880, 24, 32, 4, Some(128))
    );
    let lq = g.quant_for("model.layers.3.mlp.experts.down_proj").unwrap();
    assert_eq!((lq.mode, lq.group_size, lq.bits), (QuantMode::Mxfp4, 32, 4));
    let a = models::ModelConfig::from_json(&models::preset("glm-4.5-air").unwrap().config).unwrap();
    assert_eq!(
        (
            a.hidden_size,
            a.num_layers,
            a.n_heads,
            a.n_kv_heads,
            a.num_experts,
            a.top_k,
            a.moe_intermediate
        ),
        (4096, 46, 96, 8, 128, 8, 1408)
    );
    assert_eq!(
        (
            a.intermediate,
            a.shared_intermediate,
            a.head_dim,
            a.rope_dims
        ),
        (10944, Some(1408), 128, 64)
    );
    assert_eq!(a.sparse.iter().filter(|s| !**s).count(), 1);
    assert_eq!(a.vocab_size, 151552);
    assert!(models::preset("nope").is_err());
}

#[test]
fn tokenizer_json_round_trips() {
    let dir = TempDir::new("tok");
    // A minimal word-level tokenizer in the `tokenizers` JSON format.
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hello": 1, "moe": 2, "world": 3}, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.0.join("tokenizer.json"), tok.to_string()).unwrap();
    let t = zmlx::tokenizer::Tokenizer::from_dir(&dir.0)
        .unwrap()
        .expect("tokenizer.json present");
    assert_eq!(t.encode("hello moe world").unwrap(), vec![1, 2, 3]);
    assert_eq!(t.encode("hello zzz").unwrap(), vec![1, 0]);
    assert_eq!(t.decode(&[3, 1]).unwrap(), "world hello");
    let empty = TempDir::new("notok");
    assert!(zmlx::tokenizer::Tokenizer::from_dir(&empty.0)
        .unwrap()
        .is_none());
    std::fs::write(empty.0.join("tokenizer.json"), "{}").unwrap();
    assert!(zmlx::tokenizer::Tokenizer::from_dir(&empty.0).is_err());
    assert_eq!(
        zmlx::tokenizer::parse_token_list("1, 2 3").unwrap(),
        vec![1, 2, 3]
    );
    assert!(zmlx::tokenizer::parse_token_list("1,x").is_err());
}
