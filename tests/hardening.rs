//! Hostile inputs that used to crash (a signal, an abort, a panic) and must be errors: configs with zero or
//! absurd sizes, zero-size quantized weights, C API array shapes whose byte size overflows. (The hang under
//! repeated bad indices is tests/fused_ops.rs `bad_indices_never_wedge_the_stream`.)

mod common;

use common::ffi::last_error;
use mlx_sys as sys;
use zmlx::mlx_rs::{Array, Dtype};
use zmlx::models::{self, qwen3_moe};
use zmlx::quant::{quantize, quantized_matmul, QuantMode, QuantizedWeight};

fn tiny_config() -> serde_json::Value {
    qwen3_moe::config_json(64, 2, 4, 2, 16, 4, 2, 32, 128, "bfloat16")
}

fn config_error(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut c = tiny_config();
    edit(&mut c);
    match models::ModelConfig::from_json(&c) {
        Ok(_) => panic!("config accepted: {c}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_sizes_are_checked_before_anything_is_allocated() {
    assert!(models::ModelConfig::from_json(&tiny_config()).is_ok());
    // A division by zero before.
    let e = config_error(|c| c["num_key_value_heads"] = 0.into());
    assert!(e.contains("num_key_value_heads"), "{e}");
    // Zero-size dense MLP weights (SIGFPE in the quantized matmul before).
    let e = config_error(|c| {
        c["intermediate_size"] = 0.into();
        c["mlp_only_layers"] = serde_json::json!([0]);
    });
    assert!(e.contains("intermediate_size"), "{e}");
    // A 608 GB allocation before any tensor was read.
    let e = config_error(|c| c["num_hidden_layers"] = 1_000_000_000.into());
    assert!(e.contains("num_hidden_layers") && e.contains("4096"), "{e}");
    for (field, value) in [
        ("hidden_size", 1 << 30),
        ("vocab_size", 1 << 30),
        ("num_attention_heads", 1 << 20),
        ("head_dim", 0),
    ] {
        let e = config_error(|c| c[field] = value.into());
        assert!(e.contains(field), "{field}: {e}");
    }
}

#[test]
fn zero_size_quantized_weights_are_errors() {
    let w = Array::zeros::<f32>(&[0, 64]).unwrap();
    let e = quantize(&w, QuantMode::Affine, Some(64), Some(4)).unwrap_err();
    assert!(e.to_string().contains("non-empty"), "{e}");
    let packed = Array::zeros::<u32>(&[0, 8]).unwrap();
    let scales = Array::zeros::<f32>(&[0, 1]).unwrap();
    let biases = Array::zeros::<f32>(&[0, 1]).unwrap();
    let e =
        QuantizedWeight::new(packed, scales, Some(biases), QuantMode::Affine, 64, 4).unwrap_err();
    assert!(e.to_string().contains("zero dimension"), "{e}");
    // A weight assembled field by field reaches quantized_matmul's own check.
    let ok = quantize(
        &Array::ones::<f32>(&[4, 64]).unwrap(),
        QuantMode::Affine,
        Some(64),
        Some(4),
    )
    .unwrap();
    let empty = QuantizedWeight {
        w: Array::zeros::<u32>(&[0, 8]).unwrap(),
        scales: Array::zeros::<f32>(&[0, 1]).unwrap(),
        biases: Some(Array::zeros::<f32>(&[0, 1]).unwrap()),
        ..ok
    };
    let x = Array::ones::<f32>(&[1, 64])
        .unwrap()
        .as_dtype(Dtype::Float32)
        .unwrap();
    let e = quantized_matmul(&x, &empty, true).unwrap_err();
    assert!(e.to_string().contains("zero dimension"), "{e}");
}

#[test]
fn c_api_array_shapes_that_overflow_or_are_negative_are_errors() {
    let data = [1.0f32; 4];
    // 2^64 elements: the element count overflows (it wrapped to 0 before: a 0-byte array of that shape).
    let huge = [65536, 65536, 65536, 65536];
    let a = unsafe {
        sys::mlx_array_new_data(
            data.as_ptr().cast(),
            huge.as_ptr(),
            4,
            sys::mlx_dtype__MLX_FLOAT32,
        )
    };
    assert!(a.ctx.is_null(), "an overflowing shape was accepted");
    assert!(last_error().contains("overflows"), "{}", last_error());
    // 2^62 elements of 4 bytes: the byte size overflows.
    let big = [1 << 30, 1 << 30, 4];
    let a = unsafe {
        sys::mlx_array_new_data(
            data.as_ptr().cast(),
            big.as_ptr(),
            3,
            sys::mlx_dtype__MLX_FLOAT32,
        )
    };
    assert!(a.ctx.is_null());
    assert!(last_error().contains("overflows"), "{}", last_error());
    // Managed data with a negative dimension.
    let mut owned = vec![1.0f32; 4];
    let neg = [2, -2];
    let a = unsafe {
        sys::mlx_array_new_data_managed(
            owned.as_mut_ptr().cast(),
            neg.as_ptr(),
            2,
            sys::mlx_dtype__MLX_FLOAT32,
            None,
        )
    };
    assert!(a.ctx.is_null(), "a negative dimension was accepted");
    assert!(last_error().contains("negative"), "{}", last_error());
    // A good shape still works.
    let ok = [2, 2];
    let a = unsafe {
        sys::mlx_array_new_data(
            data.as_ptr().cast(),
            ok.as_ptr(),
            2,
            sys::mlx_dtype__MLX_FLOAT32,
        )
    };
    assert!(!a.ctx.is_null(), "{}", last_error());
    unsafe { sys::mlx_array_free(a) };
}

fn mini_model() -> models::Model {
    let preset = models::preset("qwen3-mini").unwrap();
    models::synthesize(&preset.config, 5, &mut |_, _, _| {})
        .unwrap()
        .0
}

/// A prompt longer than one prefill chunk goes through in chunks and gives the logits one pass gives.
#[test]
fn long_prompts_prefill_in_chunks() {
    use zmlx::generate::{prefill, random_tokens, PREFILL_CHUNK};
    use zmlx::moe::MoePath;
    let model = mini_model();
    let prompt = random_tokens(PREFILL_CHUNK + 300, model.config.vocab_size, 9);
    let chunked = prefill(&model, &prompt, &mut model.new_cache(), MoePath::Fused).unwrap();
    let ids = Array::from_slice(&prompt, &[1, prompt.len() as i32]);
    let whole = model
        .forward(&ids, &mut model.new_cache(), MoePath::Fused)
        .unwrap();
    let a = zmlx::generate::last_logits(&chunked).unwrap();
    let b = zmlx::generate::last_logits(&whole).unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        err <= 1e-4 * scale,
        "chunked prefill differs: {err} of {scale}"
    );
}

#[test]
fn prompts_beyond_max_position_embeddings_are_errors() {
    use zmlx::generate::{generate, Sampler};
    use zmlx::moe::MoePath;
    let mut model = mini_model();
    model.config.raw["max_position_embeddings"] = 64.into();
    let prompt = zmlx::generate::random_tokens(60, model.config.vocab_size, 1);
    let e = generate(
        &model,
        &prompt,
        8,
        Sampler::Greedy,
        MoePath::Fused,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("max_position_embeddings (64)"),
        "{e}"
    );
    assert!(generate(
        &model,
        &prompt,
        4,
        Sampler::Greedy,
        MoePath::Fused,
        &mut |_| {}
    )
    .is_ok());
}

#[test]
fn checkpoints_are_never_written_over_existing_files() {
    let dir = std::env::temp_dir().join(format!("zmlx-hardening-save-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let preset = models::preset("qwen3-mini").unwrap();
    let (_, tensors) = models::synthesize(&preset.config, 5, &mut |_, _, _| {}).unwrap();
    models::save(&dir, &preset.config, &tensors).unwrap();
    let e = models::save(&dir, &preset.config, &tensors).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    // The first checkpoint is intact.
    assert!(models::load(&dir).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes qwen3-mini with `edit` applied to its tensors (and config) and returns load's error.
fn load_error(
    tag: &str,
    edit: impl FnOnce(&mut zmlx::checkpoint::Tensors, &mut serde_json::Value),
) -> String {
    let dir = std::env::temp_dir().join(format!("zmlx-hardening-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = models::preset("qwen3-mini").unwrap().config;
    let (_, mut tensors) = models::synthesize(&config, 5, &mut |_, _, _| {}).unwrap();
    edit(&mut tensors, &mut config);
    models::save(&dir, &config, &tensors).unwrap();
    let e = match models::load(&dir) {
        Ok(_) => panic!("{tag}: the checkpoint loaded"),
        Err(e) => e.to_string(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    e
}

#[test]
fn checkpoints_with_tensors_the_model_ignores_or_of_the_wrong_dtype_are_errors() {
    // lm_head.weight next to tied embeddings: decoding would silently ignore it.
    let e = load_error("tied", |t, c| {
        c["tie_word_embeddings"] = true.into();
        let emb = t.sorted()["model.embed_tokens.weight"].clone();
        t.insert("lm_head.weight", emb);
    });
    assert!(
        e.contains("lm_head.weight") && e.contains("tie_word_embeddings"),
        "{e}"
    );
    let e = load_error("extra", |t, _| {
        t.insert("model.layers.0.mystery", Array::ones::<f32>(&[4]).unwrap());
    });
    assert!(e.contains("model.layers.0.mystery"), "{e}");
    // Integer norm weights.
    let e = load_error("norm", |t, _| {
        let n = t.sorted()["model.norm.weight"].shape().to_vec();
        t.insert("model.norm.weight", Array::ones::<i32>(&n).unwrap());
    });
    assert!(
        e.contains("model.norm.weight") && e.contains("float"),
        "{e}"
    );
    // Integer scales of a quantized layer.
    let e = load_error("scales", |t, _| {
        let name = "model.layers.0.self_attn.q_proj.scales";
        let s = t.sorted()[name].shape().to_vec();
        t.insert(name, Array::ones::<i32>(&s).unwrap());
    });
    assert!(e.contains("scales") && e.contains("float"), "{e}");
}

#[test]
fn new_c_functions_reject_bad_arguments() {
    unsafe {
        let mut s = sys::mlx_string_new();
        assert_ne!(zmlx::ffi::mlx_moe_gpu_device_name(&mut s, -1), 0);
        assert!(last_error().contains("non-negative"), "{}", last_error());
        // No GPU on a CPU build (or index past the last GPU): the empty name, not an error.
        assert_eq!(zmlx::ffi::mlx_moe_gpu_device_name(&mut s, 1 << 20), 0);
        assert_eq!(
            std::ffi::CStr::from_ptr(sys::mlx_string_data(s)).to_bytes(),
            b""
        );
        sys::mlx_string_free(s);
        assert_ne!(
            zmlx::ffi::mlx_moe_gpu_device_name(std::ptr::null_mut(), 0),
            0
        );
        assert_ne!(
            zmlx::ffi::mlx_moe_cuda_check_source(std::ptr::null_mut()),
            0
        );
        assert_ne!(zmlx::ffi::mlx_moe_gpu_coverage(std::ptr::null_mut()), 0);
        let mut p: *const std::os::raw::c_char = std::ptr::null();
        assert_eq!(zmlx::ffi::mlx_moe_gpu_coverage(&mut p), 0);
        assert!(!p.is_null());
        // The quantized linear layer: null result, empty inputs, a bad mode.
        let none = sys::mlx_array {
            ctx: std::ptr::null_mut(),
        };
        let st = sys::mlx_default_cpu_stream_new();
        let oi = sys::mlx_optional_int {
            value: 0,
            has_value: false,
        };
        assert_ne!(
            zmlx::ffi::mlx_fused_quantized_linear(
                std::ptr::null_mut(),
                none,
                none,
                none,
                none,
                oi,
                oi,
                c"affine".as_ptr(),
                none,
                st
            ),
            0
        );
        let mut r = sys::mlx_array_new();
        assert_ne!(
            zmlx::ffi::mlx_fused_quantized_linear(
                &mut r,
                none,
                none,
                none,
                none,
                oi,
                oi,
                std::ptr::null(),
                none,
                st
            ),
            0
        );
        // The switch-GLU layer op: null result, empty inputs, a null mode.
        let of = sys::mlx_optional_float {
            value: 0.0,
            has_value: false,
        };
        for (res, mode) in [
            (std::ptr::null_mut(), c"affine".as_ptr()),
            (&mut r as *mut sys::mlx_array, c"affine".as_ptr()),
            (&mut r as *mut sys::mlx_array, std::ptr::null()),
        ] {
            assert_ne!(
                zmlx::ffi::mlx_switch_glu_combine(
                    res,
                    none,
                    none,
                    none,
                    none,
                    none,
                    none,
                    none,
                    none,
                    none,
                    none,
                    none,
                    none,
                    oi,
                    oi,
                    mode,
                    std::ptr::null(),
                    of,
                    of,
                    none,
                    none,
                    none,
                    st
                ),
                0
            );
        }
        sys::mlx_array_free(r);
        sys::mlx_stream_free(st);
    }
}

/// Float fields that are out of their domain, or leave float32's range when the model reads them as
/// float32 (1e39 becomes infinity), and integer fields of the wrong sign, size or kind: errors that name
/// the field, not a model that computes NaN or silently reads another value (an `eos_token_id` of
/// 2^32 + 5 was token 5; a negative or fractional `max_position_embeddings` turned the check off; a
/// `decoder_sparse_step` of 0, an error in mlx-lm, made every layer sparse).
#[test]
fn config_numbers_out_of_their_domain_are_errors() {
    use serde_json::json;
    let cases = [
        ("rms_norm_eps", json!(-1e-6)),
        ("rms_norm_eps", json!(1e39)),
        ("rope_theta", json!(0)),
        ("rope_theta", json!(-10000.0)),
        ("rope_theta", json!(1e39)),
        ("decoder_sparse_step", json!(0)),
        ("max_position_embeddings", json!(-1)),
        ("max_position_embeddings", json!(0)),
        ("max_position_embeddings", json!(1.5)),
        ("max_position_embeddings", json!("4096")),
        ("eos_token_id", json!(-1)),
        ("eos_token_id", json!((1u64 << 32) + 5)),
        ("eos_token_id", json!([1, -2])),
        ("eos_token_id", json!("2")),
        ("eos_token_id", json!(2.5)),
    ];
    for (field, value) in cases {
        let e = config_error(|c| c[field] = value.clone());
        assert!(e.contains(field), "{field} = {value}: {e}");
    }
    // gpt-oss reads rope_scaling; GLM-4 routed_scaling_factor.
    let gpt = models::preset("gpt-oss-tiny").unwrap().config;
    let glm = models::preset("glm4-tiny").unwrap().config;
    for (base, field, value) in [
        (
            &gpt,
            "rope_scaling",
            json!({"type": "linear", "factor": 1e-39}),
        ),
        (&glm, "routed_scaling_factor", json!(1e39)),
    ] {
        let mut c = base.clone();
        c[field] = value.clone();
        match models::ModelConfig::from_json(&c) {
            Ok(_) => panic!("{field} = {value} accepted"),
            Err(e) => assert!(e.to_string().contains(field), "{field} = {value}: {e}"),
        }
    }
    // A negative decoder_sparse_step selects what its absolute value selects, as Python's modulo does
    // in mlx-lm.
    let sparse = |step: i64| {
        let mut c = tiny_config();
        c["num_hidden_layers"] = 6.into();
        c["decoder_sparse_step"] = step.into();
        models::ModelConfig::from_json(&c).unwrap().sparse
    };
    assert_eq!(sparse(-2), sparse(2));
    assert_eq!(sparse(2), vec![false, true, false, true, false, true]);
    assert_eq!(sparse(i64::from(i32::MIN)), vec![false; 6]);
    // Edges that are in the domain stay accepted: eps 0, a list of ids, null fields.
    for (field, value) in [
        ("rms_norm_eps", json!(0.0)),
        ("eos_token_id", json!([0, 1, 4294967295u64])),
        ("eos_token_id", serde_json::Value::Null),
        ("max_position_embeddings", serde_json::Value::Null),
        ("max_position_embeddings", json!(1)),
    ] {
        let mut c = tiny_config();
        c[field] = value.clone();
        if let Err(e) = models::ModelConfig::from_json(&c) {
            panic!("{field} = {value} rejected: {e}");
        }
    }
}

/// Sizes computed from other fields are checked products: GLM-4's shared experts' hidden size
/// (n_shared_experts x moe_intermediate_size) overflowed i32, a panic in debug builds and a wrapped size
/// in release builds (found by fuzz_model_configs).
#[test]
fn config_products_are_checked() {
    let mut c = models::preset("glm4-tiny").unwrap().config;
    c["n_shared_experts"] = i32::MAX.into();
    let e = models::ModelConfig::from_json(&c).unwrap_err().to_string();
    assert!(e.contains("n_shared_experts"), "{e}");
}

/// A synthetic model that cannot fit in memory is refused before MLX allocates: MLX's CPU allocator
/// hands out a null buffer when the OS refuses memory and its kernels write through it (a gpt-oss config
/// with 44,051 experts crashed `synthesize` with SIGSEGV; found by fuzz_model_configs).
#[test]
fn synthetic_models_too_large_for_memory_are_errors() {
    let mut c = models::preset("gpt-oss-tiny").unwrap().config;
    c["num_local_experts"] = 65536.into();
    c["intermediate_size"] = (1 << 20).into();
    c["hidden_size"] = 16384.into();
    let e = match models::synthesize(&c, 1, &mut |_, _, _| {}) {
        Ok(_) => panic!("a model of 2^47 weights was built"),
        Err(e) => e.to_string(),
    };
    if cfg!(target_os = "linux") {
        assert!(e.contains("more than this machine's"), "{e}");
    }
}

/// `[1, 1, V]` logits with the given values.
fn logits(v: &[f32]) -> Array {
    Array::from_slice(v, &[1, 1, v.len() as i32])
}

/// Temperatures at the edges of the float range: a subnormal one is the greedy choice (logits / t
/// overflowed to infinities and NaN before, and the draw was arbitrary), the largest float a near-uniform
/// draw, and zero, negative, infinite and NaN ones are errors.
#[test]
fn sampling_temperatures_at_the_edges() {
    use zmlx::generate::{next_token, Sampler};
    let v: Vec<f32> = (0..64)
        .map(|i| ((i * 37) % 64) as f32 * 0.25 - 8.0)
        .collect();
    let best = zmlx::generate::argmax(&v).unwrap() as u32;
    let l = logits(&v);
    for t in [f32::from_bits(1), 1e-30, f32::MIN_POSITIVE, 1e-6] {
        for step in 0..20 {
            let s = Sampler::Temperature {
                temperature: t,
                seed: 7,
            };
            assert_eq!(next_token(&l, s, step).unwrap(), best, "temperature {t:e}");
        }
    }
    // The largest temperature: every token about equally likely.
    let mut seen = std::collections::BTreeSet::new();
    for step in 0..400 {
        let s = Sampler::Temperature {
            temperature: f32::MAX,
            seed: 11,
        };
        seen.insert(next_token(&l, s, step).unwrap());
    }
    assert!(
        seen.len() > 48,
        "{} of 64 tokens drawn in 400 draws",
        seen.len()
    );
    // A normal temperature draws in proportion to softmax(logits / t) (a chi-square bound at p ~ 1e-6).
    let t = 2.0f32;
    let small: Vec<f32> = vec![0.0, 1.0, 2.0, -1.0];
    let p: Vec<f64> = {
        let e: Vec<f64> = small
            .iter()
            .map(|&x| (f64::from(x) / f64::from(t)).exp())
            .collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    };
    let n = 4000;
    let mut counts = [0f64; 4];
    for step in 0..n {
        let s = Sampler::Temperature {
            temperature: t,
            seed: 3,
        };
        counts[next_token(&logits(&small), s, step).unwrap() as usize] += 1.0;
    }
    let chi2: f64 = (0..4)
        .map(|i| (counts[i] - n as f64 * p[i]).powi(2) / (n as f64 * p[i]))
        .sum();
    assert!(chi2 < 30.0, "counts {counts:?} for p {p:?}: chi2 {chi2}");
    for t in [0.0, -1.0, f32::INFINITY, f32::NAN] {
        let s = Sampler::Temperature {
            temperature: t,
            seed: 1,
        };
        let e = next_token(&l, s, 0).unwrap_err().to_string();
        assert!(e.contains("temperature"), "{t}: {e}");
    }
}

/// Logits that are NaN or +infinity (activations that overflowed) give no token: an error for both
/// samplers (greedy took the first finite logit when one was +infinity). -infinity is a token that can
/// never be chosen.
#[test]
fn non_finite_logits_are_errors() {
    use zmlx::generate::{next_token, Sampler};
    let samplers = [
        Sampler::Greedy,
        Sampler::Temperature {
            temperature: 0.7,
            seed: 2,
        },
    ];
    for s in samplers {
        for bad in [
            vec![0.5, f32::INFINITY, 1.0, 2.0],
            vec![0.5, f32::NAN, 1.0, 2.0],
            vec![f32::NEG_INFINITY; 4],
        ] {
            let e = next_token(&logits(&bad), s, 0).unwrap_err().to_string();
            assert!(e.contains("not finite"), "{s:?} {bad:?}: {e}");
        }
        // Masked tokens are never chosen.
        let masked = [f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY, 2.5];
        for step in 0..50 {
            let tok = next_token(&logits(&masked), s, step).unwrap();
            assert!(tok == 1 || tok == 3, "{s:?} chose masked token {tok}");
        }
    }
}

/// A missing path says "does not exist", and an OS error reaches the user once (the CLI printed
/// "config.json: No such file or directory (os error 2): No such file or directory (os error 2)", and
/// "not a directory" for a folder that does not exist).
#[test]
fn missing_paths_say_does_not_exist_once() {
    let base = std::env::temp_dir().join(format!("zmlx-hardening-missing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("empty")).unwrap();
    // The library: the error and its sources, as the CLI prints them.
    let chain = |e: &dyn std::error::Error| {
        let mut parts = vec![e.to_string()];
        let mut s = e.source();
        while let Some(x) = s {
            parts.push(x.to_string());
            s = x.source();
        }
        parts.join(": ")
    };
    for (dir, want) in [
        (base.join("nowhere"), "nowhere: does not exist"),
        (base.join("empty"), "config.json: does not exist"),
    ] {
        let e = chain(&models::load(&dir).unwrap_err());
        assert!(e.contains(want), "{e}");
        assert_eq!(e.matches("exist").count(), 1, "{e}");
        assert!(!e.contains("os error"), "{e}");
    }
    // The CLI.
    let zmlx = env!("CARGO_BIN_EXE_zmlx");
    let missing_json = base.join("missing.json");
    for (args, want) in [
        (
            vec![
                "generate",
                "--model",
                base.join("nowhere").to_str().unwrap(),
            ],
            "nowhere: does not exist",
        ),
        (
            vec!["generate", "--model", base.join("empty").to_str().unwrap()],
            "config.json: does not exist",
        ),
        (
            vec!["generate", "--synthetic", missing_json.to_str().unwrap()],
            "missing.json: does not exist",
        ),
    ] {
        let out = std::process::Command::new(zmlx)
            .args(&args)
            .args(["--device", "cpu"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.matches("exist").count(), 1, "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&base);
}
