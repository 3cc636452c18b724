//! Distributed groups across real processes: `zmlx launch` starts ranks of MLX's ring backend over
//! localhost and `zmlx dist-selftest` checks every collective against the single-process computation; the
//! faults (a failing rank, a job that waits forever, bad host files, sizes and ranks that disagree) end in
//! bounded time with a clear error. Plus the singleton group in this process.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mlx_rs::{Array, Dtype};
use zmlx::distributed::{self as dist, Backend};

/// No launch here may take longer (the ranks' own waits are unbounded: this is what the launcher bounds).
const LIMIT: Duration = Duration::from_secs(60);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs the zmlx binary with `args` and `env` (no MLX distributed variables inherited), killing it past
/// [`LIMIT`].
fn zmlx(args: &[&str], env: &[(&str, &str)]) -> Run {
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
    let elapsed = t0.elapsed();
    Run {
        code: status.code(),
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
        elapsed,
    }
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zmlx-dist-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing a temp file");
    p
}

fn assert_selftest_passed(run: &Run, n: usize) {
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    for r in 0..n {
        for line in [
            format!("[rank {r}] rank {r}/{n}: all_sum, all_max, all_min, all_gather float32: ok"),
            format!("[rank {r}] rank {r}/{n}: all_sum, all_max, all_min, all_gather bfloat16: ok"),
            format!("[rank {r}] rank {r}/{n}: all checks passed"),
        ] {
            assert!(
                run.stdout.contains(&line),
                "missing '{line}' in:\n{}",
                run.stdout
            );
        }
        if n > 1 {
            let line = format!("[rank {r}] rank {r}/{n}: send, recv, recv_like: ok");
            assert!(
                run.stdout.contains(&line),
                "missing '{line}' in:\n{}",
                run.stdout
            );
        }
    }
}

#[test]
fn singleton_group_in_this_process() {
    assert!(dist::is_available(Backend::Ring));
    let g = dist::init(false, Backend::Any).expect("the singleton group");
    assert_eq!((g.rank(), g.size(), g.is_singleton()), (0, 1, true));
    let x = Array::from_slice(&[1.0f32, -2.0, 3.5], &[3]);
    for y in [
        dist::all_sum(&x, &g).expect("all_sum"),
        dist::all_max(&x, &g).expect("all_max"),
        dist::all_min(&x, &g).expect("all_min"),
        dist::all_gather(&x, &g).expect("all_gather"),
    ] {
        assert_eq!(y.shape(), x.shape());
        assert_eq!(zmlx::array::to_f32_vec(&y).expect("read"), [1.0, -2.0, 3.5]);
    }
    let e = dist::send(&x, 0, &g)
        .expect_err("send to oneself")
        .to_string();
    assert!(e.contains("singleton"), "{e}");
    let e = dist::recv(&[3], Dtype::Float32, 1, &g)
        .expect_err("a source outside the group")
        .to_string();
    assert!(e.contains("outside the group"), "{e}");
    assert!(g.split(0, None).is_err());
    // Strict: no launcher configured the ring in this process.
    let e = dist::init(true, Backend::Ring)
        .expect_err("strict ring without its variables")
        .to_string();
    assert!(e.contains("MLX_HOSTFILE"), "{e}");
}

#[test]
fn two_ranks_collectives_equal_one_process() {
    let run = zmlx(
        &[
            "launch",
            "-n",
            "2",
            "--",
            "dist-selftest",
            "--expect-size",
            "2",
        ],
        &[],
    );
    assert_selftest_passed(&run, 2);
}

#[test]
fn four_ranks_collectives_equal_one_process() {
    let run = zmlx(
        &[
            "launch",
            "-n",
            "4",
            "--",
            "dist-selftest",
            "--expect-size",
            "4",
        ],
        &[],
    );
    assert_selftest_passed(&run, 4);
}

#[test]
fn one_rank_is_the_singleton_group() {
    let run = zmlx(
        &[
            "launch",
            "-n",
            "1",
            "--",
            "dist-selftest",
            "--expect-size",
            "1",
        ],
        &[],
    );
    assert_selftest_passed(&run, 1);
}

#[test]
fn ranks_from_a_host_file() {
    let hosts = temp_file(
        "hosts.json",
        r#"{"backend": "ring", "envs": ["ZMLX_UNUSED=1"],
            "hosts": [{"ssh": "localhost", "ips": ["127.0.0.1"]}, {"ssh": "localhost", "ips": ["127.0.0.1"]}]}"#,
    );
    let hosts = hosts.to_str().expect("utf-8 path");
    let run = zmlx(
        &[
            "launch",
            "--hosts",
            hosts,
            "--",
            "dist-selftest",
            "--expect-size",
            "2",
        ],
        &[],
    );
    assert_selftest_passed(&run, 2);
}

#[test]
fn a_failing_rank_stops_the_others_with_its_error_and_status() {
    // Rank 1 exits before joining; ranks 0 and 2 would wait for it forever.
    let run = zmlx(
        &[
            "launch",
            "-n",
            "3",
            "--",
            "dist-selftest",
            "--fail-rank",
            "1",
            "--exit-code",
            "3",
        ],
        &[],
    );
    assert_eq!(run.code, Some(3), "stderr:\n{}", run.stderr);
    for needle in [
        "[rank 1] error: rank 1: failing on purpose",
        "error: rank 1 on 127.0.0.1 exited with status 3",
        "stopped rank(s) 0, 2",
    ] {
        assert!(
            run.stderr.contains(needle),
            "no '{needle}' in:\n{}",
            run.stderr
        );
    }
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
}

#[test]
fn the_timeout_stops_ranks_that_wait_forever() {
    // Rank 1 leaves successfully without joining: not a failure, but rank 0 waits for it.
    let run = zmlx(
        &[
            "launch",
            "-n",
            "2",
            "--timeout",
            "1",
            "--",
            "dist-selftest",
            "--fail-rank",
            "1",
            "--exit-code",
            "0",
        ],
        &[],
    );
    assert_eq!(run.code, Some(124), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("timed out after") && run.stderr.contains("stopped rank(s) 0"),
        "{}",
        run.stderr
    );
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
}

#[test]
fn bad_host_files_and_sizes_fail_before_any_rank_starts() {
    let two = temp_file(
        "two.json",
        r#"[{"ssh": "a", "ips": ["127.0.0.1"]}, {"ssh": "b", "ips": ["127.0.0.1"]}]"#,
    );
    let cases = [
        (temp_file("not-json.json", "{"), "not JSON"),
        (temp_file("no-ips.json", r#"[{"ssh": "a"}]"#), "no \"ips\""),
        (
            temp_file("bad-ip.json", r#"[{"ssh": "a", "ips": ["a.b.c"]}]"#),
            "not an IP address",
        ),
        (
            temp_file(
                "mpi.json",
                r#"{"backend": "mpi", "hosts": [{"ssh": "a", "ips": ["127.0.0.1"]}]}"#,
            ),
            "'mpi' backend",
        ),
        (
            PathBuf::from("/nonexistent/hosts.json"),
            "reading the host file: /nonexistent/hosts.json: does not exist",
        ),
    ];
    for (file, needle) in &cases {
        let f = file.to_str().expect("utf-8 path");
        let run = zmlx(&["launch", "--hosts", f, "--", "dist-selftest"], &[]);
        assert_eq!(run.code, Some(1), "{f}: {}", run.stderr);
        assert!(
            run.stderr.contains(needle),
            "{f}: no '{needle}' in {}",
            run.stderr
        );
        assert!(!run.stdout.contains("[rank") && !run.stderr.contains("[rank"));
    }
    let f = two.to_str().expect("utf-8 path");
    let run = zmlx(
        &["launch", "-n", "4", "--hosts", f, "--", "dist-selftest"],
        &[],
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("size mismatch: -n 4 but the host file")
            && run.stderr.contains("lists 2 host(s)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("[rank"));
}

#[test]
fn a_rank_outside_its_group_is_named_before_connecting() {
    let ring = temp_file("ring.json", r#"[["127.0.0.1:1"], ["127.0.0.1:2"]]"#);
    let ring = ring.to_str().expect("utf-8 path");
    for (env, needle) in [
        (
            vec![("MLX_RANK", "2"), ("MLX_HOSTFILE", ring)],
            "MLX_RANK=2 but the ring's host file has 2 ranks",
        ),
        (
            vec![("MLX_RANK", "one"), ("MLX_HOSTFILE", ring)],
            "MLX_RANK='one' is not a rank",
        ),
        (
            vec![
                ("MLX_RANK", "0"),
                ("MLX_HOSTFILE", ring),
                ("MLX_WORLD_SIZE", "3"),
            ],
            "MLX_WORLD_SIZE=3 but the ring's host file",
        ),
    ] {
        let run = zmlx(&["dist-selftest", "--backend", "ring"], &env);
        assert_eq!(run.code, Some(1), "{env:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(needle),
            "{env:?}: no '{needle}' in {}",
            run.stderr
        );
        assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    }
    let run = zmlx(
        &["dist-selftest", "--backend", "ring"],
        &[("MLX_RANK", "0")],
    );
    assert!(
        run.stderr
            .contains("MLX_RANK is set but MLX_HOSTFILE is not"),
        "{}",
        run.stderr
    );
}
