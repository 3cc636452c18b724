//! Distributed communication over MLX's own backends (`mx.distributed`): process groups and collectives.
//!
//! [`init`] joins (or creates) the group of the processes started together — by `zmlx launch`, `mlx.launch`,
//! `mpirun` or by hand — through one of MLX's backends ([`Backend`]): `ring` (TCP between ranks, each rank
//! talking to its two neighbours; MLX's CPU backend), `mpi`, `nccl` (CUDA GPUs) or `jaccl` (RDMA); `any` picks
//! the first one configured. Without any configuration it returns the singleton group (rank 0 of 1), on which
//! the reductions and `all_gather` return their input, so code written against a [`Group`] runs unchanged in
//! one process.
//!
//! The collectives ([`all_sum`], [`all_max`], [`all_min`], [`all_gather`], [`sum_scatter`], [`send`],
//! [`recv`], [`recv_like`]) are lazy graph nodes like every MLX op: they communicate when evaluated. They run
//! on the backend's communication stream (the ring backend's is the CPU's, NCCL's the GPU's), so the same call
//! works for every backend.
//!
//! How each backend finds its peers (environment variables, read by MLX at [`init`]):
//! - `ring`: `MLX_RANK` and `MLX_HOSTFILE`, a JSON file listing, in rank order, each rank's `"ip:port"`
//!   addresses (one per connection; every rank the same count), e.g. `[["127.0.0.1:5000"], ["127.0.0.1:5001"]]`.
//!   Rank r listens on its own addresses and connects to rank r+1's. Only neighbours can `send`/`recv`; the
//!   ring cannot [`Group::split`] nor [`sum_scatter`].
//! - `nccl`: `MLX_RANK`, `MLX_WORLD_SIZE`, `NCCL_HOST_IP` and `NCCL_PORT` (rank 0's address).
//! - `mpi`: whatever `mpirun` sets (and `MLX_MPI_LIBNAME` for a non-default libmpi).
//!
//! Before MLX sees them, [`init`] checks the ring and NCCL variables it can check (a rank outside the group, a
//! host file that is not MLX's format, a size that disagrees with `MLX_WORLD_SIZE`, half a configuration) and
//! names what is wrong; MLX itself would read a malformed rank as 0 or wait for peers that do not exist.

use std::ffi::CString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};

use crate::array::{array_op, last_mlx_error};
use crate::error::{Error, Result};

/// The environment variable holding this process's rank (ring, NCCL).
pub const ENV_RANK: &str = "MLX_RANK";
/// The ring backend's host file.
pub const ENV_HOSTFILE: &str = "MLX_HOSTFILE";
/// The number of ranks (NCCL; checked against the ring's host file when set).
pub const ENV_WORLD_SIZE: &str = "MLX_WORLD_SIZE";

/// The exit status of a rank that failed only because a peer went away (`EX_TEMPFAIL`): `zmlx launch`
/// reports another rank's failure, the cause, before one with this status.
pub const PEER_LOST_EXIT_CODE: u8 = 75;

/// The message MLX's ring backend fails pending collectives with when a peer's sockets close (MLX 0.32.4,
/// `distributed/ring/ring.cpp`); MLX raises a plain `std::runtime_error`, so the message is all there is.
const RING_PEER_LOST: &str = "[ring] connection to a peer was lost";

impl Error {
    /// Whether this is a collective that failed because a peer process went away (so the cause is elsewhere).
    pub fn is_peer_lost(&self) -> bool {
        matches!(self, Error::Mlx { msg, .. } if msg.contains(RING_PEER_LOST))
    }
}

/// One of MLX's distributed backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The first backend that is configured (NCCL on a CUDA build, then ring, MPI, JACCL), else the
    /// singleton group.
    Any,
    /// TCP sockets in a ring of processes.
    Ring,
    /// MPI (MLX loads libmpi at run time).
    Mpi,
    /// NCCL between CUDA GPUs.
    Nccl,
    /// RDMA over Thunderbolt (macOS).
    Jaccl,
}

impl Backend {
    /// Every backend, `Any` first.
    pub const ALL: [Backend; 5] = [
        Backend::Any,
        Backend::Ring,
        Backend::Mpi,
        Backend::Nccl,
        Backend::Jaccl,
    ];

    /// MLX's name of the backend.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Any => "any",
            Backend::Ring => "ring",
            Backend::Mpi => "mpi",
            Backend::Nccl => "nccl",
            Backend::Jaccl => "jaccl",
        }
    }

    fn c_name(self) -> CString {
        // Names are static ASCII without NUL bytes.
        CString::new(self.name()).unwrap_or_default()
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown distributed backend '{s}' (expected any, ring, mpi, nccl or jaccl)"
                ))
            })
    }
}

/// Whether the linked MLX build has `backend` (it may still be unconfigured in this process).
pub fn is_available(backend: Backend) -> bool {
    let name = backend.c_name();
    // SAFETY: a valid NUL-terminated string for the duration of the call.
    unsafe { mlx_sys::mlx_distributed_is_available(name.as_ptr()) }
}

/// A group of processes that communicate: its rank in it and its size are fixed at creation.
///
/// Collectives take the group by reference; pass `&Group` down to whatever communicates.
pub struct Group {
    raw: mlx_sys::mlx_distributed_group,
    rank: usize,
    size: usize,
}

// SAFETY: the handle owns an `mx::distributed::Group` (a shared pointer to the backend's communicator), which
// MLX uses from its stream threads; it is never mutated after creation.
unsafe impl Send for Group {}
// SAFETY: as above; every method only reads it.
unsafe impl Sync for Group {}

impl Group {
    /// Takes ownership of a handle returned by the C API.
    #[track_caller]
    fn from_raw(raw: mlx_sys::mlx_distributed_group) -> Result<Group> {
        if raw.ctx.is_null() {
            return Err(Error::Internal(
                "MLX reported success but returned no distributed group".into(),
            ));
        }
        // SAFETY: a live group handle.
        let (rank, size) = unsafe {
            (
                mlx_sys::mlx_distributed_group_rank(raw),
                mlx_sys::mlx_distributed_group_size(raw),
            )
        };
        // Owned from here on, so an early return frees it.
        let mut g = Group {
            raw,
            rank: 0,
            size: 0,
        };
        if rank < 0 || size < 1 || rank >= size {
            return Err(Error::mlx(format!(
                "distributed group with rank {rank} of size {size}: {}",
                last_mlx_error()
            )));
        }
        g.rank = rank as usize;
        g.size = size as usize;
        Ok(g)
    }

    /// This process's rank, in `0..size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes in the group.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether the group is this process alone.
    pub fn is_singleton(&self) -> bool {
        self.size == 1
    }

    /// Splits the group: processes passing the same `color` form a new group, ordered by `key` (by their rank
    /// here when `None`). Collective: every process of the group must call it. Not every backend can split
    /// (MPI can; the ring and the singleton group cannot, which is an error).
    #[track_caller]
    pub fn split(&self, color: i32, key: Option<i32>) -> Result<Group> {
        // SAFETY: a fresh empty handle, filled on success.
        let mut res = unsafe { mlx_sys::mlx_distributed_group_new() };
        let rc = unsafe {
            mlx_sys::mlx_distributed_group_split(&mut res, self.raw, color, key.unwrap_or(-1))
        };
        if rc != 0 {
            unsafe { mlx_sys::mlx_distributed_group_free(res) };
            return Err(Error::mlx(last_mlx_error()));
        }
        Group::from_raw(res)
    }

    /// The raw C handle (borrowed; valid while `self` lives).
    pub fn as_raw(&self) -> mlx_sys::mlx_distributed_group {
        self.raw
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once.
        unsafe { mlx_sys::mlx_distributed_group_free(self.raw) };
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Group(rank {} of {})", self.rank, self.size)
    }
}

/// Joins the group of `backend` (MLX caches it: a second call returns the same group).
///
/// When `backend` is not configured in this process (no launcher set its variables) the result is the
/// singleton group, or, with `strict`, an error. The variables of the ring and NCCL backends are checked
/// first (see the module documentation); a configuration that is present but wrong is an error either way.
#[track_caller]
pub fn init(strict: bool, backend: Backend) -> Result<Group> {
    check_env(backend)?;
    let name = backend.c_name();
    // SAFETY: a fresh empty handle, filled on success; `name` outlives the call.
    let mut res = unsafe { mlx_sys::mlx_distributed_group_new() };
    let rc = unsafe { mlx_sys::mlx_distributed_init(&mut res, strict, name.as_ptr()) };
    if rc != 0 {
        unsafe { mlx_sys::mlx_distributed_group_free(res) };
        return Err(Error::mlx(last_mlx_error()));
    }
    Group::from_raw(res)
}

/// The ring backend's configuration as `MLX_RANK` / `MLX_HOSTFILE` give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// This process's rank.
    pub rank: usize,
    /// The host file.
    pub hostfile: PathBuf,
    /// Each rank's addresses, in rank order.
    pub hosts: Vec<Vec<SocketAddr>>,
}

impl RingConfig {
    /// The ring configuration of this process: `None` when neither variable is set; an error when only one
    /// is, or when either is wrong (see [`parse_ring_hostfile`]).
    pub fn from_env() -> Result<Option<RingConfig>> {
        let rank = std::env::var_os(ENV_RANK);
        let hostfile = std::env::var_os(ENV_HOSTFILE);
        let (rank, hostfile) = match (rank, hostfile) {
            (None, None) => return Ok(None),
            (Some(r), Some(h)) => (r, PathBuf::from(h)),
            (r, _) => {
                let (set, unset) = if r.is_some() {
                    (ENV_RANK, ENV_HOSTFILE)
                } else {
                    (ENV_HOSTFILE, ENV_RANK)
                };
                return Err(Error::config(format!(
                    "ring backend: {set} is set but {unset} is not (both, or neither for one process)"
                )));
            }
        };
        let text = std::fs::read_to_string(&hostfile).map_err(|e| Error::io(&hostfile, e))?;
        let hosts = parse_ring_hostfile(&text).map_err(|msg| {
            Error::config(format!("ring host file {}: {msg}", hostfile.display()))
        })?;
        let rank = parse_rank(&rank.to_string_lossy(), hosts.len(), "the ring's host file")?;
        if let Some(n) = world_size_env()? {
            if n != hosts.len() {
                return Err(Error::config(format!(
                    "{ENV_WORLD_SIZE}={n} but the ring's host file {} lists {} ranks",
                    hostfile.display(),
                    hosts.len()
                )));
            }
        }
        Ok(Some(RingConfig {
            rank,
            hostfile,
            hosts,
        }))
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.hosts.len()
    }
}

/// Parses the ring backend's host file (`MLX_HOSTFILE`): a JSON list with, for each rank in order, a
/// non-empty list of `"ip:port"` strings, every rank listing as many as the others, at least two ranks (one
/// process needs no ring). IPs only: MLX does not resolve host names here.
pub fn parse_ring_hostfile(text: &str) -> std::result::Result<Vec<Vec<SocketAddr>>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let ranks = value
        .as_array()
        .ok_or("expected a JSON list of ranks, each a list of \"ip:port\" strings")?;
    let mut hosts = Vec::with_capacity(ranks.len());
    for (r, entry) in ranks.iter().enumerate() {
        let addrs = entry
            .as_array()
            .ok_or_else(|| format!("rank {r}: expected a list of \"ip:port\" strings"))?;
        if addrs.is_empty() {
            return Err(format!("rank {r}: no address"));
        }
        let mut parsed = Vec::with_capacity(addrs.len());
        for a in addrs {
            let s = a
                .as_str()
                .ok_or_else(|| format!("rank {r}: {a} is not an \"ip:port\" string"))?;
            let addr: SocketAddr = s
                .parse()
                .map_err(|_| format!("rank {r}: '{s}' is not an ip:port address"))?;
            if addr.port() == 0 {
                return Err(format!("rank {r}: '{s}' has port 0"));
            }
            parsed.push(addr);
        }
        hosts.push(parsed);
    }
    if hosts.len() < 2 {
        return Err(format!(
            "{} rank(s): a ring needs at least 2 (leave {ENV_HOSTFILE} unset for one process)",
            hosts.len()
        ));
    }
    let per_rank = hosts[0].len();
    if let Some((r, h)) = hosts.iter().enumerate().find(|(_, h)| h.len() != per_rank) {
        return Err(format!(
            "rank {r} has {} address(es) but rank 0 has {per_rank}: every rank needs as many connections",
            h.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = hosts.iter().flatten().find(|a| !seen.insert(**a)) {
        return Err(format!("address {dup} is listed twice"));
    }
    Ok(hosts)
}

/// Writes a ring host file in MLX's format.
pub fn write_ring_hostfile(path: &Path, hosts: &[Vec<SocketAddr>]) -> Result<()> {
    let list: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| h.iter().map(SocketAddr::to_string).collect())
        .collect();
    let text = serde_json::to_string(&list).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

fn parse_rank(s: &str, size: usize, what: &str) -> Result<usize> {
    let rank: usize = s.trim().parse().map_err(|_| {
        Error::config(format!(
            "{ENV_RANK}='{s}' is not a rank (a non-negative integer)"
        ))
    })?;
    if rank >= size {
        return Err(Error::config(format!(
            "{ENV_RANK}={rank} but {what} has {size} ranks (0..{size})"
        )));
    }
    Ok(rank)
}

fn world_size_env() -> Result<Option<usize>> {
    match std::env::var(ENV_WORLD_SIZE) {
        Err(_) => Ok(None),
        Ok(s) => match s.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(Error::config(format!(
                "{ENV_WORLD_SIZE}='{s}' is not a group size (a positive integer)"
            ))),
        },
    }
}

/// NCCL's variables, when `MLX_WORLD_SIZE` is set: the rank must be an integer inside the group.
fn check_nccl_env() -> Result<()> {
    if let Some(n) = world_size_env()? {
        if let Ok(r) = std::env::var(ENV_RANK) {
            parse_rank(&r, n, ENV_WORLD_SIZE)?;
        }
    }
    Ok(())
}

/// Checks what the backends `backend` may pick would read, before MLX reads it.
fn check_env(backend: Backend) -> Result<()> {
    match backend {
        Backend::Ring => RingConfig::from_env().map(|_| ()),
        Backend::Nccl => check_nccl_env(),
        Backend::Any => {
            if std::env::var_os(ENV_HOSTFILE).is_some() {
                RingConfig::from_env()?;
            }
            check_nccl_env()
        }
        Backend::Mpi | Backend::Jaccl => Ok(()),
    }
}

fn stream_default() -> mlx_sys::mlx_stream {
    // The empty stream handle: MLX then runs the op on the backend's communication stream.
    mlx_sys::mlx_stream {
        ctx: std::ptr::null_mut(),
    }
}

fn rank_arg(r: usize, group: &Group, what: &str) -> Result<i32> {
    if r >= group.size() {
        return Err(Error::invalid(format!(
            "{what} rank {r} is outside the group (size {})",
            group.size()
        )));
    }
    i32::try_from(r).map_err(|_| Error::invalid(format!("{what} rank {r} too large")))
}

/// The element-wise sum of `x` over the group (every rank gets it). `x` has the same shape on every rank.
#[track_caller]
pub fn all_sum(x: &Array, group: &Group) -> Result<Array> {
    array_op(|res| unsafe {
        mlx_sys::mlx_distributed_all_sum(res, x.as_ptr(), group.raw, stream_default())
    })
}

/// The element-wise maximum of `x` over the group.
#[track_caller]
pub fn all_max(x: &Array, group: &Group) -> Result<Array> {
    array_op(|res| unsafe {
        mlx_sys::mlx_distributed_all_max(res, x.as_ptr(), group.raw, stream_default())
    })
}

/// The element-wise minimum of `x` over the group.
#[track_caller]
pub fn all_min(x: &Array, group: &Group) -> Result<Array> {
    array_op(|res| unsafe {
        mlx_sys::mlx_distributed_all_min(res, x.as_ptr(), group.raw, stream_default())
    })
}

/// Every rank's `x` concatenated in rank order along the first axis (a scalar becomes a vector of `size`).
/// In the singleton group, `x` itself.
#[track_caller]
pub fn all_gather(x: &Array, group: &Group) -> Result<Array> {
    array_op(|res| unsafe {
        mlx_sys::mlx_distributed_all_gather(res, x.as_ptr(), group.raw, stream_default())
    })
}

/// The sum over the group, scattered: rank r gets the r-th of `size` equal slices (first axis) of
/// `all_sum(x)`. Not every backend has it (NCCL and MPI do, the ring does not).
#[track_caller]
pub fn sum_scatter(x: &Array, group: &Group) -> Result<Array> {
    array_op(|res| unsafe {
        mlx_sys::mlx_distributed_sum_scatter(res, x.as_ptr(), group.raw, stream_default())
    })
}

/// Sends `x` to rank `dst`; the data leaves when the returned array is evaluated, and the evaluation waits
/// until it is sent. A [`recv`] waits until the data arrives, so two ranks exchanging data must not both
/// receive first: evaluate a send and a receive separately, in an order the peers agree on (e.g. even ranks
/// send first, odd ranks receive first). Evaluating both in one `eval` leaves the order to MLX, which may
/// start the receive (it has no inputs) on every rank. The ring backend only sends to its neighbours,
/// `rank ± 1`.
#[track_caller]
pub fn send(x: &Array, dst: usize, group: &Group) -> Result<Array> {
    let dst = rank_arg(dst, group, "destination")?;
    array_op(|res| unsafe {
        mlx_sys::mlx_distributed_send(res, x.as_ptr(), dst, group.raw, stream_default())
    })
}

/// Receives an array of `shape` and `dtype` from rank `src` (which [`send`]s one of that shape and dtype).
#[track_caller]
pub fn recv(shape: &[i32], dtype: Dtype, src: usize, group: &Group) -> Result<Array> {
    let src = rank_arg(src, group, "source")?;
    array_op(|res| unsafe {
        mlx_sys::mlx_distributed_recv(
            res,
            shape.as_ptr(),
            shape.len(),
            dtype.into(),
            src,
            group.raw,
            stream_default(),
        )
    })
}

/// [`recv`] with the shape and dtype of `like`.
#[track_caller]
pub fn recv_like(like: &Array, src: usize, group: &Group) -> Result<Array> {
    let src = rank_arg(src, group, "source")?;
    array_op(|res| unsafe {
        mlx_sys::mlx_distributed_recv_like(res, like.as_ptr(), src, group.raw, stream_default())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfile_format() {
        let ok = parse_ring_hostfile(r#"[["127.0.0.1:5000"], ["127.0.0.1:5001"]]"#);
        assert_eq!(ok.map(|h| h.len()), Ok(2));
        for (text, needle) in [
            ("{", "not JSON"),
            (r#"{"hosts": []}"#, "expected a JSON list"),
            (r#"[["127.0.0.1:5000"]]"#, "at least 2"),
            (r#"[["127.0.0.1:5000"], []]"#, "rank 1: no address"),
            (r#"[["127.0.0.1:5000"], ["host:5001"]]"#, "not an ip:port"),
            (
                r#"[["127.0.0.1:5000"], [5001]]"#,
                "not an \"ip:port\" string",
            ),
            (r#"[["127.0.0.1:5000"], ["127.0.0.1:0"]]"#, "port 0"),
            (
                r#"[["127.0.0.1:5000"], ["127.0.0.1:5001", "127.0.0.1:5002"]]"#,
                "as many connections",
            ),
            (
                r#"[["127.0.0.1:5000"], ["127.0.0.1:5000"]]"#,
                "listed twice",
            ),
        ] {
            let e = parse_ring_hostfile(text).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn backend_names_round_trip() {
        for b in Backend::ALL {
            assert_eq!(b.name().parse::<Backend>().ok(), Some(b));
        }
        assert!("tcp".parse::<Backend>().is_err());
    }
}
