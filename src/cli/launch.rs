//! `zmlx launch`: starts one zmlx process per rank of a distributed group, as `mlx.launch` does.
//!
//! - `-n N` alone: N local processes talking over 127.0.0.1, on ports free at launch.
//! - `--hosts FILE`: `mlx.launch`'s host file (a list of `{"ssh": name, "ips": [ip, ...]}`, or an object with
//!   that list as `"hosts"` and optional `"backend"` and `"envs"`: `["KEY=VALUE", ...]` set on every rank).
//!   Ranks whose IPs belong to this machine run here; the others through `ssh -tt NAME`, which must find the
//!   same zmlx binary path and working directory there.
//!
//! For the ring backend it writes MLX's ring host file (rank r's `"ip:port"` list; see
//! [`zmlx::distributed`]) and gives each rank `MLX_RANK`, `MLX_HOSTFILE` and `MLX_WORLD_SIZE`; for NCCL,
//! `MLX_RANK`, `MLX_WORLD_SIZE`, `NCCL_HOST_IP`, `NCCL_PORT` (rank 0's address) and `CUDA_VISIBLE_DEVICES`
//! (the rank's index among those on its host). One rank gets none of them: it is the singleton group.
//!
//! Every line a rank prints comes out with a `[rank r]` prefix on the same stream. When a rank exits with a
//! failure, the launcher kills the others at once (a rank that waits on a dead peer may otherwise wait
//! forever: MLX's ring gives up connecting after about 30 s, but accepting a connection and receiving have
//! no timeout) and fails with that rank's exit status and last error line. `--timeout` bounds the whole job
//! the same way (a rank alive but stuck). Everything about the host file and the sizes is checked before
//! any process starts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use zmlx::distributed::{
    write_ring_hostfile, ENV_HOSTFILE, ENV_RANK, ENV_WORLD_SIZE, PEER_LOST_EXIT_CODE,
};

use super::Exit;

/// `mlx.launch`'s default first port when ranks run on other machines (where free ports cannot be probed).
const DEFAULT_STARTING_PORT: u16 = 32323;
/// How often the launcher looks at its ranks.
const POLL: Duration = Duration::from_millis(20);
/// How long a rank that lost a peer waits to be explained by the rank that went away (which may still be
/// tearing down after closing its sockets).
const PEER_LOST_GRACE: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Number of ranks: alone, local processes over 127.0.0.1; with --hosts, it must equal the host count.
    #[arg(short = 'n', long = "ranks", value_parser = super::at_least_one)]
    ranks: Option<usize>,
    /// Host file in mlx.launch's format (one rank per host entry).
    #[arg(long, value_name = "FILE")]
    hosts: Option<PathBuf>,
    /// Distributed backend the ranks use (default: the host file's, else ring).
    #[arg(long, value_parser = ["ring", "nccl"])]
    backend: Option<String>,
    /// First port of the ring (one per rank and IP, increasing) or NCCL's port. Default: ports free now
    /// when every rank is local, else 32323.
    #[arg(long)]
    starting_port: Option<u16>,
    /// Stop every rank and fail after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Backend diagnostics (MLX_RING_VERBOSE=1, NCCL_DEBUG=INFO) and the launcher's own steps.
    #[arg(long)]
    verbose: bool,
    /// The zmlx command line each rank runs, after `--` (e.g. `-- generate --synthetic qwen3-mini`).
    #[arg(last = true, required = true, value_name = "ZMLX ARGS")]
    command: Vec<String>,
}

/// One entry of the host file.
#[derive(Clone, Debug)]
struct Host {
    /// Name to ssh into.
    ssh: String,
    ips: Vec<IpAddr>,
    /// Whether every IP belongs to this machine (the rank runs here).
    local: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LaunchBackend {
    Ring,
    Nccl,
}

/// What the host file says.
struct HostFile {
    hosts: Vec<Host>,
    backend: Option<String>,
    envs: Vec<(String, String)>,
}

pub fn run(a: LaunchArgs) -> Result<()> {
    let plan = plan(&a)?;
    let exe = std::env::current_exe().context("locating the zmlx binary")?;
    let scratch = Scratch::new()?;
    let mut env: Vec<(String, String)> = plan.envs.clone();
    let n = plan.hosts.len();
    if n > 1 {
        env.push((ENV_WORLD_SIZE.into(), n.to_string()));
        match plan.backend {
            LaunchBackend::Ring => {
                let file = scratch.path.join("hostfile.json");
                write_ring_hostfile(&file, &plan.ring)?;
                if a.verbose {
                    env.push(("MLX_RING_VERBOSE".into(), "1".into()));
                    eprintln!(
                        "[launch] ring host file {}: {}",
                        file.display(),
                        std::fs::read_to_string(&file).unwrap_or_default()
                    );
                }
                env.push((ENV_HOSTFILE.into(), file.display().to_string()));
            }
            LaunchBackend::Nccl => {
                let addr = plan.ring[0][0];
                env.push(("NCCL_HOST_IP".into(), addr.ip().to_string()));
                env.push(("NCCL_PORT".into(), addr.port().to_string()));
                if a.verbose {
                    env.push(("NCCL_DEBUG".into(), "INFO".into()));
                }
            }
        }
    }

    // A remote rank writes its own copy of the ring's host file.
    let hostfile_text = match plan.backend {
        LaunchBackend::Ring if n > 1 => {
            Some(std::fs::read_to_string(scratch.path.join("hostfile.json"))?)
        }
        _ => None,
    };
    let mut ranks = Vec::with_capacity(n);
    for (r, host) in plan.hosts.iter().enumerate() {
        let mut rank_env = env.clone();
        if n > 1 {
            rank_env.push((ENV_RANK.into(), r.to_string()));
            if plan.backend == LaunchBackend::Nccl {
                let local_index = plan.hosts[..r].iter().filter(|h| h.ssh == host.ssh).count();
                rank_env.push(("CUDA_VISIBLE_DEVICES".into(), local_index.to_string()));
            }
        }
        if a.verbose {
            eprintln!(
                "[launch] rank {r} on {}{}",
                host.ssh,
                if host.local { " (local)" } else { " (ssh)" }
            );
        }
        match spawn(
            r,
            host,
            &exe,
            &a.command,
            &rank_env,
            hostfile_text.as_deref(),
        ) {
            Ok(rank) => ranks.push(rank),
            Err(e) => {
                stop(&mut ranks);
                return Err(e.context(format!("starting rank {r} on {}", host.ssh)));
            }
        }
    }
    supervise(ranks, a.timeout.map(Duration::from_secs_f64))
}

/// Everything decided before a process starts.
struct Plan {
    hosts: Vec<Host>,
    backend: LaunchBackend,
    envs: Vec<(String, String)>,
    /// Each rank's addresses (the ring's host file; NCCL uses rank 0's first).
    ring: Vec<Vec<SocketAddr>>,
}

fn plan(a: &LaunchArgs) -> Result<Plan> {
    if let Some(t) = a.timeout {
        if !(t.is_finite() && t > 0.0) {
            bail!("--timeout must be a positive number of seconds, got {t}");
        }
    }
    let file = match &a.hosts {
        Some(path) => read_hostfile(path)?,
        None => {
            let n = a
                .ranks
                .context("give the number of ranks (-n N) or a host file (--hosts FILE)")?;
            let local = Host {
                ssh: "127.0.0.1".into(),
                ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                local: true,
            };
            HostFile {
                hosts: vec![local; n],
                backend: None,
                envs: Vec::new(),
            }
        }
    };
    if let (Some(n), Some(path)) = (a.ranks, &a.hosts) {
        if n != file.hosts.len() {
            bail!(
                "size mismatch: -n {n} but the host file {} lists {} host(s) (one rank per host)",
                path.display(),
                file.hosts.len()
            );
        }
    }
    let backend = match a.backend.as_deref().or(file.backend.as_deref()) {
        None | Some("ring") => LaunchBackend::Ring,
        Some("nccl") => LaunchBackend::Nccl,
        Some(other) => bail!(
            "the host file asks for the '{other}' backend: zmlx launch starts ring and nccl jobs \
             (use mpirun or mlx.launch for the others)"
        ),
    };
    let ring = assign_ports(&file.hosts, backend, a.starting_port)?;
    Ok(Plan {
        hosts: file.hosts,
        backend,
        envs: file.envs,
        ring,
    })
}

/// Parses mlx.launch's host file; see the module documentation.
fn read_hostfile(path: &Path) -> Result<HostFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| zmlx::Error::io(path, e))
        .context("reading the host file")?;
    parse_hostfile(&text).with_context(|| format!("host file {}", path.display()))
}

fn parse_hostfile(text: &str) -> Result<HostFile> {
    let value: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
    let (list, backend, envs) = match &value {
        serde_json::Value::Array(l) => (l, None, Vec::new()),
        serde_json::Value::Object(o) => {
            let list = o
                .get("hosts")
                .and_then(|h| h.as_array())
                .context("expected a \"hosts\" list")?;
            let backend = match o.get("backend") {
                None => None,
                Some(serde_json::Value::String(s)) if s.is_empty() => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(other) => bail!("\"backend\" must be a string, got {other}"),
            };
            let mut envs = Vec::new();
            for e in o
                .get("envs")
                .map(|e| {
                    e.as_array()
                        .context("\"envs\" must be a list of \"KEY=VALUE\"")
                })
                .transpose()?
                .into_iter()
                .flatten()
            {
                let s = e
                    .as_str()
                    .context("\"envs\" must be a list of \"KEY=VALUE\"")?;
                let (k, v) = s
                    .split_once('=')
                    .with_context(|| format!("env '{s}' is not KEY=VALUE"))?;
                if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    bail!("env '{s}': '{k}' is not a variable name");
                }
                envs.push((k.to_string(), v.to_string()));
            }
            (list, backend, envs)
        }
        _ => bail!("expected a list of hosts or an object with a \"hosts\" list"),
    };
    if list.is_empty() {
        bail!("no hosts");
    }
    let mut hosts = Vec::with_capacity(list.len());
    for (r, h) in list.iter().enumerate() {
        let ssh = h
            .get("ssh")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .with_context(|| format!("host {r}: expected {{\"ssh\": name, \"ips\": [ip, ...]}}"))?;
        let ips = h
            .get("ips")
            .and_then(|i| i.as_array())
            .filter(|i| !i.is_empty())
            .with_context(|| {
                format!("host {r} ({ssh}): no \"ips\" (the ring backend connects to IP addresses)")
            })?;
        let ips = ips
            .iter()
            .map(|ip| {
                ip.as_str()
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .with_context(|| format!("host {r} ({ssh}): {ip} is not an IP address"))
            })
            .collect::<Result<Vec<_>>>()?;
        let local = ips.iter().all(|ip| is_this_machine(*ip));
        hosts.push(Host {
            ssh: ssh.to_string(),
            ips,
            local,
        });
    }
    Ok(HostFile {
        hosts,
        backend,
        envs,
    })
}

/// An address belongs to this machine iff a socket can be bound to it.
fn is_this_machine(ip: IpAddr) -> bool {
    ip.is_loopback() || TcpListener::bind((ip, 0)).is_ok()
}

/// Each rank's addresses: one per IP. With every rank local and no --starting-port, ports the system gives
/// out now (held until all are chosen, so they differ); otherwise consecutive ports from the starting port.
fn assign_ports(
    hosts: &[Host],
    backend: LaunchBackend,
    starting: Option<u16>,
) -> Result<Vec<Vec<SocketAddr>>> {
    let per_host: fn(&Host) -> Vec<IpAddr> = match backend {
        LaunchBackend::Ring => |h: &Host| h.ips.clone(),
        LaunchBackend::Nccl => |h: &Host| h.ips[..1].to_vec(),
    };
    let mut out = Vec::with_capacity(hosts.len());
    if starting.is_none() && hosts.iter().all(|h| h.local) {
        let mut held = Vec::new();
        for h in hosts {
            let mut addrs = Vec::new();
            for ip in per_host(h) {
                let l = TcpListener::bind((ip, 0))
                    .with_context(|| format!("finding a free port on {ip}"))?;
                addrs.push(l.local_addr()?);
                held.push(l);
            }
            out.push(addrs);
        }
        return Ok(out);
    }
    let mut port = u32::from(starting.unwrap_or(DEFAULT_STARTING_PORT));
    for h in hosts {
        let mut addrs = Vec::new();
        for ip in per_host(h) {
            let p = u16::try_from(port)
                .ok()
                .filter(|p| *p != 0)
                .with_context(|| {
                    format!(
                        "ports from the starting port run past 65535 at rank {}",
                        out.len()
                    )
                })?;
            addrs.push(SocketAddr::new(ip, p));
            port += 1;
        }
        out.push(addrs);
    }
    Ok(out)
}

/// A private directory for the ring's host file, removed when the launcher ends.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new() -> Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("zmlx-launch-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running rank.
struct Rank {
    rank: usize,
    host: String,
    child: Child,
    status: Option<ExitStatus>,
    /// The last non-empty line it wrote to stderr (its error, when it fails).
    last_err: Arc<Mutex<String>>,
    forwarders: Vec<JoinHandle<()>>,
}

fn spawn(
    r: usize,
    host: &Host,
    exe: &Path,
    args: &[String],
    env: &[(String, String)],
    hostfile_text: Option<&str>,
) -> Result<Rank> {
    let mut cmd = if host.local {
        let mut c = Command::new(exe);
        c.args(args).envs(env.iter().map(|(k, v)| (k, v)));
        c
    } else {
        let mut c = Command::new("ssh");
        c.args(["-tt", "-o", "LogLevel=QUIET", &host.ssh]);
        c.arg(remote_script(exe, args, env, hostfile_text)?);
        c
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_launcher(&mut cmd);
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "running {}",
            if host.local {
                exe.display().to_string()
            } else {
                "ssh".into()
            }
        )
    })?;
    let last_err = Arc::new(Mutex::new(String::new()));
    let mut forwarders = Vec::new();
    if let Some(out) = child.stdout.take() {
        forwarders.push(forward(r, out, false, None));
    }
    if let Some(err) = child.stderr.take() {
        forwarders.push(forward(r, err, true, Some(last_err.clone())));
    }
    Ok(Rank {
        rank: r,
        host: host.ssh.clone(),
        child,
        status: None,
        last_err,
        forwarders,
    })
}

/// On Linux a rank (or its ssh) is killed when the launcher dies, whatever kills it: nobody else would stop
/// ranks waiting on each other.
#[cfg(target_os = "linux")]
fn die_with_launcher(cmd: &mut Command) {
    use std::os::raw::{c_int, c_ulong};
    use std::os::unix::process::CommandExt;
    extern "C" {
        fn prctl(option: c_int, arg2: c_ulong, ...) -> c_int;
        fn getppid() -> c_int;
    }
    const PR_SET_PDEATHSIG: c_int = 1;
    const SIGKILL: c_ulong = 9;
    let launcher = std::process::id() as c_int;
    // SAFETY: prctl and getppid are async-signal-safe, as code between fork and exec must be.
    unsafe {
        cmd.pre_exec(move || {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher died before prctl took effect.
            if getppid() != launcher {
                return Err(std::io::Error::other("the launcher exited"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_launcher(_: &mut Command) {}

/// The shell command a remote rank runs: the working directory, the environment, the ring's host file
/// written to a temporary file there, then zmlx in place of the shell.
fn remote_script(
    exe: &Path,
    args: &[String],
    env: &[(String, String)],
    hostfile_text: Option<&str>,
) -> Result<String> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let mut s = format!("cd {} && ", sh_quote(&cwd.display().to_string()));
    for (k, v) in env {
        if k == ENV_HOSTFILE {
            continue;
        }
        s += &format!("export {k}={}; ", sh_quote(v));
    }
    if let Some(text) = hostfile_text {
        s += &format!(
            "f=$(mktemp) && printf '%s' {} > \"$f\" && export {ENV_HOSTFILE}=\"$f\" && ",
            sh_quote(text)
        );
    }
    s += "exec ";
    s += &sh_quote(&exe.display().to_string());
    for a in args {
        s.push(' ');
        s += &sh_quote(a);
    }
    Ok(s)
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Copies a rank's output line by line, prefixed with its rank, to the launcher's stdout or stderr.
fn forward(
    r: usize,
    pipe: impl Read + Send + 'static,
    is_err: bool,
    last: Option<Arc<Mutex<String>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buf);
            // ssh -tt ends lines with \r\n.
            let line = text.trim_end_matches(['\n', '\r']);
            if let Some(last) = &last {
                if !line.trim().is_empty() {
                    if let Ok(mut l) = last.lock() {
                        *l = line.to_string();
                    }
                }
            }
            // A closed stdout/stderr (the launcher's own reader went away) leaves nothing to do.
            let _ = if is_err {
                writeln!(std::io::stderr().lock(), "[rank {r}] {line}")
            } else {
                writeln!(std::io::stdout().lock(), "[rank {r}] {line}")
            };
        }
    })
}

/// Waits for every rank; on the first failure (or the timeout) kills the rest and fails with its status.
/// A rank that failed only because it lost a peer ([`PEER_LOST_EXIT_CODE`]) is not the cause: the launcher
/// waits up to [`PEER_LOST_GRACE`] for the rank that went away to exit, and reports that one.
fn supervise(mut ranks: Vec<Rank>, timeout: Option<Duration>) -> Result<()> {
    let t0 = Instant::now();
    // Failed ranks in the order they were seen, with when the first was seen.
    let mut failures: Vec<usize> = Vec::new();
    let mut first_failure: Option<Instant> = None;
    let mut timed_out = false;
    loop {
        for (i, rk) in ranks.iter_mut().enumerate() {
            if rk.status.is_none() {
                if let Some(s) = rk.child.try_wait()? {
                    rk.status = Some(s);
                    if !s.success() {
                        failures.push(i);
                        first_failure.get_or_insert_with(Instant::now);
                    }
                }
            }
        }
        let grace_over = first_failure.is_some_and(|t| t.elapsed() >= PEER_LOST_GRACE);
        if cause(&failures, &ranks).is_some()
            || grace_over
            || ranks.iter().all(|r| r.status.is_some())
        {
            break;
        }
        if timeout.is_some_and(|t| t0.elapsed() >= t) {
            timed_out = true;
            break;
        }
        std::thread::sleep(POLL);
    }
    let failed = cause(&failures, &ranks).or(failures.first().copied());
    let lost: Vec<usize> = failures
        .iter()
        .filter(|&&i| Some(i) != failed && lost_a_peer(&ranks[i]))
        .map(|&i| ranks[i].rank)
        .collect();
    let stopped = stop(&mut ranks);
    let elapsed = t0.elapsed().as_secs_f64();
    let stopped_note = if stopped.is_empty() {
        String::new()
    } else {
        format!("; stopped rank(s) {}", join(&stopped))
    };
    let stopped_note = if lost.is_empty() {
        stopped_note
    } else {
        format!("; rank(s) {} lost a peer{stopped_note}", join(&lost))
    };
    if let Some(i) = failed {
        let rk = &ranks[i];
        let status = rk.status.map_or("failed".to_string(), describe);
        let last = rk.last_err.lock().map(|l| l.clone()).unwrap_or_default();
        let code = rk
            .status
            .and_then(|s| s.code())
            .and_then(|c| u8::try_from(c).ok())
            .filter(|c| *c != 0)
            .unwrap_or(1);
        return Err(Exit {
            code,
            msg: format!(
                "rank {} on {} {status} after {elapsed:.1} s{}{stopped_note}",
                rk.rank,
                rk.host,
                if last.is_empty() {
                    String::new()
                } else {
                    format!(" ({last})")
                }
            ),
        }
        .into());
    }
    if timed_out {
        return Err(Exit {
            code: 124,
            msg: format!("timed out after {elapsed:.1} s (--timeout){stopped_note}"),
        }
        .into());
    }
    Ok(())
}

/// Kills the ranks still running, reaps every rank and drains its output; returns the ranks it killed.
fn stop(ranks: &mut [Rank]) -> Vec<usize> {
    let mut killed = Vec::new();
    for rk in ranks.iter_mut() {
        if rk.status.is_none() {
            if let Ok(None) = rk.child.try_wait() {
                // Already exited between the two looks is fine: kill then fails and wait reaps it.
                let _ = rk.child.kill();
                killed.push(rk.rank);
            }
        }
    }
    for rk in ranks.iter_mut() {
        if rk.status.is_none() {
            rk.status = rk.child.wait().ok();
        }
        for f in rk.forwarders.drain(..) {
            let _ = f.join();
        }
    }
    killed
}

/// The first of the failed ranks that did not fail only for a lost peer.
fn cause(failures: &[usize], ranks: &[Rank]) -> Option<usize> {
    failures.iter().copied().find(|&i| !lost_a_peer(&ranks[i]))
}

fn lost_a_peer(rk: &Rank) -> bool {
    rk.status
        .and_then(|s| s.code())
        .is_some_and(|c| c == i32::from(PEER_LOST_EXIT_CODE))
}

fn describe(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "failed".to_string(),
    }
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_file_errors_name_the_problem() {
        for (text, needle) in [
            ("nope", "not JSON"),
            ("[]", "no hosts"),
            ("{\"host\": []}", "\"hosts\" list"),
            ("[{\"ips\": [\"127.0.0.1\"]}]", "expected {\"ssh\""),
            ("[{\"ssh\": \"a\"}]", "no \"ips\""),
            (
                "[{\"ssh\": \"a\", \"ips\": [\"a.b\"]}]",
                "not an IP address",
            ),
            (
                "{\"hosts\": [{\"ssh\": \"a\", \"ips\": [\"127.0.0.1\"]}], \"envs\": [\"X\"]}",
                "not KEY=VALUE",
            ),
        ] {
            let e = parse_hostfile(text).err().map(|e| format!("{e:#}"));
            assert!(
                e.as_deref().is_some_and(|e| e.contains(needle)),
                "{text}: {e:?}"
            );
        }
        let f = parse_hostfile(
            "{\"backend\": \"ring\", \"envs\": [\"A=1=2\"], \"hosts\": [{\"ssh\": \"h\", \"ips\": [\"127.0.0.1\"]}, {\"ssh\": \"h\", \"ips\": [\"127.0.0.1\"]}]}",
        );
        let f = f.map_err(|e| e.to_string());
        assert!(
            matches!(&f, Ok(f) if f.hosts.len() == 2 && f.hosts[0].local && f.envs == [("A".to_string(), "1=2".to_string())])
        );
    }

    #[test]
    fn ports_are_distinct_and_consecutive_from_the_starting_port() {
        let h = Host {
            ssh: "h".into(),
            ips: vec!["127.0.0.1"
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))],
            local: true,
        };
        let hosts = vec![h.clone(), h.clone(), h];
        let free = assign_ports(&hosts, LaunchBackend::Ring, None).map_err(|e| e.to_string());
        let ports: Vec<u16> = free.iter().flatten().flatten().map(|a| a.port()).collect();
        assert_eq!(ports.len(), 3);
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
        let fixed =
            assign_ports(&hosts, LaunchBackend::Ring, Some(40000)).map_err(|e| e.to_string());
        let ports: Vec<u16> = fixed.iter().flatten().flatten().map(|a| a.port()).collect();
        assert_eq!(ports, [40000, 40001, 40002]);
        assert!(assign_ports(&hosts, LaunchBackend::Ring, Some(65535)).is_err());
    }

    #[test]
    fn remote_script_quotes_everything() {
        let s = remote_script(
            Path::new("/opt/zmlx"),
            &["generate".into(), "it's".into()],
            &[("MLX_RANK".into(), "1".into())],
            Some("[[\"1.2.3.4:5\"]]"),
        )
        .map_err(|e| e.to_string());
        let s = s.unwrap_or_default();
        assert!(s.contains("export MLX_RANK='1'; "), "{s}");
        assert!(
            s.contains("printf '%s' '[[\"1.2.3.4:5\"]]' > \"$f\""),
            "{s}"
        );
        assert!(s.ends_with("exec '/opt/zmlx' 'generate' 'it'\\''s'"), "{s}");
    }
}
