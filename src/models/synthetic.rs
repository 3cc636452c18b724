//! Synthetic models: random weights from a seed for exactly the tensors a config's description
//! ([`super::schema`]) names, quantized as mlx-lm's converter would (per the config's `quantization`
//! block), under mlx-lm's key names — for any config, including the real models' dims.

use std::collections::HashSet;

use super::config::ModelConfig;
use super::schema::{Init, Kind, ModelSpec};
use crate::checkpoint::Tensors;
use crate::error::{Error, Result};
use crate::moe::ExpertRange;
use crate::quant::quantize;

pub use super::preset::{gpt_oss_quant, preset, presets, qwen3_quant, with_quant, Preset};

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a of the tensor name mixed with the seed: each tensor has its own stream.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Number of tensors [`synth_tensors`] generates for `cfg` (before quantization adds scales/biases).
pub fn param_count(cfg: &ModelConfig) -> usize {
    cfg.schema().params().len()
}

/// This machine's memory in bytes (`MemTotal` of /proc/meminfo), where known.
fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// Refuses a model that cannot fit in memory: its weights in `cfg`'s dtype plus its largest tensor
/// drawn in float32 before conversion and quantization. MLX 0.32.4's CPU allocator returns a null
/// buffer when the OS refuses memory and its kernels write through it (SIGSEGV), so the check comes
/// before MLX allocates anything.
fn check_fits(cfg: &ModelConfig, spec: &ModelSpec) -> Result<()> {
    let Some(mem) = total_memory() else {
        return Ok(());
    };
    let weights = spec.nbytes(cfg.dtype);
    let largest = spec.params().into_iter().max_by_key(|p| p.numel());
    let draw = largest.map_or(0, |p| p.numel().saturating_mul(4));
    let need = weights.saturating_add(draw);
    if need > mem {
        let gb = |b: u64| b as f64 / 1e9;
        return Err(Error::invalid(format!(
            "the synthetic model needs {:.1} GB ({:.1} GB of weights, {:.1} GB to draw its largest tensor '{}'), more than this machine's {:.1} GB of memory",
            gb(need),
            gb(weights),
            gb(draw),
            largest.map_or("", |p| p.name.as_str()),
            gb(mem)
        )));
    }
    Ok(())
}

/// Random weights for `cfg` from `seed`, quantized per the config, under mlx-lm's key names.
/// `progress(done, total, name)` is called after each parameter.
pub fn synth_tensors(
    cfg: &ModelConfig,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Tensors> {
    synth_tensors_of(cfg, &cfg.schema(), seed, None, progress)
}

/// Random weights for the parameters `spec` describes, in `cfg`'s float dtype (a tensor's values
/// depend only on `seed` and its name, shape, initialisation and quantization). With `experts`, the
/// routed expert stacks keep only those experts: each is drawn whole (so its values are the single
/// process's) and cut along the expert axis before quantization, which works per row.
pub fn synth_tensors_of(
    cfg: &ModelConfig,
    spec: &ModelSpec,
    seed: u64,
    experts: Option<ExpertRange>,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Tensors> {
    check_fits(cfg, spec)?;
    let modules: HashSet<&str> = spec.expert_modules().into_iter().collect();
    let ps = spec.params();
    let total = ps.len();
    let mut t = Tensors::new(format!("<synthetic seed {seed}>"));
    for (i, p) in ps.into_iter().enumerate() {
        let key = mlx_rs::random::key(name_seed(seed, &p.name))?;
        let (std, one) = match p.init {
            Init::Normal(s) => (s, false),
            Init::OnePlus(s) => (s, true),
        };
        let mut a = mlx_rs::random::normal::<f32>(&p.shape[..], 0.0, std, &key)?;
        if one {
            a = mlx_rs::ops::add(&a, mlx_rs::Array::from_f32(1.0))?;
        }
        let dtype = match p.kind {
            Kind::Float32 => mlx_rs::Dtype::Float32,
            _ => cfg.dtype,
        };
        let mut a = a.as_dtype(dtype)?;
        if let Some(r) = experts {
            let stacked = p
                .name
                .rsplit_once('.')
                .is_some_and(|(m, _)| modules.contains(m));
            if stacked {
                // A gather, not a slice: a slice would share (and keep alive) the whole stack's buffer.
                let rows = mlx_rs::Array::from_iter(r.first..r.first + r.count, &[r.count]);
                a = a.take_axis(&rows, 0)?;
            }
        }
        match p.kind {
            Kind::Weight(Some(q)) => {
                let qw = quantize(&a, q.mode, Some(q.group_size), Some(q.bits))?;
                qw.eval()?;
                let m = p.module();
                t.insert(format!("{m}.weight"), qw.w);
                t.insert(format!("{m}.scales"), qw.scales);
                if let Some(b) = qw.biases {
                    t.insert(format!("{m}.biases"), b);
                }
            }
            Kind::Weight(None) | Kind::Float | Kind::Float32 => {
                a.eval()?;
                t.insert(p.name.clone(), a);
            }
        }
        progress(i + 1, total, &p.name);
    }
    Ok(t)
}
