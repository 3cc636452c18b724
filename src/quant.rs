//! Quantization for every MLX mode (mlx-rs hard-codes `affine`): [`QuantMode`], the [`QuantizedWeight`]
//! value that carries a packed matrix (or stack of expert matrices) with its scales and biases, and
//! `quantize` / `dequantize` / `quantized_matmul` / `gather_qmm` through MLX's C API.
//!
//! Facts about modes (allowed group sizes and bit widths, scale formats) live in MLX; this module only parses
//! mode names and reads group size and bit width back from the shapes MLX produced.

use std::ffi::CStr;
use std::fmt;
use std::str::FromStr;

use mlx_rs::{Array, Dtype};

use crate::array::{array_op, opt_dtype, opt_int, opt_ptr, stream, vector_op};
use crate::error::{Error, Result};

/// A quantization mode of MLX.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantMode {
    /// Integer codes with a float scale and bias per group.
    Affine,
    /// OCP MX FP4 (e2m1 codes, e8m0 scale per 32).
    Mxfp4,
    /// NVIDIA FP4 (e2m1 codes, fp8 e4m3 scale per 16).
    Nvfp4,
    /// OCP MX FP8 (e4m3 codes, e8m0 scale per 32).
    Mxfp8,
}

impl QuantMode {
    /// All modes, for listings and tests.
    pub const ALL: [QuantMode; 4] = [
        QuantMode::Affine,
        QuantMode::Mxfp4,
        QuantMode::Nvfp4,
        QuantMode::Mxfp8,
    ];

    /// The name MLX uses.
    pub fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or("affine")
    }

    pub(crate) fn c_name(self) -> &'static CStr {
        match self {
            QuantMode::Affine => c"affine",
            QuantMode::Mxfp4 => c"mxfp4",
            QuantMode::Nvfp4 => c"nvfp4",
            QuantMode::Mxfp8 => c"mxfp8",
        }
    }

    /// The `(group_size, bits)` MLX and mlx-lm take for the mode when they are not given (affine 64 / 4,
    /// mxfp4 32 / 4, nvfp4 16 / 4, mxfp8 32 / 8).
    pub fn default_group_size_bits(self) -> (i32, i32) {
        match self {
            QuantMode::Affine => (64, 4),
            QuantMode::Mxfp4 => (32, 4),
            QuantMode::Nvfp4 => (16, 4),
            QuantMode::Mxfp8 => (32, 8),
        }
    }

    /// Whether the mode stores an additive bias per group (only `affine`).
    pub fn has_biases(self) -> bool {
        self == QuantMode::Affine
    }
}

impl fmt::Display for QuantMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        QuantMode::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown quantization mode '{s}' (expected affine, mxfp4, nvfp4 or mxfp8)"
                ))
            })
    }
}

/// A quantized matrix `[.., N, K]` (logical, `transpose=true` layout) or a stack of expert matrices
/// `[E, N, K]`: packed codes `w` (uint32 `[.., N, K*bits/32]`), `scales` (`[.., N, K/group_size]`) and, for
/// `affine`, `biases` of the scales' shape. Gate, up and down projections travel as such units.
///
/// ```
/// use zmlx::mlx_rs::random;
/// use zmlx::quant::{quantize, QuantMode, QuantizedWeight};
///
/// // 8 expert matrices [N = 32, K = 256] in 4-bit affine, groups of 64.
/// let w = random::normal::<f32>(&[8, 32, 256], 0.0, 1.0, &random::key(0).unwrap()).unwrap();
/// let q = quantize(&w, QuantMode::Affine, Some(64), Some(4)).unwrap();
/// assert_eq!((q.num_experts(), q.out_dims(), q.in_dims()), (8, 32, 256));
/// assert_eq!(q.w.shape(), &[8, 32, 256 * 4 / 32]);
/// assert_eq!(q.scales.shape(), &[8, 32, 256 / 64]);
/// assert_eq!(q.biases.as_ref().map(|b| b.shape().to_vec()), Some(vec![8, 32, 4]));
///
/// // Assembled from its parts, the shapes are checked against the group size and bits.
/// let (w, scales, biases) = (q.w.clone(), q.scales.clone(), q.biases.clone());
/// let same = QuantizedWeight::new(w.clone(), scales.clone(), biases.clone(), QuantMode::Affine, 64, 4)
///     .unwrap();
/// assert!(same.same_quantization(&q));
/// assert!(QuantizedWeight::new(w, scales, biases, QuantMode::Affine, 32, 4).is_err());
/// ```
#[derive(Clone, Debug)]
pub struct QuantizedWeight {
    /// Packed codes, uint32.
    pub w: Array,
    /// Per-group scales.
    pub scales: Array,
    /// Per-group additive biases (`affine` only).
    pub biases: Option<Array>,
    /// The quantization mode.
    pub mode: QuantMode,
    /// Elements per group along K.
    pub group_size: i32,
    /// Bits per element.
    pub bits: i32,
}

impl QuantizedWeight {
    /// Whether `other` has the same mode, group size and bits (the fused ops' projections must).
    pub fn same_quantization(&self, other: &QuantizedWeight) -> bool {
        self.mode == other.mode && self.group_size == other.group_size && self.bits == other.bits
    }

    /// Assembles a quantized weight from its parts, checking that the shapes agree with `group_size` and
    /// `bits` (what MLX accepts for the mode is checked by MLX when the weight is used).
    pub fn new(
        w: Array,
        scales: Array,
        biases: Option<Array>,
        mode: QuantMode,
        group_size: i32,
        bits: i32,
    ) -> Result<Self> {
        if group_size <= 0 || !(1..=8).contains(&bits) {
            return Err(Error::invalid(format!(
                "group_size {group_size} / bits {bits} out of range"
            )));
        }
        if w.dtype() != Dtype::Uint32 {
            return Err(Error::invalid(format!(
                "packed weight must be uint32, got {:?}",
                w.dtype()
            )));
        }
        let (ws, ss) = (w.shape(), scales.shape());
        if ws.contains(&0) {
            return Err(Error::invalid(format!(
                "packed weight shape {ws:?} has a zero dimension (MLX's quantized kernels need N, K >= 1)"
            )));
        }
        if ws.len() < 2 || ws.len() != ss.len() || ws[..ws.len() - 1] != ss[..ss.len() - 1] {
            return Err(Error::invalid(format!(
                "packed weight shape {ws:?} does not match scales shape {ss:?}"
            )));
        }
        let k_from_w = *ws.last().unwrap_or(&0) as i64 * 32 / bits as i64;
        let k_from_s = *ss.last().unwrap_or(&0) as i64 * group_size as i64;
        if (*ws.last().unwrap_or(&0) as i64 * 32) % bits as i64 != 0 || k_from_w != k_from_s {
            return Err(Error::invalid(format!(
                "packed weight {ws:?} with {bits} bits holds K={k_from_w} but scales {ss:?} with group {group_size} cover K={k_from_s}"
            )));
        }
        // MLX's quantized kernels read affine scales / biases as floats and the float modes' scales as
        // bytes; anything else would be reinterpreted silently.
        let float_ok = |a: &Array| crate::array::is_float(a.dtype());
        if mode.has_biases()
            && (!float_ok(&scales) || biases.as_ref().is_some_and(|b| !float_ok(b)))
        {
            return Err(Error::invalid(format!(
                "affine scales and biases must be float arrays, got {:?} / {:?}",
                scales.dtype(),
                biases.as_ref().map(|b| b.dtype())
            )));
        }
        if !mode.has_biases() && scales.dtype() != Dtype::Uint8 {
            return Err(Error::invalid(format!(
                "{mode} scales must be uint8, got {:?}",
                scales.dtype()
            )));
        }
        match (&biases, mode.has_biases()) {
            (Some(b), true) if b.shape() != ss => {
                return Err(Error::invalid(format!(
                    "biases shape {:?} differs from scales shape {ss:?}",
                    b.shape()
                )))
            }
            (None, true) => {
                return Err(Error::invalid(
                    "affine quantization needs biases".to_string(),
                ))
            }
            (Some(_), false) => return Err(Error::invalid(format!("mode {mode} has no biases"))),
            _ => {}
        }
        Ok(QuantizedWeight {
            w,
            scales,
            biases,
            mode,
            group_size,
            bits,
        })
    }

    /// Logical input dimension K.
    pub fn in_dims(&self) -> i32 {
        self.scales.shape().last().copied().unwrap_or(0) * self.group_size
    }

    /// Logical output dimension N.
    pub fn out_dims(&self) -> i32 {
        let s = self.w.shape();
        s[s.len() - 2]
    }

    /// Number of experts for a stacked `[E, N, K]` weight (1 for a plain matrix).
    pub fn num_experts(&self) -> i32 {
        let s = self.w.shape();
        if s.len() >= 3 {
            s[..s.len() - 2].iter().product()
        } else {
            1
        }
    }

    /// The float dtype of the scales for `affine` (that MLX computes in); `None` for the fp modes.
    pub fn scale_dtype(&self) -> Option<Dtype> {
        self.mode.has_biases().then(|| self.scales.dtype())
    }

    /// Evaluates all parts.
    pub fn eval(&self) -> Result<()> {
        self.w.eval()?;
        self.scales.eval()?;
        if let Some(b) = &self.biases {
            b.eval()?;
        }
        Ok(())
    }

    /// The arrays holding this weight (codes, scales, biases).
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.w, &self.scales];
        v.extend(self.biases.as_ref());
        v
    }

    /// Bytes held by the parts.
    pub fn nbytes(&self) -> usize {
        self.w.nbytes() + self.scales.nbytes() + self.biases.as_ref().map_or(0, Array::nbytes)
    }
}

/// Quantizes `w` (`[.., N, K]`, float) in `mode`. `group_size` / `bits` of `None` take MLX's defaults for
/// the mode; the ones used are read back from the result's shapes.
///
/// ```
/// use zmlx::array::to_f32_vec;
/// use zmlx::mlx_rs::random;
/// use zmlx::quant::{dequantize, quantize, QuantMode};
///
/// let w = random::uniform::<_, f32>(-1.0f32, 1.0, &[16, 128], &random::key(1).unwrap()).unwrap();
/// // 8-bit affine: 255 steps over each group's range [-1, 1), so every weight is back within a step.
/// let q = quantize(&w, QuantMode::Affine, Some(64), Some(8)).unwrap();
/// let back = to_f32_vec(&dequantize(&q, None).unwrap()).unwrap();
/// let orig = to_f32_vec(&w).unwrap();
/// assert!(orig.iter().zip(&back).all(|(a, b)| (a - b).abs() <= 2.0 / 255.0));
///
/// // `None` takes MLX's defaults for the mode: mxfp4 is 4 bits in groups of 32, without biases.
/// let f = quantize(&w, QuantMode::Mxfp4, None, None).unwrap();
/// assert_eq!((f.group_size, f.bits, f.biases.is_none()), (32, 4, true));
/// ```
#[track_caller]
pub fn quantize(
    w: &Array,
    mode: QuantMode,
    group_size: Option<i32>,
    bits: Option<i32>,
) -> Result<QuantizedWeight> {
    if w.ndim() < 2 {
        return Err(Error::invalid(format!(
            "quantize needs a matrix or a stack of matrices, got shape {:?}",
            w.shape()
        )));
    }
    if !crate::array::is_float(w.dtype()) {
        return Err(Error::invalid(format!(
            "quantize needs a float array, got {:?}",
            w.dtype()
        )));
    }
    if w.shape().contains(&0) {
        return Err(Error::invalid(format!(
            "quantize needs a non-empty matrix, got shape {:?}",
            w.shape()
        )));
    }
    let s = stream();
    let parts = vector_op(|res| unsafe {
        mlx_sys::mlx_quantize(
            res,
            w.as_ptr(),
            opt_int(group_size),
            opt_int(bits),
            mode.c_name().as_ptr(),
            crate::array::none(),
            s.as_ptr(),
        )
    })?;
    let mut it = parts.into_iter();
    let (wq, scales) = match (it.next(), it.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(Error::Internal("quantize returned too few arrays".into())),
    };
    let biases = it.next();
    let k = *w.shape().last().unwrap_or(&0);
    let (wl, sl) = (
        *wq.shape().last().unwrap_or(&0),
        *scales.shape().last().unwrap_or(&0),
    );
    if k <= 0 || sl <= 0 || k % sl != 0 || (wl * 32) % k != 0 {
        return Err(Error::Internal(format!(
            "unexpected quantize result shapes {:?} / {:?} for K={k}",
            wq.shape(),
            scales.shape()
        )));
    }
    QuantizedWeight::new(wq, scales, biases, mode, k / sl, wl * 32 / k)
}

/// Dequantizes `q` to `dtype` (`None`: MLX's default for the mode — the scales' type for `affine`).
#[track_caller]
pub fn dequantize(q: &QuantizedWeight, dtype: Option<Dtype>) -> Result<Array> {
    let s = stream();
    array_op(|res| unsafe {
        mlx_sys::mlx_dequantize(
            res,
            q.w.as_ptr(),
            q.scales.as_ptr(),
            opt_ptr(q.biases.as_ref()),
            opt_int(Some(q.group_size)),
            opt_int(Some(q.bits)),
            q.mode.c_name().as_ptr(),
            crate::array::none(),
            opt_dtype(dtype),
            s.as_ptr(),
        )
    })
}

/// The exact float32 values of `q`'s weights (up to float32's own rounding): MLX's `dequantize` computes
/// `scale * q + bias` in the scales' dtype and only then casts to the requested one, so asking it for
/// float32 from bfloat16 / float16 scales returns half-precision-rounded weights. Here the `affine` scales
/// and biases are upcast to float32 first (exact), so the products and sums happen in float32. The fp
/// modes' values (a power-of-two or fp8 scale times a short float code) are exact in any float type and go
/// straight through. This is what the float32 oracle uses.
pub fn dequantize_f32(q: &QuantizedWeight) -> Result<Array> {
    match q.scale_dtype() {
        Some(dt) if dt != Dtype::Float32 => {
            let up = QuantizedWeight {
                scales: q.scales.as_dtype(Dtype::Float32)?,
                biases: q
                    .biases
                    .as_ref()
                    .map(|b| b.as_dtype(Dtype::Float32))
                    .transpose()?,
                ..q.clone()
            };
            dequantize(&up, Some(Dtype::Float32))
        }
        _ => dequantize(q, Some(Dtype::Float32)),
    }
}

/// A weight whose fields were set directly may hold a zero dimension, on which MLX's quantized kernels
/// divide by zero (SIGFPE): an error instead.
fn check_nonempty(q: &QuantizedWeight) -> Result<()> {
    if q.w.shape().contains(&0) || q.scales.shape().contains(&0) {
        return Err(Error::invalid(format!(
            "quantized weight of packed shape {:?} (scales {:?}) has a zero dimension",
            q.w.shape(),
            q.scales.shape()
        )));
    }
    Ok(())
}

/// `x @ dequantize(q).T` (`transpose = true`) or `x @ dequantize(q)`.
#[track_caller]
pub fn quantized_matmul(x: &Array, q: &QuantizedWeight, transpose: bool) -> Result<Array> {
    check_nonempty(q)?;
    let s = stream();
    array_op(|res| unsafe {
        mlx_sys::mlx_quantized_matmul(
            res,
            x.as_ptr(),
            q.w.as_ptr(),
            q.scales.as_ptr(),
            opt_ptr(q.biases.as_ref()),
            transpose,
            opt_int(Some(q.group_size)),
            opt_int(Some(q.bits)),
            q.mode.c_name().as_ptr(),
            s.as_ptr(),
        )
    })
}

/// MLX's `gather_qmm`: for every batch element, `x[lhs] @ dequantize(q[rhs]).T`. Missing indices default
/// to arange over the batch dims. `sorted_indices` promises that `rhs_indices` is sorted.
#[track_caller]
pub fn gather_qmm(
    x: &Array,
    q: &QuantizedWeight,
    lhs_indices: Option<&Array>,
    rhs_indices: Option<&Array>,
    transpose: bool,
    sorted_indices: bool,
) -> Result<Array> {
    check_nonempty(q)?;
    let s = stream();
    array_op(|res| unsafe {
        mlx_sys::mlx_gather_qmm(
            res,
            x.as_ptr(),
            q.w.as_ptr(),
            q.scales.as_ptr(),
            opt_ptr(q.biases.as_ref()),
            opt_ptr(lhs_indices),
            opt_ptr(rhs_indices),
            transpose,
            opt_int(Some(q.group_size)),
            opt_int(Some(q.bits)),
            q.mode.c_name().as_ptr(),
            sorted_indices,
            s.as_ptr(),
        )
    })
}
