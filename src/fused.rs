//! Safe surface of zmlx's fused MoE primitives (C API `mlx_local/mlx/c/moe.h`, FFI in [`crate::ffi`]):
//!
//! - [`gather_qmm_swiglu`]: `act(gather_qmm(x, gate), gather_qmm(x, up))` in one pass, with optional
//!   per-expert biases and gpt-oss's clamped activation;
//! - [`gather_qmm_combine`]: `sum_j scores[.., j] * (gather_qmm(h, down)[.., j] + bias[idx[.., j]])`;
//! - [`quantized_linear`]: one quantized linear layer with float32 accumulation (`gather_qmm_combine` with a
//!   single expert and score 1), used by the fused path for every quantized non-expert layer;
//! - [`add_rms_norm`]: a decoder layer's residual add and the RMS normalization after it, one pass, two
//!   outputs.
//!
//! Gradients: on CPU streams `vjp` / `jvp` (mlx-rs's `transforms::grad`, `value_and_grad`, ...) with respect
//! to every floating input that is not a quantized weight (`x` / `h`, scores, expert biases, the norm's
//! inputs and weight) are those of the composed reference; quantized weights and indices are constants (an
//! error names them). On CUDA streams the fused MoE kernels' nodes have no derivative.
//!
//! Each has a `_reference` twin computed from MLX's own composed ops with the same arguments. Weights are
//! [`QuantizedWeight`]s in the `transpose = true` layout (`[E, N, K]` logical). All functions validate what
//! they can see and return MLX's message as [`Error::Mlx`] otherwise; data-dependent errors (an expert
//! index out of range) surface at evaluation.

use std::ffi::{CStr, CString};

use mlx_rs::{ops, Array};

use crate::array::{array_op, opt_int, opt_ptr, pair_op, stream};
use crate::error::{Error, Result};
use crate::ffi;
use crate::quant::QuantizedWeight;

/// The expert activation applied to (gate, up).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// `silu(gate) * up`.
    Swiglu,
    /// gpt-oss: `g = min(gate, limit)`, `u = clip(up, -limit, limit)`, `(u + 1) * g * sigmoid(alpha * g)`.
    SwigluOai {
        /// 1.702 in gpt-oss.
        alpha: f32,
        /// 7.0 in gpt-oss.
        limit: f32,
    },
}

impl Activation {
    /// gpt-oss's constants.
    pub const GPT_OSS: Activation = Activation::SwigluOai {
        alpha: 1.702,
        limit: 7.0,
    };

    /// Applies the activation as composed MLX ops (what mlx-lm does).
    pub fn apply(&self, gate: &Array, up: &Array) -> Result<Array> {
        match *self {
            Activation::Swiglu => {
                let silu = ops::multiply(gate, ops::sigmoid(gate)?)?;
                Ok(ops::multiply(&silu, up)?)
            }
            Activation::SwigluOai { alpha, limit } => {
                let dt = gate.dtype();
                let lim = Array::from_f32(limit).as_dtype(dt)?;
                let neg = Array::from_f32(-limit).as_dtype(dt)?;
                let g = ops::minimum(gate, &lim)?;
                let u = ops::minimum(ops::maximum(up, &neg)?, &lim)?;
                let a = Array::from_f32(alpha).as_dtype(dt)?;
                let glu = ops::multiply(&g, ops::sigmoid(ops::multiply(&g, &a)?)?)?;
                let one = Array::from_f32(1.0).as_dtype(dt)?;
                Ok(ops::multiply(ops::add(&u, &one)?, &glu)?)
            }
        }
    }
}

fn opt_float(v: Option<f32>) -> mlx_sys::mlx_optional_float {
    mlx_sys::mlx_optional_float {
        value: v.unwrap_or(0.0),
        has_value: v.is_some(),
    }
}

fn act_args(a: Activation) -> (&'static CStr, Option<f32>, Option<f32>) {
    match a {
        Activation::Swiglu => (c"swiglu", None, None),
        Activation::SwigluOai { alpha, limit } => (c"gpt_oss", Some(alpha), Some(limit)),
    }
}

fn check_pair(gate: &QuantizedWeight, up: &QuantizedWeight) -> Result<()> {
    if !gate.same_quantization(up) {
        return Err(Error::invalid(format!(
            "gate ({} {}-bit g{}) and up ({} {}-bit g{}) must share their quantization",
            gate.mode, gate.bits, gate.group_size, up.mode, up.bits, up.group_size
        )));
    }
    if gate.w.shape() != up.w.shape() {
        return Err(Error::invalid(format!(
            "gate {:?} and up {:?} projections differ in shape",
            gate.w.shape(),
            up.w.shape()
        )));
    }
    Ok(())
}

/// The optional arguments of [`gather_qmm_swiglu`] and its reference twin; `Default` is "none of them":
/// arange indices over x's batch and over the experts, unsorted, [`Activation::Swiglu`], no expert biases.
#[derive(Clone, Copy)]
pub struct SwigluArgs<'a> {
    /// Indices into x's batch, broadcast with `rhs_indices`.
    pub lhs_indices: Option<&'a Array>,
    /// Expert indices, broadcast with `lhs_indices`.
    pub rhs_indices: Option<&'a Array>,
    /// The caller sorted the indices (a hint, as in `gather_qmm`).
    pub sorted_indices: bool,
    /// The activation applied to (gate, up).
    pub activation: Activation,
    /// Per-expert additive bias of the gate projection, `[E..., N]`.
    pub gate_bias: Option<&'a Array>,
    /// Per-expert additive bias of the up projection, `[E..., N]`.
    pub up_bias: Option<&'a Array>,
}

impl Default for SwigluArgs<'_> {
    fn default() -> Self {
        SwigluArgs {
            lhs_indices: None,
            rhs_indices: None,
            sorted_indices: false,
            activation: Activation::Swiglu,
            gate_bias: None,
            up_bias: None,
        }
    }
}

#[track_caller]
fn swiglu(
    reference: bool,
    x: &Array,
    gate: &QuantizedWeight,
    up: &QuantizedWeight,
    a: &SwigluArgs,
) -> Result<Array> {
    check_pair(gate, up)?;
    let f = if reference {
        ffi::mlx_gather_qmm_swiglu_reference
    } else {
        ffi::mlx_gather_qmm_swiglu
    };
    let (act, alpha, limit) = act_args(a.activation);
    let s = stream();
    array_op(|res| unsafe {
        f(
            res,
            x.as_ptr(),
            gate.w.as_ptr(),
            gate.scales.as_ptr(),
            opt_ptr(gate.biases.as_ref()),
            up.w.as_ptr(),
            up.scales.as_ptr(),
            opt_ptr(up.biases.as_ref()),
            opt_ptr(a.lhs_indices),
            opt_ptr(a.rhs_indices),
            true,
            opt_int(Some(gate.group_size)),
            opt_int(Some(gate.bits)),
            gate.mode.c_name().as_ptr(),
            a.sorted_indices,
            act.as_ptr(),
            opt_float(alpha),
            opt_float(limit),
            opt_ptr(a.gate_bias),
            opt_ptr(a.up_bias),
            s.as_ptr(),
        )
    })
}

/// Fused `act(gather_qmm(x, gate) + gate_bias[idx], gather_qmm(x, up) + up_bias[idx])`.
/// `x` `[..., M, K]`; result `B + [M, N]` where `B` is the broadcast batch of the indices.
///
/// ```
/// use zmlx::array::to_f32_vec;
/// use zmlx::fused::{gather_qmm_swiglu, gather_qmm_swiglu_reference, SwigluArgs};
/// use zmlx::mlx_rs::{random, Array};
/// use zmlx::quant::{quantize, QuantMode};
///
/// // 4 experts, intermediate size 64, hidden size 128; two tokens, two experts each.
/// let k = random::key(0).unwrap();
/// let w = random::normal::<f32>(&[4, 64, 128], 0.0, 0.1, &k).unwrap();
/// let q = quantize(&w, QuantMode::Affine, Some(64), Some(4)).unwrap();
/// let x = random::normal::<f32>(&[2, 1, 1, 128], 0.0, 1.0, &k).unwrap();
/// let idx = Array::from_slice(&[0u32, 3, 1, 2], &[2, 2]);
/// let args = SwigluArgs { rhs_indices: Some(&idx), ..Default::default() };
/// let h = gather_qmm_swiglu(&x, &q, &q, &args).unwrap();
/// assert_eq!(h.shape(), &[2, 2, 1, 64]);
/// // The values of MLX's composed ops, to float32 rounding.
/// let composed = gather_qmm_swiglu_reference(&x, &q, &q, &args).unwrap();
/// let (got, want) = (to_f32_vec(&h).unwrap(), to_f32_vec(&composed).unwrap());
/// assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-4 * (1.0 + w.abs())));
/// ```
#[track_caller]
pub fn gather_qmm_swiglu(
    x: &Array,
    gate: &QuantizedWeight,
    up: &QuantizedWeight,
    args: &SwigluArgs,
) -> Result<Array> {
    swiglu(false, x, gate, up, args)
}

/// [`gather_qmm_swiglu`] composed from MLX's own ops (two `gather_qmm`s, then the activation).
///
/// ```
/// use zmlx::array::to_f32_vec;
/// use zmlx::fused::{gather_qmm_swiglu_reference, Activation, SwigluArgs};
/// use zmlx::mlx_rs::{random, Array};
/// use zmlx::quant::{gather_qmm, quantize, QuantMode};
///
/// // 4 experts, intermediate size 64, hidden size 128; two tokens, two experts each.
/// let k = random::key(1).unwrap();
/// let gate_w = random::normal::<f32>(&[4, 64, 128], 0.0, 0.1, &k).unwrap();
/// let up_w = random::normal::<f32>(&[4, 64, 128], 0.0, 0.1, &random::key(2).unwrap()).unwrap();
/// let gate = quantize(&gate_w, QuantMode::Affine, Some(64), Some(4)).unwrap();
/// let up = quantize(&up_w, QuantMode::Affine, Some(64), Some(4)).unwrap();
/// let x = random::normal::<f32>(&[2, 1, 1, 128], 0.0, 1.0, &k).unwrap();
/// let idx = Array::from_slice(&[0u32, 3, 1, 2], &[2, 2]);
/// let args = SwigluArgs { rhs_indices: Some(&idx), ..Default::default() };
/// let h = gather_qmm_swiglu_reference(&x, &gate, &up, &args).unwrap();
/// assert_eq!(h.shape(), &[2, 2, 1, 64]);
/// // silu(gate) * up of the two projections.
/// let g = gather_qmm(&x, &gate, None, Some(&idx), true, false).unwrap();
/// let u = gather_qmm(&x, &up, None, Some(&idx), true, false).unwrap();
/// let want = to_f32_vec(&Activation::Swiglu.apply(&g, &u).unwrap()).unwrap();
/// let got = to_f32_vec(&h).unwrap();
/// assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-5 * (1.0 + w.abs())));
/// ```
#[track_caller]
pub fn gather_qmm_swiglu_reference(
    x: &Array,
    gate: &QuantizedWeight,
    up: &QuantizedWeight,
    args: &SwigluArgs,
) -> Result<Array> {
    swiglu(true, x, gate, up, args)
}

#[track_caller]
fn combine(
    reference: bool,
    h: &Array,
    down: &QuantizedWeight,
    rhs_indices: &Array,
    scores: &Array,
    bias: Option<&Array>,
) -> Result<Array> {
    let f = if reference {
        ffi::mlx_gather_qmm_combine_reference
    } else {
        ffi::mlx_gather_qmm_combine
    };
    let s = stream();
    array_op(|res| unsafe {
        f(
            res,
            h.as_ptr(),
            down.w.as_ptr(),
            down.scales.as_ptr(),
            opt_ptr(down.biases.as_ref()),
            rhs_indices.as_ptr(),
            scores.as_ptr(),
            true,
            opt_int(Some(down.group_size)),
            opt_int(Some(down.bits)),
            down.mode.c_name().as_ptr(),
            opt_ptr(bias),
            s.as_ptr(),
        )
    })
}

/// Fused down projection + score-weighted sum over the k experts: `h` `[..., k, M, K]`, `rhs_indices` and
/// `scores` `[..., k]` → `[..., M, N]` (dtype: promote of projection, bias and scores dtypes).
///
/// ```
/// use zmlx::array::to_f32_vec;
/// use zmlx::fused::{gather_qmm_combine, gather_qmm_combine_reference};
/// use zmlx::mlx_rs::{random, Array};
/// use zmlx::quant::{quantize, QuantMode};
///
/// // 4 experts projecting 64 back to 128; two tokens, two experts each, with their router scores.
/// let k = random::key(3).unwrap();
/// let w = random::normal::<f32>(&[4, 128, 64], 0.0, 0.1, &k).unwrap();
/// let down = quantize(&w, QuantMode::Affine, Some(64), Some(4)).unwrap();
/// let h = random::normal::<f32>(&[2, 2, 1, 64], 0.0, 1.0, &k).unwrap();
/// let idx = Array::from_slice(&[0u32, 3, 1, 2], &[2, 2]);
/// let scores = Array::from_slice(&[0.75f32, 0.25, 0.5, 0.5], &[2, 2]);
/// let y = gather_qmm_combine(&h, &down, &idx, &scores, None).unwrap();
/// assert_eq!(y.shape(), &[2, 1, 128]);
/// // The values of MLX's composed ops, to float32 rounding.
/// let composed = gather_qmm_combine_reference(&h, &down, &idx, &scores, None).unwrap();
/// let (got, want) = (to_f32_vec(&y).unwrap(), to_f32_vec(&composed).unwrap());
/// assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-4 * (1.0 + w.abs())));
/// ```
#[track_caller]
pub fn gather_qmm_combine(
    h: &Array,
    down: &QuantizedWeight,
    rhs_indices: &Array,
    scores: &Array,
    bias: Option<&Array>,
) -> Result<Array> {
    combine(false, h, down, rhs_indices, scores, bias)
}

/// [`gather_qmm_combine`] composed from MLX's own ops (`gather_qmm`, multiply by scores, sum).
///
/// ```
/// use zmlx::array::to_f32_vec;
/// use zmlx::fused::gather_qmm_combine_reference;
/// use zmlx::mlx_rs::{random, Array};
/// use zmlx::quant::{gather_qmm, quantize, QuantMode};
///
/// // 4 experts projecting 64 back to 128; two tokens, two experts each, with their router scores.
/// let k = random::key(4).unwrap();
/// let w = random::normal::<f32>(&[4, 128, 64], 0.0, 0.1, &k).unwrap();
/// let down = quantize(&w, QuantMode::Affine, Some(64), Some(4)).unwrap();
/// let h = random::normal::<f32>(&[2, 2, 1, 64], 0.0, 1.0, &k).unwrap();
/// let idx = Array::from_slice(&[0u32, 3, 1, 2], &[2, 2]);
/// let scores = Array::from_slice(&[0.75f32, 0.25, 0.5, 0.5], &[2, 2]);
/// let y = gather_qmm_combine_reference(&h, &down, &idx, &scores, None).unwrap();
/// assert_eq!(y.shape(), &[2, 1, 128]);
/// // Each token's expert outputs [2, 1, 128] weighted by its scores and summed.
/// let per_expert = gather_qmm(&h, &down, None, Some(&idx), true, false).unwrap();
/// let weighted = per_expert.multiply(scores.reshape(&[2, 2, 1, 1]).unwrap()).unwrap();
/// let want = to_f32_vec(&weighted.sum_axis(1, false).unwrap()).unwrap();
/// let got = to_f32_vec(&y).unwrap();
/// assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-5 * (1.0 + w.abs())));
/// ```
#[track_caller]
pub fn gather_qmm_combine_reference(
    h: &Array,
    down: &QuantizedWeight,
    rhs_indices: &Array,
    scores: &Array,
    bias: Option<&Array>,
) -> Result<Array> {
    combine(true, h, down, rhs_indices, scores, bias)
}

/// A single quantized linear layer `x @ dequantize(q).T (+ bias)` accumulated in float32.
///
/// MLX's CPU `quantized_matmul` accumulates float16 / bfloat16 dot products in half precision; this one
/// accumulates every dot product and the bias addition in float32 and rounds once. On CPU it runs the
/// [`gather_qmm_combine`] kernel with one "expert" (the `[N, K]` weight itself, no copy) and score 1, which
/// dequantizes each weight tile once for all `M` rows; on CUDA the fused combine kernel with one expert.
///
/// - `x`: `[..., K]`, float32 / float16 / bfloat16, `K = q.in_dims()`.
/// - `q`: a plain quantized matrix `[N, K]` (logical; `transpose = true` layout), any mode.
/// - `bias`: optional `[N]`, added in float32 before the single rounding.
/// - Result `[..., N]` in `quantized_matmul`'s dtype (promoted with the bias's, as adding it afterwards
///   would): `x`'s dtype for the fp modes and for `affine` whenever the scales share `x`'s dtype (every
///   mlx-lm checkpoint), so it drops in for `quantized_matmul(x, q, true) (+ bias)`.
///
/// ```
/// use zmlx::array::to_f32_vec;
/// use zmlx::fused::quantized_linear;
/// use zmlx::mlx_rs::{random, Array};
/// use zmlx::quant::{quantize, quantized_matmul, QuantMode};
///
/// // A [N = 32, K = 128] layer in 4-bit affine with a bias; three rows of input.
/// let k = random::key(5).unwrap();
/// let w = random::normal::<f32>(&[32, 128], 0.0, 0.1, &k).unwrap();
/// let q = quantize(&w, QuantMode::Affine, Some(64), Some(4)).unwrap();
/// let bias = Array::from_slice(&[0.5f32; 32], &[32]);
/// let x = random::normal::<f32>(&[3, 128], 0.0, 1.0, &k).unwrap();
/// let y = quantized_linear(&x, &q, Some(&bias)).unwrap();
/// assert_eq!(y.shape(), &[3, 32]);
/// // MLX's quantized_matmul plus the bias (float32 input: both accumulate in float32).
/// let mm = quantized_matmul(&x, &q, true).unwrap().add(&bias).unwrap();
/// let (got, want) = (to_f32_vec(&y).unwrap(), to_f32_vec(&mm).unwrap());
/// assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-4 * (1.0 + w.abs())));
/// ```
#[track_caller]
pub fn quantized_linear(x: &Array, q: &QuantizedWeight, bias: Option<&Array>) -> Result<Array> {
    if q.w.ndim() != 2 {
        return Err(Error::invalid(format!(
            "quantized_linear needs a [N, K] weight matrix, got packed shape {:?}",
            q.w.shape()
        )));
    }
    if !crate::array::is_float(x.dtype()) {
        return Err(Error::invalid(format!(
            "quantized_linear needs a float input, got {:?}",
            x.dtype()
        )));
    }
    let (n, k) = (q.out_dims(), q.in_dims());
    let xs = x.shape();
    if xs.last() != Some(&k) {
        return Err(Error::invalid(format!(
            "quantized_linear expects input dim {k}, got x shape {xs:?}"
        )));
    }
    let bias = match bias {
        Some(b) if b.shape() != [n] => {
            return Err(Error::invalid(format!(
                "bias has shape {:?}, expected [{n}]",
                b.shape()
            )))
        }
        Some(b) if !crate::array::is_float(b.dtype()) => {
            return Err(Error::invalid(format!(
                "bias must be a float array, got {:?}",
                b.dtype()
            )))
        }
        other => other,
    };
    let s = stream();
    array_op(|res| unsafe {
        ffi::mlx_fused_quantized_linear(
            res,
            x.as_ptr(),
            q.w.as_ptr(),
            q.scales.as_ptr(),
            opt_ptr(q.biases.as_ref()),
            opt_int(Some(q.group_size)),
            opt_int(Some(q.bits)),
            q.mode.c_name().as_ptr(),
            opt_ptr(bias),
            s.as_ptr(),
        )
    })
}

/// Which configurations of the fused ops run a fused kernel on this build's GPU (a sentence).
pub fn gpu_coverage() -> Result<String> {
    let mut p: *const std::os::raw::c_char = std::ptr::null();
    if unsafe { ffi::mlx_moe_gpu_coverage(&mut p) } != 0 || p.is_null() {
        return Err(Error::mlx(crate::array::last_mlx_error()));
    }
    Ok(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Threads of the fused CPU kernels (1..=256).
pub fn set_num_threads(n: i32) -> Result<()> {
    if unsafe { ffi::mlx_moe_set_num_threads(n) } != 0 {
        return Err(Error::mlx(crate::array::last_mlx_error()));
    }
    Ok(())
}

/// Threads the fused CPU kernels use.
pub fn num_threads() -> Result<i32> {
    let mut n = 0;
    if unsafe { ffi::mlx_moe_num_threads(&mut n) } != 0 {
        return Err(Error::mlx(crate::array::last_mlx_error()));
    }
    Ok(n)
}

/// Selects the SIMD level of the fused CPU kernels (`auto`, `avx2`, `portable`).
pub fn set_simd_level(level: &str) -> Result<()> {
    let c = CString::new(level).map_err(|_| Error::invalid("SIMD level contains NUL"))?;
    if unsafe { ffi::mlx_moe_set_simd_level(c.as_ptr()) } != 0 {
        return Err(Error::mlx(crate::array::last_mlx_error()));
    }
    Ok(())
}

/// The SIMD level in use.
pub fn simd_level() -> Result<String> {
    let mut p: *const std::os::raw::c_char = std::ptr::null();
    if unsafe { ffi::mlx_moe_simd_level(&mut p) } != 0 || p.is_null() {
        return Err(Error::mlx(crate::array::last_mlx_error()));
    }
    Ok(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// The switch-GLU MoE block after routing as one op: `gather_qmm_combine(gather_qmm_swiglu(x[.., None,
/// None, :], gate, up, indices), down, indices, scores)[.., 0, :]`. `x` `[..., D]`, `indices` and `scores`
/// `[..., k]`; the three projections must share their quantization. On CUDA streams it is one kernel
/// launch (MLX's CUDA back end spends several microseconds of host time per op, as much as a decode
/// layer's kernels take); elsewhere the two fused ops.
///
/// ```
/// use zmlx::array::to_f32_vec;
/// use zmlx::fused::{gather_qmm_combine, gather_qmm_swiglu, switch_glu_combine, Activation, SwigluArgs};
/// use zmlx::mlx_rs::{random, Array};
/// use zmlx::quant::{quantize, QuantMode};
///
/// // 4 experts, hidden size D = 128, intermediate size I = 64; two tokens routed to two experts each.
/// let q = |shape: &[i32], seed| {
///     let w = random::normal::<f32>(shape, 0.0, 0.1, &random::key(seed).unwrap()).unwrap();
///     quantize(&w, QuantMode::Affine, Some(64), Some(4)).unwrap()
/// };
/// let (gate, up, down) = (q(&[4, 64, 128], 6), q(&[4, 64, 128], 7), q(&[4, 128, 64], 8));
/// let x = random::normal::<f32>(&[2, 128], 0.0, 1.0, &random::key(9).unwrap()).unwrap();
/// let idx = Array::from_slice(&[0u32, 3, 1, 2], &[2, 2]);
/// let scores = Array::from_slice(&[0.75f32, 0.25, 0.5, 0.5], &[2, 2]);
/// let y = switch_glu_combine(
///     &x, &gate, &up, &down, &idx, &scores, Activation::Swiglu, None, None, None,
/// )
/// .unwrap();
/// assert_eq!(y.shape(), &[2, 128]);
/// // The two fused ops it stands for.
/// let args = SwigluArgs { rhs_indices: Some(&idx), ..Default::default() };
/// let h = gather_qmm_swiglu(&x.reshape(&[2, 1, 1, 128]).unwrap(), &gate, &up, &args).unwrap();
/// let two = gather_qmm_combine(&h, &down, &idx, &scores, None).unwrap();
/// let (got, want) = (to_f32_vec(&y).unwrap(), to_f32_vec(&two).unwrap());
/// assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-5 * (1.0 + w.abs())));
/// ```
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn switch_glu_combine(
    x: &Array,
    gate: &QuantizedWeight,
    up: &QuantizedWeight,
    down: &QuantizedWeight,
    indices: &Array,
    scores: &Array,
    activation: Activation,
    gate_bias: Option<&Array>,
    up_bias: Option<&Array>,
    down_bias: Option<&Array>,
) -> Result<Array> {
    check_pair(gate, up)?;
    if !down.same_quantization(gate) {
        return Err(Error::invalid(format!(
            "down ({} {}-bit g{}) must share the quantization of gate and up ({} {}-bit g{})",
            down.mode, down.bits, down.group_size, gate.mode, gate.bits, gate.group_size
        )));
    }
    let (act, alpha, limit) = act_args(activation);
    let s = stream();
    array_op(|res| unsafe {
        ffi::mlx_switch_glu_combine(
            res,
            x.as_ptr(),
            gate.w.as_ptr(),
            gate.scales.as_ptr(),
            opt_ptr(gate.biases.as_ref()),
            up.w.as_ptr(),
            up.scales.as_ptr(),
            opt_ptr(up.biases.as_ref()),
            down.w.as_ptr(),
            down.scales.as_ptr(),
            opt_ptr(down.biases.as_ref()),
            indices.as_ptr(),
            scores.as_ptr(),
            opt_int(Some(gate.group_size)),
            opt_int(Some(gate.bits)),
            gate.mode.c_name().as_ptr(),
            act.as_ptr(),
            opt_float(alpha),
            opt_float(limit),
            opt_ptr(gate_bias),
            opt_ptr(up_bias),
            opt_ptr(down_bias),
            s.as_ptr(),
        )
    })
}

/// The residual add and RMS normalization of a decoder layer in one pass: returns `(h, y)` with
/// `h = x + residual` and `y = rms_norm(h) * weight` (MLX's `fast::rms_norm(h, weight, eps)`).
///
/// - `x`, `residual`: the same shape (at least one dimension, `D` the last), float32 / float16 / bfloat16;
///   `h` is in their promoted dtype, exactly MLX's `add`.
/// - `weight`: optional `[D]`; `eps` finite and `>= 0`.
/// - `y`: float32 statistics over the rounded `h`, `h * rsqrt(mean(h²) + eps) * weight` rounded once, in
///   `promote(h, weight)`.
///
/// CPU streams run one fused pass (rows spread over the fused kernels' threads); GPU streams MLX's `add`
/// and `rms_norm`. Differentiable with respect to `x`, `residual` and `weight`.
///
/// ```
/// use zmlx::fused::{add_rms_norm, add_rms_norm_reference};
/// use zmlx::mlx_rs::{random, Dtype};
///
/// let key = random::key(1).unwrap();
/// let x = random::normal::<f32>(&[3, 64], 0.0, 1.0, &key).unwrap();
/// let r = random::normal::<f32>(&[3, 64], 0.0, 1.0, &random::key(2).unwrap()).unwrap();
/// let w = random::uniform::<f32, f32>(0.5, 1.5, &[64], &key).unwrap();
/// let (h, y) = add_rms_norm(&x, &r, Some(&w), 1e-6).unwrap();
/// let (h_ref, y_ref) = add_rms_norm_reference(&x, &r, Some(&w), 1e-6).unwrap();
/// assert_eq!(y.shape(), &[3, 64]);
/// assert_eq!(y.dtype(), Dtype::Float32);
/// assert!(h.all_close(&h_ref, 0.0, 0.0, None).unwrap());
/// assert!(y.all_close(&y_ref, 1e-5, 1e-5, None).unwrap());
/// ```
#[track_caller]
pub fn add_rms_norm(
    x: &Array,
    residual: &Array,
    weight: Option<&Array>,
    eps: f32,
) -> Result<(Array, Array)> {
    norm_op(false, x, residual, weight, eps)
}

/// [`add_rms_norm`] composed from MLX's own ops: `add`, then `fast::rms_norm`.
#[track_caller]
pub fn add_rms_norm_reference(
    x: &Array,
    residual: &Array,
    weight: Option<&Array>,
    eps: f32,
) -> Result<(Array, Array)> {
    norm_op(true, x, residual, weight, eps)
}

#[track_caller]
fn norm_op(
    reference: bool,
    x: &Array,
    residual: &Array,
    weight: Option<&Array>,
    eps: f32,
) -> Result<(Array, Array)> {
    let s = stream();
    let f = if reference {
        ffi::mlx_add_rms_norm_reference
    } else {
        ffi::mlx_add_rms_norm
    };
    pair_op(|h, y| unsafe {
        f(
            h,
            y,
            x.as_ptr(),
            residual.as_ptr(),
            opt_ptr(weight),
            eps,
            s.as_ptr(),
        )
    })
}
