//! Expert parallelism: the ranks of a group share out every MoE layer's routed experts.
//!
//! In this process (no group: each rank's share built with `ExpertParallel::detached`): every family's
//! share of a rank holds exactly the single process's experts, synthesized and loaded from a checkpoint
//! (which reads only those bytes); the ranks' partial sums add up to the single process's routed output
//! on both paths, sorted and unsorted; a group that cannot share out the experts is refused before any
//! weight is read. Across processes (`zmlx launch`, the ring over localhost): 2 and 4 ranks generate the
//! tokens of one process, with logits within the fidelity tolerance; a rank that fails mid-generation
//! stops the others in bounded time, with the launcher or without it.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use serde_json::Value;
use zmlx::array::{slice_axis, to_f32_vec};
use zmlx::checkpoint::{array_bytes, Tensors};
use zmlx::distributed as dist;
use zmlx::fidelity::Tolerance;
use zmlx::mlx_rs::{Array, Dtype};
use zmlx::models::{self, Arch, Dims, Ffn, Model, ModelConfig};
use zmlx::moe::{ExpertParallel, ExpertRange, ExpertWeight, MoePath, SwitchGlu};

fn tiny_config(arch: Arch) -> Value {
    let d = Dims {
        hidden: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        experts: 6,
        top_k: 2,
        expert_dim: 32,
        vocab: 128,
        window: Some(8),
    };
    let q = serde_json::json!({"group_size": 32, "bits": 4, "mode": "affine"});
    models::synthetic::with_quant(arch.config_for(&d, "bfloat16"), q)
}

fn no_progress() -> impl FnMut(usize, usize, &str) {
    |_, _, _| {}
}

/// Every array of a layer's experts, in a fixed order.
fn expert_arrays(e: &SwitchGlu) -> Vec<Array> {
    let mut v = Vec::new();
    for w in [&e.gate_proj, &e.up_proj, &e.down_proj] {
        match w {
            ExpertWeight::Quantized(q) => v.extend(q.arrays().into_iter().cloned()),
            ExpertWeight::Dense(a) => v.push(a.clone()),
        }
    }
    v.extend(
        [&e.gate_bias, &e.up_bias, &e.down_bias]
            .into_iter()
            .flatten()
            .cloned(),
    );
    v
}

fn moe_layers(m: &Model) -> Vec<&zmlx::moe::SparseMoe> {
    m.layers
        .iter()
        .filter_map(|l| match &l.ffn {
            Ffn::Moe(m) => Some(m.as_ref()),
            Ffn::Dense(_) => None,
        })
        .collect()
}

/// The share's expert arrays are, byte for byte, the rows of the single process's.
fn assert_holds_its_rows(full: &Model, share: &Model, range: ExpertRange, what: &str) {
    let (fl, sl) = (moe_layers(full), moe_layers(share));
    assert_eq!(fl.len(), sl.len(), "{what}");
    for (i, (f, s)) in fl.iter().zip(&sl).enumerate() {
        let (fa, sa) = (expert_arrays(&f.experts), expert_arrays(&s.experts));
        assert_eq!(fa.len(), sa.len(), "{what} layer {i}");
        for (j, (a, b)) in fa.iter().zip(&sa).enumerate() {
            assert_eq!(b.shape()[0], range.count, "{what} layer {i} array {j}");
            let rows = slice_axis(a, 0, range.first, range.first + range.count).unwrap();
            assert!(
                array_bytes(&rows).unwrap() == array_bytes(b).unwrap(),
                "{what} layer {i} array {j}: not the single process's rows"
            );
        }
        assert_eq!(s.parallel.as_ref().map(|p| p.0), Some(range), "{what}");
    }
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0f64, |m, x| m.max(f64::from(x.abs())))
}

#[test]
fn ranks_split_the_experts_evenly_or_by_at_most_one() {
    for (total, size) in [(32, 2), (32, 4), (6, 4), (5, 3), (7, 7), (128, 3)] {
        let ranges: Vec<ExpertRange> = (0..size)
            .map(|r| ExpertRange::of_rank(total, r, size).unwrap())
            .collect();
        assert_eq!(ranges[0].first, 0);
        for w in ranges.windows(2) {
            assert_eq!(w[0].first + w[0].count, w[1].first, "{total}/{size}");
        }
        let last = ranges[size - 1];
        assert_eq!(last.first + last.count, total);
        let (lo, hi) = ranges.iter().fold((i32::MAX, 0), |(lo, hi), r| {
            (lo.min(r.count), hi.max(r.count))
        });
        assert!(
            lo >= 1 && hi - lo <= (total % size as i32 != 0) as i32,
            "{total}/{size}"
        );
        if total % size as i32 == 0 {
            assert!(ranges.iter().all(|r| r.count == total / size as i32));
        }
    }
    let e = ExpertRange::of_rank(4, 0, 5).unwrap_err().to_string();
    assert!(
        e.contains("over 5 ranks needs at least 5 experts") && e.contains("has 4"),
        "{e}"
    );
    assert!(ExpertRange::of_rank(4, 2, 2).is_err());
}

#[test]
fn localized_indices_are_local_and_foreign_scores_zero() {
    let r = ExpertRange::of_rank(8, 1, 2).unwrap(); // experts 4..8
    let idx = Array::from_slice(&[0u32, 4, 7, 3, 5, 1], &[3, 2]);
    let scores = Array::from_slice(&[0.5f32, 0.25, 0.75, 0.125, 0.375, 0.625], &[3, 2]);
    let (li, ls) = r.localize(&idx, &scores).unwrap();
    // Slots of other ranks' experts go to the token's own (highest) local expert, else to 0.
    assert_eq!(zmlx::array::to_u32_vec(&li).unwrap(), [0, 0, 3, 3, 1, 1]);
    assert_eq!(to_f32_vec(&ls).unwrap(), [0.0, 0.25, 0.75, 0.0, 0.375, 0.0]);
    assert!(r
        .localize(&idx.as_dtype(Dtype::Int32).unwrap(), &scores)
        .is_err());
}

/// For every family (gpt-oss: expert biases; GLM-4: shared experts, a dense first layer, float32 scores),
/// every split of 6 experts over 2, 3 and 4 ranks: each rank's synthetic share holds the single process's
/// experts, and the ranks' partial sums add up to the single process's routed output.
#[test]
fn every_family_shares_its_experts_and_the_partials_add_up() {
    for arch in Arch::ALL {
        let config = tiny_config(arch);
        let (full, _) = models::synthesize(&config, 7, &mut no_progress()).unwrap();
        let d = full.config.hidden_size;
        for size in [2usize, 3, 4] {
            let shares: Vec<Model> = (0..size)
                .map(|r| {
                    let ep = ExpertParallel::detached(r, size).unwrap();
                    models::synthesize_parallel(&config, 7, &ep, &mut no_progress())
                        .unwrap()
                        .0
                })
                .collect();
            for (r, s) in shares.iter().enumerate() {
                let range = ExpertRange::of_rank(6, r, size).unwrap();
                assert_holds_its_rows(&full, s, range, &format!("{arch:?} rank {r}/{size}"));
            }
            // 5 tokens x top-2 take the unsorted path, 40 tokens the sorted one (>= 64 rows).
            for (tokens, path) in [
                (5, MoePath::Fused),
                (40, MoePath::Fused),
                (5, MoePath::Reference),
                (40, MoePath::Reference),
            ] {
                let dtype = match path {
                    MoePath::Fused => Dtype::Float32,
                    MoePath::Reference => full.config.dtype,
                };
                let x = common::randn(&[1, tokens, d], 11 + tokens as u64, 1.0)
                    .as_dtype(dtype)
                    .unwrap();
                for (i, f) in moe_layers(&full).iter().enumerate() {
                    let want = to_f32_vec(&f.forward_partial(&x, path).unwrap().0).unwrap();
                    let mut sum = vec![0f64; want.len()];
                    for s in &shares {
                        let p = moe_layers(s)[i].forward_partial(&x, path).unwrap().0;
                        let p = to_f32_vec(&p).unwrap();
                        for (acc, v) in sum.iter_mut().zip(&p) {
                            *acc += f64::from(*v);
                        }
                    }
                    // The float32 partials differ from the single sum by the order of additions.
                    let rel = 1e-5;
                    let scale = max_abs(&want);
                    let err = sum
                        .iter()
                        .zip(&want)
                        .fold(0f64, |m, (a, b)| m.max((a - f64::from(*b)).abs()));
                    assert!(
                        err <= rel * scale * (size as f64),
                        "{arch:?} {path} T={tokens} {size} ranks layer {i}: error {err:e}, scale {scale}"
                    );
                }
            }
            // A share cannot run a whole MoE block alone: the other ranks' partials are missing.
            let x = common::randn(&[1, 3, d], 5, 1.0);
            let e = moe_layers(&shares[0])[0]
                .forward(&x, MoePath::Fused)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("no group to add the other ranks' partial sums"),
                "{e}"
            );
        }
    }
}

/// The header length of a safetensors file.
fn header_len(file: &Path) -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open(file)
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn a_rank_reads_only_its_experts_from_a_checkpoint() {
    for arch in [Arch::Qwen3Moe, Arch::GptOss] {
        let config = tiny_config(arch);
        let (full, t) = models::synthesize(&config, 3, &mut no_progress()).unwrap();
        let dir = TempDir::new("ep-ckpt");
        let ckpt = dir.0.join("m");
        models::save(&ckpt, &config, &t).unwrap();
        let cfg = ModelConfig::from_json(&config).unwrap();
        let spec = cfg.schema();
        let experts_total = spec.expert_nbytes(cfg.dtype);
        let modules = spec.expert_modules();
        let hdr = 8 + header_len(&ckpt.join("model.safetensors"));
        for (size, r) in [(2usize, 1usize), (3, 0), (3, 2)] {
            let ep = ExpertParallel::detached(r, size).unwrap();
            let share = models::load_parallel(&ckpt, &ep).unwrap();
            let range = ExpertRange::of_rank(6, r, size).unwrap();
            assert_holds_its_rows(&full, &share, range, &format!("{arch:?} {r}/{size}"));
            // The bytes the loader reads: the header, everything but the experts, this rank's experts.
            let select = |name: &str, _: &[usize]| {
                Ok(name
                    .rsplit_once('.')
                    .filter(|(m, _)| modules.contains(m))
                    .map(|_| (range.first as usize, (range.first + range.count) as usize)))
            };
            let t = Tensors::load_dir_rows(&ckpt, &select).unwrap();
            let held = share.expert_bytes() as u64;
            assert_eq!(
                t.bytes_read(),
                hdr + t.bytes_stored() - experts_total + held,
                "{arch:?} {r}/{size}"
            );
            assert!(held * size as u64 <= experts_total + experts_total / 6);
        }
    }
}

#[test]
fn a_group_that_cannot_share_the_experts_is_refused_before_any_weight_is_read() {
    let config = tiny_config(Arch::Mixtral);
    let dir = TempDir::new("ep-refuse");
    std::fs::write(
        dir.0.join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    // Not a safetensors file: reading any weight would fail with another error.
    std::fs::write(dir.0.join("model.safetensors"), b"garbage").unwrap();
    let ep = ExpertParallel::detached(0, 7).unwrap();
    let e = models::load_parallel(&dir.0, &ep).unwrap_err().to_string();
    assert!(
        e.contains("over 7 ranks needs at least 7 experts") && e.contains("has 6"),
        "{e}"
    );
    let mut seen = 0;
    let e = models::synthesize_parallel(&config, 0, &ep, &mut |_, _, _| seen += 1)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("at least 7 experts") && seen == 0,
        "{e} ({seen} tensors made)"
    );
    // A checkpoint whose expert stack is not what the config says is named.
    let (_, mut t) = models::synthesize(&config, 0, &mut no_progress()).unwrap();
    let name = "model.layers.0.block_sparse_moe.switch_mlp.gate_proj.weight";
    assert!(
        t.contains(name),
        "{:?}",
        t.sorted().keys().take(40).collect::<Vec<_>>()
    );
    t.insert(name, Array::zeros::<u32>(&[5, 32, 8]).unwrap());
    let ck = dir.0.join("bad");
    models::save(&ck, &config, &t).unwrap();
    let e = models::load_parallel(&ck, &ExpertParallel::detached(0, 2).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(name) && e.contains("the config's 6 experts"),
        "{e}"
    );
}

// ---- across processes -------------------------------------------------------------------------------

/// No run here may take longer.
const LIMIT: Duration = Duration::from_secs(120);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn zmlx(args: &[&str]) -> Run {
    zmlx_env(args, &[])
}

/// Runs the zmlx binary with `args` and `env` (no MLX distributed variables inherited), killing it past
/// [`LIMIT`].
fn zmlx_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zmlx"));
    cmd.args(args)
        .env_remove(dist::ENV_RANK)
        .env_remove(dist::ENV_HOSTFILE)
        .env_remove(dist::ENV_WORLD_SIZE)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("running zmlx");
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for zmlx") {
            break s;
        }
        if t0.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("zmlx {args:?} still running after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
        elapsed: t0.elapsed(),
    }
}

fn ok(run: &Run) {
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
}

struct Dump {
    tokens: Vec<u64>,
    logits: Vec<Vec<f32>>,
}

fn read_dump(file: &Path) -> Dump {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(file).expect("the logits file"))
        .expect("JSON");
    let tokens = v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("a token"))
        .collect();
    let logits = v["logits"]
        .as_array()
        .expect("logits")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("a row")
                .iter()
                .map(|x| x.as_f64().expect("a logit") as f32)
                .collect()
        })
        .collect();
    Dump { tokens, logits }
}

/// `generate` alone and under `zmlx launch -n N` for each N: the same greedy tokens, every rank's logits
/// identical to rank 0's, and within the fidelity tolerance's slack of the single process's. Returns
/// the launched runs' stdout.
fn same_generation(model: &[&str], path: &str, tokens: &str, sizes: &[usize]) -> Vec<String> {
    let dir = TempDir::new("ep-gen");
    let one = dir.0.join("one.json");
    let mut args = vec!["generate"];
    args.extend_from_slice(model);
    args.extend(["--path", path, "--max-tokens", tokens, "--logits-out"]);
    let mut single = args.clone();
    let one_s = one.to_str().expect("utf-8 path").to_string();
    single.push(&one_s);
    ok(&zmlx(&single));
    let want = read_dump(&one);
    let tol = Tolerance::DEFAULT;
    let mut outs = Vec::new();
    for &n in sizes {
        let pattern = dir.0.join(format!("n{n}-{{rank}}.json"));
        let pattern = pattern.to_str().expect("utf-8 path").to_string();
        let n_s = n.to_string();
        let mut launched = vec!["launch", "-n", &n_s, "--timeout", "100", "--"];
        launched.extend(args.iter().copied());
        launched.push(&pattern);
        let run = zmlx(&launched);
        ok(&run);
        let rank0 = read_dump(&dir.0.join(format!("n{n}-0.json")));
        assert_eq!(rank0.tokens, want.tokens, "{model:?} {path} on {n} ranks");
        for r in 1..n {
            let d = read_dump(&dir.0.join(format!("n{n}-{r}.json")));
            assert!(
                d.tokens == rank0.tokens && d.logits == rank0.logits,
                "{model:?} {path}: rank {r} of {n} computed other logits than rank 0"
            );
        }
        for (step, (got, w)) in rank0.logits.iter().zip(&want.logits).enumerate() {
            let scale = max_abs(w);
            let err = got
                .iter()
                .zip(w)
                .fold(0f64, |m, (a, b)| m.max(f64::from((a - b).abs())));
            let allowed = tol.rel_slack * scale + tol.abs_slack;
            assert!(
                err <= allowed,
                "{model:?} {path} on {n} ranks, step {step}: max |logit difference| {err:e} > {allowed:e}"
            );
        }
        assert!(
            run.stdout
                .contains(&format!("[rank 0] output tokens: {:?}", want.tokens))
                && !run.stdout.contains("[rank 1] output tokens"),
            "{}",
            run.stdout
        );
        outs.push(run.stdout);
    }
    outs
}

/// `expert arrays X MB of the model's Y MB` of each rank's memory line.
fn expert_mb(stdout: &str) -> Vec<(f64, f64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.split("expert arrays ").nth(1)?;
            let (held, rest) = rest.split_once(" MB of the model's ")?;
            let (total, _) = rest.split_once(" MB")?;
            Some((held.parse().ok()?, total.parse().ok()?))
        })
        .collect()
}

#[test]
fn qwen3_on_two_and_four_ranks_generates_what_one_process_does() {
    let outs = same_generation(&["--synthetic", "qwen3-mini"], "fused", "6", &[2, 4]);
    for (out, n) in outs.iter().zip([2usize, 4]) {
        let mb = expert_mb(out);
        assert_eq!(mb.len(), n, "{out}");
        // 16 experts: each rank holds 16/n of them.
        let total = mb[0].1;
        for (held, t) in &mb {
            assert!(
                *t == total && (held * n as f64 - total).abs() <= 0.01 * n as f64,
                "{out}"
            );
        }
    }
}

#[test]
fn glm4_with_shared_experts_and_gpt_oss_with_expert_biases_on_two_ranks() {
    same_generation(&["--synthetic", "glm4-tiny"], "fused", "4", &[2]);
    same_generation(&["--synthetic", "gpt-oss-tiny"], "fused", "4", &[2]);
}

#[test]
fn the_reference_path_and_a_checkpoint_on_two_ranks() {
    let dir = TempDir::new("ep-ck");
    let ck = dir.0.join("qwen3-mini");
    let ck_s = ck.to_str().expect("utf-8 path");
    ok(&zmlx(&["synth", "--preset", "qwen3-mini", "--out", ck_s]));
    same_generation(&["--model", ck_s], "reference", "4", &[2]);
}

#[test]
fn a_rank_failing_mid_generation_stops_the_others() {
    let run = zmlx(&[
        "launch",
        "-n",
        "2",
        "--",
        "generate",
        "--synthetic",
        "qwen3-mini",
        "--max-tokens",
        "200",
        "--fail-rank",
        "1",
        "--fail-after",
        "2",
    ]);
    assert_eq!(run.code, Some(3), "stderr:\n{}", run.stderr);
    for needle in [
        "[rank 1] error: rank 1: failing on purpose after 2 token(s)",
        "error: rank 1 on 127.0.0.1 exited with status 3",
    ] {
        assert!(
            run.stderr.contains(needle),
            "no '{needle}' in:\n{}",
            run.stderr
        );
    }
    // Rank 0 is either stopped by the launcher or fails first on its own, having lost its peer; either
    // way rank 1, the cause, is the one reported.
    assert!(
        run.stderr.contains("; stopped rank(s) 0")
            || run.stderr.contains("; rank(s) 0 lost a peer"),
        "{}",
        run.stderr
    );
    assert!(run.elapsed < Duration::from_secs(60), "{:?}", run.elapsed);
}

/// Without the launcher (ranks started by hand on a ring host file): a rank that exits mid-generation
/// closes its sockets, and its peer fails with MLX's error instead of waiting forever.
#[test]
fn without_the_launcher_a_dead_peer_is_an_error_not_a_hang() {
    let dir = TempDir::new("ep-ring");
    let held: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    let hosts: Vec<Vec<std::net::SocketAddr>> = held
        .iter()
        .map(|l| vec![l.local_addr().expect("its address")])
        .collect();
    drop(held);
    let file = dir.0.join("ring.json");
    dist::write_ring_hostfile(&file, &hosts).unwrap();
    let file = file.to_str().expect("utf-8 path").to_string();
    let args = [
        "generate",
        "--synthetic",
        "qwen3-mini",
        "--max-tokens",
        "200",
        "--fail-rank",
        "1",
        "--fail-after",
        "2",
    ];
    let ranks: Vec<_> = (0..2)
        .map(|r| {
            let file = file.clone();
            std::thread::spawn(move || {
                let rank = r.to_string();
                zmlx_env(
                    &args,
                    &[(dist::ENV_RANK, &rank), (dist::ENV_HOSTFILE, &file)],
                )
            })
        })
        .collect();
    let runs: Vec<Run> = ranks
        .into_iter()
        .map(|t| t.join().expect("a rank"))
        .collect();
    assert_eq!(runs[1].code, Some(3), "{}", runs[1].stderr);
    assert_eq!(
        runs[0].code,
        Some(i32::from(dist::PEER_LOST_EXIT_CODE)),
        "{}",
        runs[0].stderr
    );
    assert!(
        runs[0].stderr.contains("connection to a peer was lost"),
        "{}",
        runs[0].stderr
    );
    assert!(
        runs[0].elapsed < Duration::from_secs(60),
        "{:?}",
        runs[0].elapsed
    );
}

#[test]
fn more_ranks_than_experts_fail_on_every_rank_before_loading() {
    let dir = TempDir::new("ep-few");
    let mut config = tiny_config(Arch::Qwen3Moe);
    config["num_experts"] = serde_json::json!(2);
    config["num_experts_per_tok"] = serde_json::json!(1);
    let file = dir.0.join("two-experts.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let run = zmlx(&[
        "launch",
        "-n",
        "3",
        "--",
        "generate",
        "--synthetic",
        file.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr
            .contains("expert parallelism over 3 ranks needs at least 3 experts per MoE layer")
            && run.stderr.contains("this model has 2"),
        "{}",
        run.stderr
    );
}
