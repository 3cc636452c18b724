//! `SwitchGlu`: the routed experts of a MoE layer (gate/up/down projections stacked over experts).

use mlx_rs::{ops, Array, Dtype};

use crate::error::{Error, Result};
use crate::fused::{gather_qmm_combine, gather_qmm_swiglu, switch_glu_combine, SwigluArgs};
use crate::path::MoePath;
use crate::quant::{gather_qmm, QuantizedWeight};

/// mlx-lm sorts the (token, expert) rows by expert when there are at least this many of them
/// (`indices.size >= 64`), i.e. for prefill.
pub const SORT_THRESHOLD: usize = 64;

pub use crate::fused::Activation;

/// Weights of one expert projection `[E, N, K]`: quantized (model / reference / fused paths) or dense float
/// (the float32 oracle, which uses no quantized kernels).
#[derive(Clone, Debug)]
pub enum ExpertWeight {
    /// Quantized stack.
    Quantized(QuantizedWeight),
    /// Dense float stack `[E, N, K]`.
    Dense(Array),
}

impl ExpertWeight {
    fn shape_enk(&self) -> (i32, i32, i32) {
        match self {
            ExpertWeight::Quantized(q) => (q.num_experts(), q.out_dims(), q.in_dims()),
            ExpertWeight::Dense(w) => {
                let s = w.shape();
                if s.len() == 3 {
                    (s[0], s[1], s[2])
                } else {
                    (0, 0, 0)
                }
            }
        }
    }

    /// `x[b] @ W[idx[b]].T` batched (mlx-lm's `SwitchLinear` / `QuantizedSwitchLinear` without bias).
    fn apply(&self, x: &Array, idx: &Array, sorted: bool) -> Result<Array> {
        match self {
            ExpertWeight::Quantized(q) => gather_qmm(x, q, None, Some(idx), true, sorted),
            ExpertWeight::Dense(w) => Ok(ops::gather_mm(
                x,
                w.swap_axes(-1, -2)?,
                None,
                Some(idx),
                sorted,
            )?),
        }
    }

    fn to_f32(&self) -> Result<ExpertWeight> {
        Ok(ExpertWeight::Dense(match self {
            ExpertWeight::Quantized(q) => crate::quant::dequantize_f32(q)?,
            ExpertWeight::Dense(w) => w.as_dtype(Dtype::Float32)?,
        }))
    }

    /// The quantized form, if any.
    pub fn quantized(&self) -> Option<&QuantizedWeight> {
        match self {
            ExpertWeight::Quantized(q) => Some(q),
            ExpertWeight::Dense(_) => None,
        }
    }
}

/// The routed experts: `down(act(gate(x), up(x)))` per selected expert, with optional per-expert additive
/// biases `[E, N]` (gpt-oss).
#[derive(Clone, Debug)]
pub struct SwitchGlu {
    /// `[E, I, D]`.
    pub gate_proj: ExpertWeight,
    /// `[E, I, D]`.
    pub up_proj: ExpertWeight,
    /// `[E, D, I]`.
    pub down_proj: ExpertWeight,
    /// `[E, I]`.
    pub gate_bias: Option<Array>,
    /// `[E, I]`.
    pub up_bias: Option<Array>,
    /// `[E, D]`.
    pub down_bias: Option<Array>,
    /// Expert activation.
    pub activation: Activation,
}

/// Rows of `x` sorted by expert, as mlx-lm's `_gather_sort`.
struct Sorted {
    x: Array,
    idx: Array,
    inv_order: Array,
}

/// The combine's scores go with the indices, one per routed slot.
fn check_scores(indices: &Array, scores: &Array) -> Result<()> {
    if scores.shape() != indices.shape() {
        return Err(Error::invalid(format!(
            "scores shape {:?} differs from indices shape {:?}",
            scores.shape(),
            indices.shape()
        )));
    }
    Ok(())
}

fn gather_sort(x: &Array, indices: &Array) -> Result<Sorted> {
    let m = *indices.shape().last().unwrap_or(&1);
    let flat = indices.flatten(None, None)?;
    let order = ops::argsort_axis(&flat, 0)?;
    let inv_order = ops::argsort_axis(&order, 0)?;
    let xs = x.flatten(0, -3)?;
    let rows = ops::floor_divide(&order, Array::from_int(m).as_dtype(order.dtype())?)?;
    Ok(Sorted {
        x: xs.take_axis(&rows, 0)?,
        idx: flat.take_axis(&order, 0)?,
        inv_order,
    })
}

impl SwitchGlu {
    /// The quantized expert weights' arrays (codes, scales, biases of gate, up and down).
    pub fn quantized_arrays(&self) -> Vec<&Array> {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
            .into_iter()
            .filter_map(|w| w.quantized())
            .flat_map(QuantizedWeight::arrays)
            .collect()
    }

    /// Checks that the three projections and biases agree: returns (E, D, I).
    pub fn dims(&self) -> Result<(i32, i32, i32)> {
        let (eg, ig, dg) = self.gate_proj.shape_enk();
        let (eu, iu, du) = self.up_proj.shape_enk();
        let (ed, dd, id) = self.down_proj.shape_enk();
        if eg != eu || eg != ed || ig != iu || ig != id || dg != du || dg != dd || eg == 0 {
            return Err(Error::invalid(format!(
                "expert weights disagree: gate [{eg},{ig},{dg}], up [{eu},{iu},{du}], down [{ed},{dd},{id}]"
            )));
        }
        for (name, b, n) in [
            ("gate", &self.gate_bias, ig),
            ("up", &self.up_bias, ig),
            ("down", &self.down_bias, dg),
        ] {
            if let Some(b) = b {
                if b.shape() != [eg, n] {
                    return Err(Error::invalid(format!(
                        "{name} expert bias has shape {:?}, expected [{eg}, {n}]",
                        b.shape()
                    )));
                }
            }
        }
        Ok((eg, dg, ig))
    }

    fn check_inputs(&self, x: &Array, indices: &Array) -> Result<(i32, i32, i32)> {
        let (e, d, i) = self.dims()?;
        let xs = x.shape();
        let is = indices.shape();
        if xs.last() != Some(&d) {
            return Err(Error::invalid(format!(
                "experts expect input dim {d}, got x shape {xs:?}"
            )));
        }
        if is.is_empty() || is[..is.len() - 1] != xs[..xs.len() - 1] {
            return Err(Error::invalid(format!(
                "indices shape {is:?} does not match x shape {xs:?}"
            )));
        }
        Ok((e, d, i))
    }

    fn add_bias(y: Array, bias: &Option<Array>, idx: &Array) -> Result<Array> {
        match bias {
            Some(b) => {
                let rows = b.take_axis(idx, 0)?.expand_dims(-2)?;
                Ok(ops::add(&y, &rows)?)
            }
            None => Ok(y),
        }
    }

    /// The reference (mlx-lm) computation: `x` `[..., D]`, `indices` `[..., k]` → `[..., k, D]`.
    pub fn forward(&self, x: &Array, indices: &Array) -> Result<Array> {
        self.check_inputs(x, indices)?;
        let x = x.expand_dims_axes(&[-2, -3])?;
        let do_sort = indices.size() >= SORT_THRESHOLD;
        let (xin, idx, inv) = if do_sort {
            let s = gather_sort(&x, indices)?;
            (s.x, s.idx, Some(s.inv_order))
        } else {
            (x, indices.clone(), None)
        };
        let up = Self::add_bias(
            self.up_proj.apply(&xin, &idx, do_sort)?,
            &self.up_bias,
            &idx,
        )?;
        let gate = Self::add_bias(
            self.gate_proj.apply(&xin, &idx, do_sort)?,
            &self.gate_bias,
            &idx,
        )?;
        let h = self.activation.apply(&gate, &up)?;
        let mut y = Self::add_bias(
            self.down_proj.apply(&h, &idx, do_sort)?,
            &self.down_bias,
            &idx,
        )?;
        if let Some(inv) = inv {
            y = y.take_axis(&inv, 0)?;
            let mut shape = indices.shape().to_vec();
            shape.extend_from_slice(&y.shape()[1..]);
            y = y.reshape(&shape)?;
        }
        Ok(y.squeeze_axes(&[-2])?)
    }

    /// Experts plus the score-weighted sum over the k selected experts: `[..., D]`. `scores` `[..., k]`.
    /// The product and sum run in the scores' dtype promoted with the experts' output (bfloat16 scores for
    /// Qwen3 / gpt-oss, float32 for GLM-4 MoE), and the result is cast back to the experts' output dtype, as
    /// mlx-lm does.
    pub fn forward_combined(
        &self,
        x: &Array,
        indices: &Array,
        scores: &Array,
        path: MoePath,
    ) -> Result<Array> {
        check_scores(indices, scores)?;
        match path {
            MoePath::Reference => {
                let y = self.forward(x, indices)?;
                let dt = y.dtype();
                let w = ops::multiply(&y, scores.expand_dims(-1)?)?;
                Ok(w.sum_axis(-2, false)?.as_dtype(dt)?)
            }
            MoePath::Fused => switch_glu_combined(self, x, indices, scores),
        }
    }

    /// [`SwitchGlu::forward_combined`] before its final rounding: the score-weighted sum in float32 (each
    /// expert output and its product with the score rounded as there), and the dtype
    /// `forward_combined` rounds it to. Under expert parallelism the ranks add these float32 partial sums,
    /// so the sum is rounded once, as in one process; only the order of its float32 additions differs.
    /// The fused path's sum is float32 when `x` is (the fused model's activations are).
    pub fn forward_combined_f32(
        &self,
        x: &Array,
        indices: &Array,
        scores: &Array,
        path: MoePath,
    ) -> Result<(Array, Dtype)> {
        check_scores(indices, scores)?;
        match path {
            MoePath::Reference => {
                let y = self.forward(x, indices)?;
                let dt = y.dtype();
                let w = ops::multiply(&y, scores.expand_dims(-1)?)?;
                Ok((w.as_dtype(Dtype::Float32)?.sum_axis(-2, false)?, dt))
            }
            MoePath::Fused => {
                let y = switch_glu_combined(self, x, indices, scores)?;
                let dt = y.dtype();
                Ok((y.as_dtype(Dtype::Float32)?, dt))
            }
        }
    }

    /// Float32 copy with dequantized expert weights (for the oracle).
    pub fn to_f32(&self) -> Result<SwitchGlu> {
        let f = |b: &Option<Array>| b.as_ref().map(|b| b.as_dtype(Dtype::Float32)).transpose();
        Ok(SwitchGlu {
            gate_proj: self.gate_proj.to_f32()?,
            up_proj: self.up_proj.to_f32()?,
            down_proj: self.down_proj.to_f32()?,
            gate_bias: f(&self.gate_bias)?,
            up_bias: f(&self.up_bias)?,
            down_bias: f(&self.down_bias)?,
            activation: self.activation,
        })
    }
}

/// The fused path of [`SwitchGlu::forward_combined`]: on CPU, rows sorted by expert for prefill exactly when
/// the reference sorts (`indices.size >= 64`); gate+up+activation fused, then down+combine fused; the result
/// is cast back to `x`'s dtype as mlx-lm does after its combine.
fn switch_glu_combined(
    glu: &SwitchGlu,
    x: &Array,
    indices: &Array,
    scores: &Array,
) -> Result<Array> {
    let (gate, up, down) =
        match (
            glu.gate_proj.quantized(),
            glu.up_proj.quantized(),
            glu.down_proj.quantized(),
        ) {
            (Some(g), Some(u), Some(d)) => (g, u, d),
            _ => return Err(Error::invalid(
                "the fused path needs quantized expert weights (this model's experts are dense)",
            )),
        };
    glu.dims()?;
    // The CUDA kernels gather each expert's rows themselves: sorting would only add launches, and
    // the whole block is one launch when the projections share their quantization.
    let on_gpu = crate::runtime::default_device()? == crate::runtime::DeviceKind::Gpu;
    if on_gpu && gate.same_quantization(up) && gate.same_quantization(down) {
        let y = switch_glu_combine(
            x,
            gate,
            up,
            down,
            indices,
            scores,
            glu.activation,
            glu.gate_bias.as_ref(),
            glu.up_bias.as_ref(),
            glu.down_bias.as_ref(),
        )?;
        return Ok(y.as_dtype(x.dtype())?);
    }
    let xe = x.expand_dims_axes(&[-2, -3])?;
    let h = if indices.size() >= SORT_THRESHOLD && !on_gpu {
        let m = *indices.shape().last().unwrap_or(&1);
        let flat = indices.flatten(None, None)?;
        let order = ops::argsort_axis(&flat, 0)?;
        let inv = ops::argsort_axis(&order, 0)?;
        let rows = ops::floor_divide(&order, Array::from_int(m).as_dtype(order.dtype())?)?;
        let xs = xe.flatten(0, -3)?.take_axis(&rows, 0)?;
        let idx = flat.take_axis(&order, 0)?;
        let h = gather_qmm_swiglu(
            &xs,
            gate,
            up,
            &SwigluArgs {
                rhs_indices: Some(&idx),
                sorted_indices: true,
                activation: glu.activation,
                gate_bias: glu.gate_bias.as_ref(),
                up_bias: glu.up_bias.as_ref(),
                ..Default::default()
            },
        )?;
        let h = h.take_axis(&inv, 0)?;
        let mut shape = indices.shape().to_vec();
        shape.extend_from_slice(&h.shape()[1..]);
        h.reshape(&shape)?
    } else {
        gather_qmm_swiglu(
            &xe,
            gate,
            up,
            &SwigluArgs {
                rhs_indices: Some(indices),
                activation: glu.activation,
                gate_bias: glu.gate_bias.as_ref(),
                up_bias: glu.up_bias.as_ref(),
                ..Default::default()
            },
        )?
    };
    let y = gather_qmm_combine(&h, down, indices, scores, glu.down_bias.as_ref())?;
    let y = y.squeeze_axes(&[-2])?;
    Ok(y.as_dtype(x.dtype())?)
}
