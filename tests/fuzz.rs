//! Randomized hostile inputs, each checked to end in a value or an error — never a panic, an abort, a
//! signal or a hang: mutated model configs (parsed, and built when small), mutated checkpoints (config.json
//! and safetensors bytes, loaded), and random fused-op arguments (shapes, dtypes, modes, indices in and out
//! of range) on the CPU. A config that is accepted must also be one the model can compute with (float32
//! fields finite and in their domain).
//!
//! Each harness first replays its corpus in `tests/fuzz-corpus/` (inputs that reached distinct errors or
//! once failed; each with the error it must still give), then runs random cases for `ZMLX_FUZZ_SECS`
//! (default 3). `ZMLX_FUZZ_SEED` replays a run (each harness prints its seed), `ZMLX_FUZZ_CASE` one case
//! of the fused-op harness; `ZMLX_FUZZ_NEW_CORPUS=DIR` writes the first case of each error class the
//! corpus does not reach into DIR (files named as the corpus's), to pick corpus entries from. A crash kills the test process, so CI sees
//! it as a failure.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::ffi::{case_seed, corpus_seeds, error_class, fuzz_budget, fuzz_seed, Rng};
use serde_json::{json, Value};
use zmlx::mlx_rs::{Array, Dtype};
use zmlx::models::{self, qwen3_moe, ModelConfig, RopeScaling};
use zmlx::moe::{Activation, RouterKind};
use zmlx::quant::{quantize, QuantMode};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus")
}

/// A corpus entry's outcome: "ok" or a piece of the error message.
fn check_outcome(what: &str, expect: &str, got: Result<(), String>) {
    match (expect, got) {
        ("ok", Ok(())) => {}
        ("ok", Err(e)) => panic!("{what}: rejected ({e}), expected to load"),
        (want, Ok(())) => panic!("{what}: accepted, expected an error with '{want}'"),
        (want, Err(e)) => assert!(e.contains(want), "{what}: '{e}' lacks '{want}'"),
    }
}

/// Numbers at the edges (of i32, u32, f32 and f64, zero, negative, fractional, subnormal), wrong types.
fn hostile(r: &mut Rng) -> Value {
    match r.below(20) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(i64::MAX),
        3 => json!(i32::MAX),
        4 => json!(1u64 << 33),
        5 => json!(r.below(70_000)),
        6 => json!(1.5),
        7 => json!(f64::MAX),
        8 => json!("7"),
        9 => Value::Null,
        10 => json!([1, 2]),
        11 => json!({}),
        12 => json!(1e39),
        13 => json!(-1e-6),
        14 => json!(1e-320),
        15 => json!(-0.0),
        16 => json!((1u64 << 32) + 5),
        17 => json!([1, -2]),
        18 => json!(i32::MIN),
        _ => json!(r.below(9)),
    }
}

/// Fields a config may have beyond the ones its base names.
const EXTRA_KEYS: &[&str] = &[
    "eos_token_id",
    "max_position_embeddings",
    "decoder_sparse_step",
    "rope_scaling",
    "rms_norm_eps",
    "rope_theta",
    "routed_scaling_factor",
    "partial_rotary_factor",
    "sliding_window",
    "n_group",
    "topk_group",
    "first_k_dense_replace",
    "head_dim",
    "quantization",
    "layer_types",
    "mlp_only_layers",
];

fn mutate(c: &mut Value, r: &mut Rng) {
    let keys: Vec<String> = c
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    for _ in 0..=r.below(3) {
        let k = if r.one_in(3) {
            r.pick(EXTRA_KEYS).to_string()
        } else {
            r.pick(&keys).clone()
        };
        match r.below(8) {
            0 => {
                if let Some(o) = c.as_object_mut() {
                    o.remove(&k);
                }
            }
            // Inside a nested block (rope_scaling, quantization) or a list.
            1 if c[&k].is_object() || c[&k].is_array() => {
                let inner = &mut c[&k];
                let ik = *r.pick(&["factor", "type", "group_size", "bits", "mode", "beta_fast"]);
                if inner.is_object() {
                    inner[ik] = hostile(r);
                } else if let Some(a) = inner.as_array_mut() {
                    a.push(hostile(r));
                }
            }
            2 if k == "rope_scaling" => {
                c[&k] = json!({"type": *r.pick(&["linear", "yarn", "default", "ntk"]), "factor": hostile(r)});
            }
            _ => c[&k] = hostile(r),
        }
    }
}

/// What an accepted config must satisfy for the model to compute with it.
fn check_accepted(cfg: &ModelConfig, c: &Value) {
    let ok_f32 = |x: f32| x.is_finite();
    assert!(
        ok_f32(cfg.rms_norm_eps) && cfg.rms_norm_eps >= 0.0,
        "rms_norm_eps {} accepted: {c}",
        cfg.rms_norm_eps
    );
    assert!(
        ok_f32(cfg.rope_theta) && cfg.rope_theta > 0.0,
        "rope_theta {} accepted: {c}",
        cfg.rope_theta
    );
    if let RopeScaling::Plain { scale } = cfg.rope_scaling {
        assert!(
            ok_f32(scale) && scale > 0.0,
            "RoPE scale {scale} accepted: {c}"
        );
    }
    if let RouterKind::SigmoidTopK { scaling, .. } = cfg.routing {
        assert!(
            ok_f32(scaling),
            "routed_scaling_factor {scaling} accepted: {c}"
        );
    }
    assert!(
        cfg.max_position_embeddings().is_ok() && cfg.eos_token_ids().is_ok(),
        "{c}"
    );
}

fn config_bases() -> Vec<Value> {
    let mut v = vec![qwen3_moe::config_json(
        64, 2, 4, 2, 16, 4, 2, 32, 128, "bfloat16",
    )];
    for p in ["gpt-oss-tiny", "qwen3-mini", "glm4-tiny"] {
        v.push(models::preset(p).unwrap().config);
    }
    v
}

/// The entries of a JSON-lines corpus file.
fn corpus_lines(name: &str) -> Vec<Value> {
    let p = corpus_dir().join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", p.display())))
        .collect()
}

/// Appends candidate corpus entries (with `ZMLX_FUZZ_NEW_CORPUS`).
fn write_candidates(name: &str, entries: &[Value]) {
    let Some(d) = std::env::var_os("ZMLX_FUZZ_NEW_CORPUS").map(PathBuf::from) else {
        return;
    };
    std::fs::create_dir_all(&d).unwrap();
    let text: String = entries.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(d.join(name), text).unwrap();
}

#[test]
fn fuzz_model_configs() {
    // The corpus: {"expect": "ok" | a piece of the error, "config": {...}} per line.
    let corpus = corpus_lines("configs.jsonl");
    let mut known = std::collections::BTreeSet::new();
    for (i, entry) in corpus.iter().enumerate() {
        let expect = entry["expect"].as_str().expect("an 'expect' string");
        let got = ModelConfig::from_json(&entry["config"]).map_err(|e| e.to_string());
        match &got {
            Ok(cfg) => check_accepted(cfg, &entry["config"]),
            Err(e) => {
                known.insert(error_class(e));
            }
        }
        check_outcome(
            &format!("configs.jsonl line {}", i + 1),
            expect,
            got.map(|_| ()),
        );
    }

    let s = fuzz_seed("fuzz_model_configs", 0xc0f1);
    let mut r = Rng(s);
    let bases = config_bases();
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    let mut candidates = vec![];
    let t0 = Instant::now();
    let (mut n, mut ok, mut built, mut refused) = (0, 0, 0, 0);
    while t0.elapsed() < fuzz_budget() || n < 20 {
        let mut c = r.pick(&bases).clone();
        mutate(&mut c, &mut r);
        n += 1;
        match ModelConfig::from_json(&c) {
            Ok(cfg) => {
                ok += 1;
                check_accepted(&cfg, &c);
                // Build some of the ones that stay small (at most 2M weights); the ones that cannot
                // fit in any memory must be refused before anything is allocated.
                let spec = cfg.schema();
                let elements = spec
                    .params()
                    .iter()
                    .fold(0u64, |s, p| s.saturating_add(p.numel()));
                if std::env::var("ZMLX_FUZZ_VERBOSE").is_ok() {
                    // The last config printed before a crash is the one that crashed.
                    eprintln!("building {c}");
                }
                if r.below(4) == 0 && elements < 2_000_000 {
                    if models::synthesize(&c, 1, &mut |_, _, _| {}).is_ok() {
                        built += 1;
                    }
                } else if spec.nbytes(cfg.dtype) > 1 << 42 {
                    let e = models::synthesize(&c, 1, &mut |_, _, _| {}).err();
                    assert!(
                        e.as_ref().is_some_and(|e| e.to_string().contains("memory")),
                        "a {} TB model was not refused: {e:?}: {c}",
                        spec.nbytes(cfg.dtype) >> 40
                    );
                    refused += 1;
                }
            }
            Err(e) => {
                let msg = e.to_string();
                let class = error_class(&msg);
                if !classes.contains_key(&class) && !known.contains(&class) {
                    candidates.push(json!({"expect": msg, "config": c}));
                }
                *classes.entry(class).or_default() += 1;
            }
        }
    }
    write_candidates("configs.jsonl", &candidates);
    eprintln!(
        "fuzz_model_configs: {} from the corpus, {n} random configs: {ok} accepted ({built} built, {refused} refused as too large for memory), {} rejected in {} error classes",
        corpus.len(),
        n - ok,
        classes.len()
    );
}

/// How a checkpoint differs from the synthesized qwen3-mini (seed 3): its config (when mutated), bytes
/// of its safetensors file replaced, the file cut short, the header's length field rewritten. A corpus
/// entry is such a record with the error it gives.
#[derive(Default)]
struct Mutation {
    config: Option<Value>,
    bytes: Vec<(usize, u8)>,
    truncate: Option<usize>,
    header_len: Option<u64>,
}

impl Mutation {
    fn random(r: &mut Rng, base: &Value, file_len: usize, hdr_end: usize) -> Mutation {
        let mut m = Mutation::default();
        if r.one_in(4) {
            let mut c = base.clone();
            mutate(&mut c, r);
            m.config = Some(c);
        }
        match r.below(5) {
            // Bytes of the header (JSON: offsets, shapes, dtypes) or anywhere.
            0 | 1 => {
                let span = if r.one_in(2) { hdr_end } else { file_len };
                for _ in 0..=r.below(8) {
                    m.bytes
                        .push((r.below(span as u64) as usize, r.next() as u8));
                }
            }
            2 => m.truncate = Some(r.below(file_len as u64) as usize),
            3 => m.header_len = Some(r.next() >> r.below(64)),
            // The config alone, if anything.
            _ => {}
        }
        m
    }

    fn to_json(&self, expect: &str) -> Value {
        json!({
            "expect": expect,
            "config": self.config,
            "bytes": self.bytes,
            "truncate": self.truncate,
            "header_len": self.header_len,
        })
    }

    fn from_json(v: &Value) -> Mutation {
        Mutation {
            config: v.get("config").filter(|c| !c.is_null()).cloned(),
            bytes: serde_json::from_value(v["bytes"].clone())
                .expect("bytes: [[offset, byte], ...]"),
            truncate: v["truncate"].as_u64().map(|x| x as usize),
            header_len: v["header_len"].as_u64(),
        }
    }

    /// Writes the mutated checkpoint into `dir`.
    fn write(&self, dir: &Path, base_config: &Value, good: &[u8]) {
        let mut bytes = good.to_vec();
        for &(i, b) in &self.bytes {
            if let Some(x) = bytes.get_mut(i) {
                *x = b;
            }
        }
        if let Some(n) = self.header_len {
            bytes[..8].copy_from_slice(&n.to_le_bytes());
        }
        if let Some(n) = self.truncate {
            bytes.truncate(n);
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let config = self.config.as_ref().unwrap_or(base_config);
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    }
}

#[test]
fn fuzz_checkpoint_files() {
    let dir = std::env::temp_dir().join(format!("zmlx-fuzz-ckpt-{}", std::process::id()));
    let dir_s = dir.display().to_string();
    // Messages name the checkpoint's folder: "DIR" in the corpus.
    let load = |dir: &Path| models::load(dir).map_err(|e| e.to_string().replace(&dir_s, "DIR"));
    let preset = models::preset("qwen3-mini").unwrap();
    let (_, tensors) = models::synthesize(&preset.config, 3, &mut |_, _, _| {}).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    models::save(&dir, &preset.config, &tensors).unwrap();
    let good = std::fs::read(dir.join("model.safetensors")).unwrap();
    let hdr_end = (8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize).min(good.len());

    // The corpus: a mutation record and its expected error per line.
    let corpus = corpus_lines("checkpoints.jsonl");
    let mut known = std::collections::BTreeSet::new();
    for (i, entry) in corpus.iter().enumerate() {
        Mutation::from_json(entry).write(&dir, &preset.config, &good);
        let got = load(&dir);
        match &got {
            Ok(m) => check_accepted(&m.config, &entry["config"]),
            Err(e) => {
                known.insert(error_class(e));
            }
        }
        check_outcome(
            &format!("checkpoints.jsonl line {}", i + 1),
            entry["expect"].as_str().expect("expect"),
            got.map(|_| ()),
        );
    }

    let s = fuzz_seed("fuzz_checkpoint_files", 0xc4ec);
    let mut r = Rng(s);
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    let mut candidates = vec![];
    let t0 = Instant::now();
    let (mut n, mut loaded) = (0, 0);
    while t0.elapsed() < fuzz_budget() || n < 20 {
        let m = Mutation::random(&mut r, &preset.config, good.len(), hdr_end);
        m.write(&dir, &preset.config, &good);
        match load(&dir) {
            Ok(model) => {
                loaded += 1;
                check_accepted(&model.config, m.config.as_ref().unwrap_or(&preset.config));
            }
            Err(msg) => {
                let class = error_class(&msg);
                if !classes.contains_key(&class) && !known.contains(&class) {
                    candidates.push(m.to_json(&msg));
                }
                *classes.entry(class).or_default() += 1;
            }
        }
        n += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    write_candidates("checkpoints.jsonl", &candidates);
    eprintln!(
        "fuzz_checkpoint_files: {} from the corpus, {n} mutated checkpoints: {loaded} loaded, {} rejected in {} error classes",
        corpus.len(),
        n - loaded,
        classes.len()
    );
}

/// What one fused-op case did.
#[derive(Default)]
struct FusedStats {
    layers: u64,
    ran: u64,
    errs: u64,
    block_ran: u64,
    block_errs: u64,
    /// Error class -> first case seed.
    classes: BTreeMap<String, u64>,
}

impl FusedStats {
    fn err(&mut self, seed: u64, e: &str) {
        self.classes.entry(error_class(e)).or_insert(seed);
        if std::env::var("ZMLX_FUZZ_VERBOSE").is_ok() {
            eprintln!("{seed}: {e}");
        }
    }
}

/// One random MoE layer through the fused ops (swiglu, combine and the whole block), arguments drawn
/// from `seed`: shapes, dtypes, modes, group sizes, indices mostly valid and sometimes not.
fn fused_case(seed: u64, st: &mut FusedStats) {
    let mut r = Rng(seed);
    let modes = [
        (QuantMode::Affine, 64, 4),
        (QuantMode::Affine, 32, 8),
        (QuantMode::Affine, 128, 3),
        (QuantMode::Mxfp4, 32, 4),
        (QuantMode::Nvfp4, 16, 4),
        (QuantMode::Mxfp8, 32, 8),
    ];
    let dts = [Dtype::Float32, Dtype::Float16, Dtype::Bfloat16];
    let &(mode, g, b) = r.pick(&modes);
    let dt = *r.pick(&dts);
    let e = 1 + r.below(4) as i32;
    // N, the down projection's K: a multiple of its group size most of the time.
    let &(dmode, dg, db) = r.pick(&modes);
    let nn = if r.below(8) == 0 {
        1 + r.below(40) as i32
    } else {
        dg * (1 + r.below(2) as i32)
    };
    // K a multiple of the group most of the time, sometimes not.
    let k = if r.below(6) == 0 {
        1 + r.below(200) as i32
    } else {
        g * (1 + r.below(3) as i32)
    };
    let key = zmlx::mlx_rs::random::key(r.next()).unwrap();
    let w = zmlx::mlx_rs::random::normal::<f32>(&[e, nn, k], 0.0, 0.1, &key)
        .unwrap()
        .as_dtype(dt)
        .unwrap();
    st.layers += 1;
    let q = match quantize(&w, mode, Some(g), Some(b)) {
        Ok(q) => q,
        Err(err) => {
            st.errs += 1;
            return st.err(seed, &err.to_string());
        }
    };
    let t = 1 + r.below(4) as i32;
    let kk = 1 + r.below(3) as i32;
    let xk = if r.below(8) == 0 { k + 1 } else { k };
    let x = zmlx::mlx_rs::random::normal::<f32>(&[t, 1, 1, xk], 0.0, 1.0, &key)
        .unwrap()
        .as_dtype(*r.pick(&dts))
        .unwrap();
    // Indices mostly in range, sometimes past E or negative.
    let idx: Vec<i32> = (0..t * kk)
        .map(|_| match r.below(40) {
            0 => e + r.below(3) as i32,
            1 => -1,
            _ => r.below(e as u64) as i32,
        })
        .collect();
    let idx = Array::from_slice(&idx, &[t, kk]);
    let act = if r.below(2) == 0 {
        Activation::Swiglu
    } else {
        Activation::GPT_OSS
    };
    let h = zmlx::fused::gather_qmm_swiglu(
        &x,
        &q,
        &q,
        &zmlx::fused::SwigluArgs {
            rhs_indices: Some(&idx),
            activation: act,
            ..Default::default()
        },
    )
    .and_then(|h| {
        h.eval()?;
        Ok(h)
    });
    // The down projection: [E, D, N] (sometimes a wrong K), its own quantization.
    let dk = if r.below(8) == 0 { nn + dg } else { nn };
    let dw = zmlx::mlx_rs::random::normal::<f32>(&[e, 1 + r.below(40) as i32, dk], 0.0, 0.1, &key)
        .unwrap()
        .as_dtype(dt)
        .unwrap();
    let down = quantize(&dw, dmode, Some(dg), Some(db));
    // The whole block as one op on the same (sometimes bad) arguments: a value or an error.
    if let Ok(d) = &down {
        let xs = x.reshape(&[t, xk]).unwrap();
        let scores = Array::from_slice(&vec![0.25f32; (t * kk) as usize], &[t, kk]);
        let y =
            zmlx::fused::switch_glu_combine(&xs, &q, &q, d, &idx, &scores, act, None, None, None)
                .and_then(|y| y.eval().map_err(Into::into));
        match y {
            Ok(()) => st.block_ran += 1,
            Err(err) => {
                st.block_errs += 1;
                st.err(seed, &err.to_string());
            }
        }
    }
    match (h, down) {
        (Ok(h), Ok(down)) => {
            let scores = Array::from_slice(&vec![0.5f32; (t * kk) as usize], &[t, kk]);
            let y = zmlx::fused::gather_qmm_combine(&h, &down, &idx, &scores, None)
                .and_then(|y| y.eval().map_err(Into::into));
            match y {
                Ok(()) => st.ran += 1,
                Err(err) => {
                    st.errs += 1;
                    st.err(seed, &err.to_string());
                }
            }
        }
        (h, d) => {
            st.errs += 1;
            if let Err(err) = h {
                st.err(seed, &err.to_string());
            }
            if let Err(err) = d {
                st.err(seed, &err.to_string());
            }
        }
    }
}

#[test]
fn fuzz_fused_op_arguments() {
    zmlx::runtime::use_device(zmlx::runtime::DeviceKind::Cpu).unwrap();
    let mut st = FusedStats::default();
    // The corpus: case seeds that reached distinct errors.
    let single = std::env::var("ZMLX_FUZZ_CASE")
        .ok()
        .and_then(|v| v.parse().ok());
    let corpus = match single {
        Some(c) => vec![c],
        None => corpus_seeds(&corpus_dir().join("fused.seeds")),
    };
    for &c in &corpus {
        fused_case(c, &mut st);
    }
    let known: std::collections::BTreeSet<String> = st.classes.keys().cloned().collect();
    let replayed = st.layers;
    let s = fuzz_seed("fuzz_fused_op_arguments", 0xf05e);
    let t0 = Instant::now();
    let mut i = 0;
    while single.is_none() && (t0.elapsed() < fuzz_budget() || i < 20) {
        fused_case(case_seed(s, i), &mut st);
        i += 1;
    }
    if let Some(d) = std::env::var_os("ZMLX_FUZZ_NEW_CORPUS").map(PathBuf::from) {
        std::fs::create_dir_all(&d).unwrap();
        let lines: String = st
            .classes
            .iter()
            .filter(|(c, _)| !known.contains(*c))
            .map(|(c, seed)| format!("{seed} # {c}\n"))
            .collect();
        std::fs::write(d.join("fused.seeds"), lines).unwrap();
    }
    eprintln!(
        "fuzz_fused_op_arguments: {} layers ({replayed} from the corpus), {} computed, {} rejected with an error; switch_glu_combine {} computed, {} rejected; {} error classes",
        st.layers, st.ran, st.errs, st.block_ran, st.block_errs, st.classes.len()
    );
}
