//! Layers shared by the models and the MoE blocks: linear / embedding layers whose weight is dense or
//! quantized, the dense SwiGLU MLP, RMSNorm, rotary embedding, attention with a KV cache (optionally sliding-window and with attention sinks), all
//! through mlx-rs and MLX's `fast` ops.

use mlx_rs::fast::ScaledDotProductAttentionMask;
use mlx_rs::{ops, Array, Dtype};

use crate::array::slice_axis;
use crate::error::{Error, Result};
use crate::fused::Activation;
use crate::path::MoePath;
use crate::quant::{dequantize, dequantize_f32, quantized_matmul, QuantizedWeight};

/// A weight matrix `[N, K]` (or stack `[E, N, K]`): dense, or quantized in some mode.
#[derive(Clone, Debug)]
pub enum Weight {
    /// A plain float array.
    Dense(Array),
    /// A quantized array.
    Quantized(QuantizedWeight),
}

impl Weight {
    /// Logical output dimension N.
    pub fn out_dims(&self) -> i32 {
        match self {
            Weight::Dense(w) => w.shape()[w.ndim() - 2],
            Weight::Quantized(q) => q.out_dims(),
        }
    }

    /// Logical input dimension K.
    pub fn in_dims(&self) -> i32 {
        match self {
            Weight::Dense(w) => *w.shape().last().unwrap_or(&0),
            Weight::Quantized(q) => q.in_dims(),
        }
    }

    /// The weight as a dense float array of `dtype` (dequantized exactly in float32 if needed, see
    /// [`dequantize_f32`], then cast).
    pub fn to_dense(&self, dtype: Dtype) -> Result<Array> {
        match self {
            Weight::Dense(w) if w.dtype() == dtype => Ok(w.clone()),
            Weight::Dense(w) => Ok(w.as_dtype(dtype)?),
            Weight::Quantized(q) => Ok(dequantize_f32(q)?.as_dtype(dtype)?),
        }
    }

    /// The quantized form, if any.
    pub fn quantized(&self) -> Option<&QuantizedWeight> {
        match self {
            Weight::Quantized(q) => Some(q),
            Weight::Dense(_) => None,
        }
    }

    /// Evaluates the weight's arrays.
    pub fn eval(&self) -> Result<()> {
        match self {
            Weight::Dense(w) => Ok(w.eval()?),
            Weight::Quantized(q) => q.eval(),
        }
    }

    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        match self {
            Weight::Dense(w) => w.nbytes(),
            Weight::Quantized(q) => q.nbytes(),
        }
    }
}

/// `y = x @ W.T (+ b)`; `W` dense or quantized (as mlx-lm's `nn.Linear` / `nn.QuantizedLinear`).
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Weight,
    /// `[out]`.
    pub bias: Option<Array>,
    /// A low-rank adapter trained on top of the frozen weight, if any.
    pub lora: Option<Lora>,
}

/// A low-rank adapter (LoRA, as mlx-lm's `LoRALinear`): the layer's output plus
/// `scale * (x @ a) @ b`, cast to the output's dtype. `a` `[in, r]`, `b` `[r, out]`.
#[derive(Clone, Debug)]
pub struct Lora {
    /// `[in, r]`.
    pub a: Array,
    /// `[r, out]`.
    pub b: Array,
    /// The adapter's scale (mlx-lm: `scale`, 20 by default in its LoRA configs).
    pub scale: f32,
}

impl Lora {
    /// `y + scale * (x @ a) @ b` for a layer with `in_dims` inputs whose output is `y`.
    pub fn apply(&self, x: &Array, y: &Array, in_dims: i32) -> Result<Array> {
        let out_dims = *y.shape().last().unwrap_or(&0);
        let (sa, sb) = (self.a.shape(), self.b.shape());
        if sa.len() != 2 || sb.len() != 2 || sa[0] != in_dims || sb[1] != out_dims || sa[1] != sb[0]
        {
            return Err(Error::invalid(format!(
                "LoRA adapter shapes a {sa:?}, b {sb:?} do not fit a layer [{out_dims}, {in_dims}] (want a [{in_dims}, r], b [r, {out_dims}])"
            )));
        }
        let z = ops::matmul(ops::matmul(x, &self.a)?, &self.b)?;
        let z = ops::multiply(&z, Array::from_f32(self.scale))?.as_dtype(y.dtype())?;
        Ok(ops::add(y, &z)?)
    }
}

impl Linear {
    /// Applies the layer to `x` (`[..., in]`) as mlx-lm does (MLX's `quantized_matmul`, then the bias).
    pub fn forward(&self, x: &Array) -> Result<Array> {
        self.forward_path(x, MoePath::Reference)
    }

    /// Applies the layer on `path`: [`MoePath::Reference`] is mlx-lm's computation (MLX's
    /// `quantized_matmul`, accumulating in the activations' dtype, then `+ bias`); [`MoePath::Fused`] runs a
    /// quantized weight through [`crate::fused::quantized_linear`] (float32 accumulation, bias added before
    /// the one rounding). Dense weights take `matmul` on both paths.
    pub fn forward_path(&self, x: &Array, path: MoePath) -> Result<Array> {
        let k = *x.shape().last().unwrap_or(&0);
        if k != self.weight.in_dims() {
            return Err(Error::invalid(format!(
                "linear layer expects input dim {}, got {k}",
                self.weight.in_dims()
            )));
        }
        let y = match (&self.weight, path) {
            (Weight::Quantized(q), MoePath::Fused) => {
                crate::fused::quantized_linear(x, q, self.bias.as_ref())?
            }
            (w, _) => {
                let y = match w {
                    Weight::Dense(w) => ops::matmul(x, w.t())?,
                    Weight::Quantized(q) => quantized_matmul(x, q, true)?,
                };
                match &self.bias {
                    Some(b) => ops::add(&y, b)?,
                    None => y,
                }
            }
        };
        match &self.lora {
            Some(l) => l.apply(x, &y, k),
            None => Ok(y),
        }
    }

    /// This layer in float32 with dequantized weights (for the oracle).
    pub fn to_f32(&self) -> Result<Linear> {
        Ok(Linear {
            weight: Weight::Dense(self.weight.to_dense(Dtype::Float32)?),
            bias: self
                .bias
                .as_ref()
                .map(|b| b.as_dtype(Dtype::Float32))
                .transpose()?,
            lora: self
                .lora
                .as_ref()
                .map(|l| -> Result<Lora> {
                    Ok(Lora {
                        a: l.a.as_dtype(Dtype::Float32)?,
                        b: l.b.as_dtype(Dtype::Float32)?,
                        scale: l.scale,
                    })
                })
                .transpose()?,
        })
    }
}

/// Dense SwiGLU MLP (non-MoE layers, shared experts).
#[derive(Clone, Debug)]
pub struct Mlp {
    /// Gate.
    pub gate_proj: Linear,
    /// Up.
    pub up_proj: Linear,
    /// Down.
    pub down_proj: Linear,
}

impl Mlp {
    /// `down(silu(gate(x)) * up(x))`, the projections on `path` (see [`Linear::forward_path`]).
    pub fn forward(&self, x: &Array, path: MoePath) -> Result<Array> {
        let g = self.gate_proj.forward_path(x, path)?;
        let u = self.up_proj.forward_path(x, path)?;
        let h = Activation::Swiglu.apply(&g, &u)?;
        self.down_proj.forward_path(&h, path)
    }
    /// Float32 copy.
    pub fn to_f32(&self) -> Result<Mlp> {
        Ok(Mlp {
            gate_proj: self.gate_proj.to_f32()?,
            up_proj: self.up_proj.to_f32()?,
            down_proj: self.down_proj.to_f32()?,
        })
    }
}

/// Token embedding `[vocab, dim]`, dense or quantized (as `nn.QuantizedEmbedding`).
#[derive(Clone, Debug)]
pub struct Embedding {
    /// `[vocab, dim]`.
    pub weight: Weight,
}

impl Embedding {
    /// Looks up the rows of `ids` (int array of any shape) → `[..., dim]`, as mlx-lm does (a quantized
    /// table is dequantized in its scales' dtype).
    pub fn forward(&self, ids: &Array) -> Result<Array> {
        self.forward_path(ids, MoePath::Reference)
    }

    /// [`Embedding::forward`] on `path`: [`MoePath::Fused`] returns float32 rows (a quantized table
    /// dequantized exactly, see [`dequantize_f32`]), the start of its float32 activations.
    pub fn forward_path(&self, ids: &Array, path: MoePath) -> Result<Array> {
        match (&self.weight, path) {
            (Weight::Dense(w), MoePath::Reference) => Ok(w.take_axis(ids, 0)?),
            (Weight::Dense(w), MoePath::Fused) => {
                Ok(w.take_axis(ids, 0)?.as_dtype(Dtype::Float32)?)
            }
            (Weight::Quantized(q), _) => {
                let rows = QuantizedWeight {
                    w: q.w.take_axis(ids, 0)?,
                    scales: q.scales.take_axis(ids, 0)?,
                    biases: q.biases.as_ref().map(|b| b.take_axis(ids, 0)).transpose()?,
                    ..q.clone()
                };
                match path {
                    MoePath::Reference => dequantize(&rows, q.scale_dtype()),
                    MoePath::Fused => dequantize_f32(&rows),
                }
            }
        }
    }

    /// `x @ W.T`: the embedding used as the output projection (tied embeddings), computed on `path` as
    /// [`Linear::forward_path`] does.
    pub fn as_linear(&self, x: &Array, path: MoePath) -> Result<Array> {
        Linear {
            weight: self.weight.clone(),
            bias: None,
            lora: None,
        }
        .forward_path(x, path)
    }

    /// Float32, dequantized.
    pub fn to_f32(&self) -> Result<Embedding> {
        Ok(Embedding {
            weight: Weight::Dense(self.weight.to_dense(Dtype::Float32)?),
        })
    }
}

/// RMSNorm through `mlx_rs::fast::rms_norm`.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// `[dim]`.
    pub weight: Array,
    /// Epsilon.
    pub eps: f32,
}

impl RmsNorm {
    /// Normalises over the last axis.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        Ok(mlx_rs::fast::rms_norm(x, Some(&self.weight), self.eps)?)
    }

    /// `h = x + residual` and this norm of `h`, returned as `(h, norm(h))`: on [`MoePath::Fused`] one
    /// [`crate::fused::add_rms_norm`], on [`MoePath::Reference`] MLX's `add` then `rms_norm` (mlx-lm).
    pub fn add_forward(
        &self,
        x: &Array,
        residual: &Array,
        path: MoePath,
    ) -> Result<(Array, Array)> {
        match path {
            MoePath::Fused => crate::fused::add_rms_norm(x, residual, Some(&self.weight), self.eps),
            MoePath::Reference => {
                let h = ops::add(x, residual)?;
                let y = self.forward(&h)?;
                Ok((h, y))
            }
        }
    }

    /// Float32 copy.
    pub fn to_f32(&self) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: self.weight.as_dtype(Dtype::Float32)?,
            eps: self.eps,
        })
    }
}

/// Rotary position embedding (`mlx_rs::fast::rope`), non-traditional (as in mlx-lm's `nn.RoPE`), with
/// optional precomputed frequencies (YaRN / Llama-3 scaling).
#[derive(Clone, Debug)]
pub struct Rope {
    /// Rotated dimensions.
    pub dims: i32,
    /// Base (theta); ignored when `freqs` is set.
    pub base: f32,
    /// Scale applied to positions.
    pub scale: f32,
    /// Custom frequencies `[dims/2]`.
    pub freqs: Option<Array>,
    /// Multiplier applied to the rotated input (YaRN's mscale); 1.0 = none.
    pub mscale: f32,
    /// Traditional (interleaved) rotation.
    pub traditional: bool,
}

impl Rope {
    /// Rotates `x` (`[B, H, L, D]`) at positions `offset..offset+L`.
    pub fn forward(&self, x: &Array, offset: i32) -> Result<Array> {
        let x = if self.mscale != 1.0 {
            ops::multiply(x, Array::from_f32(self.mscale).as_dtype(x.dtype())?)?
        } else {
            x.clone()
        };
        let base = if self.freqs.is_some() {
            None
        } else {
            Some(self.base)
        };
        Ok(mlx_rs::fast::rope(
            &x,
            self.dims,
            self.traditional,
            base,
            self.scale,
            offset,
            self.freqs.as_ref(),
        )?)
    }
}

/// Key/value cache of one attention layer: keys and values `[B, H_kv, T, D]`. Without a window they are
/// appended per step (mlx-lm's `KVCache`); with one, they are kept as mlx-lm's
/// `RotatingKVCache(max_size=window)` keeps them, in the same order, since attention sums over the
/// keys in the order they are stored.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
    offset: i32,
    /// With a window: where the next single-token step writes (`RotatingKVCache._idx`); once the
    /// window is full, steps overwrite the oldest entry in place, so the stored order is the temporal
    /// order rotated by this index.
    idx: i32,
}

/// `a` with `row` (`[B, H, 1, D]`) in place of its position `i` along axis 2.
fn replace_position(a: &Array, i: i32, row: &Array) -> Result<Array> {
    let t = a.shape()[2];
    let mut parts = Vec::with_capacity(3);
    if i > 0 {
        parts.push(slice_axis(a, 2, 0, i)?);
    }
    parts.push(row.clone());
    if i + 1 < t {
        parts.push(slice_axis(a, 2, i + 1, t)?);
    }
    Ok(ops::concatenate(&parts, 2)?)
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of positions seen so far.
    pub fn offset(&self) -> i32 {
        self.offset
    }

    /// Evaluates the cached keys and values (so a long prefill does not build one graph).
    pub fn eval(&self) -> Result<()> {
        for a in [&self.keys, &self.values].into_iter().flatten() {
            a.eval()?;
        }
        Ok(())
    }

    /// Appends `k`, `v` (`[B, H, L, D]`) and returns all keys and values. With `window`, as mlx-lm's
    /// rotating cache: several positions at once are appended to the kept ones in temporal order, of
    /// which only the last `window + L - 1` stay (enough for every new query to see `window` keys); a
    /// single position is appended until `window` are kept, and then takes the place of the oldest.
    pub fn update_and_fetch(
        &mut self,
        k: &Array,
        v: &Array,
        window: Option<i32>,
    ) -> Result<(Array, Array)> {
        let l = k.shape()[2];
        let (keys, values) = match (&self.keys, &self.values, window) {
            (Some(pk), Some(pv), None) => (
                ops::concatenate(&[pk, k], 2)?,
                ops::concatenate(&[pv, v], 2)?,
            ),
            (Some(pk), Some(pv), Some(w)) => {
                let t = pk.shape()[2];
                if l == 1 && t >= w {
                    // `_update_in_place`: a window's worth, in temporal order after a multi-position
                    // update (the oldest first) or rotated by `idx`; the new position replaces the
                    // oldest.
                    let (mut pk, mut pv) = (pk.clone(), pv.clone());
                    if t > w {
                        pk = slice_axis(&pk, 2, t - w, t)?;
                        pv = slice_axis(&pv, 2, t - w, t)?;
                        self.idx = w;
                    }
                    if self.idx >= w {
                        self.idx = 0;
                    }
                    let keys = replace_position(&pk, self.idx, k)?;
                    let values = replace_position(&pv, self.idx, v)?;
                    self.idx += 1;
                    (keys, values)
                } else {
                    // Fewer than a window kept (so in temporal order), or several positions
                    // (`_update_concat`: back to temporal order, the last `window - 1` kept).
                    let (mut pk, mut pv) = (pk.clone(), pv.clone());
                    if self.idx < t {
                        pk = ops::concatenate(
                            &[
                                slice_axis(&pk, 2, self.idx, t)?,
                                slice_axis(&pk, 2, 0, self.idx)?,
                            ],
                            2,
                        )?;
                        pv = ops::concatenate(
                            &[
                                slice_axis(&pv, 2, self.idx, t)?,
                                slice_axis(&pv, 2, 0, self.idx)?,
                            ],
                            2,
                        )?;
                    }
                    if l > 1 && t > w - 1 {
                        pk = slice_axis(&pk, 2, t - (w - 1), t)?;
                        pv = slice_axis(&pv, 2, t - (w - 1), t)?;
                    }
                    let keys = ops::concatenate(&[&pk, k], 2)?;
                    let values = ops::concatenate(&[&pv, v], 2)?;
                    self.idx = keys.shape()[2];
                    (keys, values)
                }
            }
            _ => {
                self.idx = l;
                (k.clone(), v.clone())
            }
        };
        self.offset += l;
        self.keys = Some(keys.clone());
        self.values = Some(values.clone());
        Ok((keys, values))
    }
}

/// Causal mask `[L, T]` (bool) for `L` queries at positions `T-L..T` over `T` keys, limited to the last
/// `window` keys (inclusive of the query itself) when given.
pub fn causal_mask(l: i32, t: i32, window: Option<i32>) -> Result<Array> {
    let q = Array::from_iter((t - l)..t, &[l, 1]);
    let k = Array::from_iter(0..t, &[1, t]);
    let mut m = ops::ge(&q, &k)?;
    if let Some(w) = window {
        let lim = ops::lt(&q, ops::add(&k, Array::from_int(w))?)?;
        m = ops::logical_and(&m, &lim)?;
    }
    Ok(m)
}

/// Multi-head attention with grouped KV heads, RoPE, optional per-head q/k RMSNorm (Qwen3), optional
/// attention sinks (gpt-oss) and optional sliding window.
#[derive(Clone, Debug)]
pub struct Attention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    /// Per-head query norm.
    pub q_norm: Option<RmsNorm>,
    /// Per-head key norm.
    pub k_norm: Option<RmsNorm>,
    /// Attention sinks `[n_heads]`.
    pub sinks: Option<Array>,
    /// Query heads.
    pub n_heads: i32,
    /// Key/value heads.
    pub n_kv_heads: i32,
    /// Head dimension.
    pub head_dim: i32,
    /// Softmax scale.
    pub scale: f32,
    /// Rotary embedding.
    pub rope: Rope,
    /// Sliding window size, if this layer uses one.
    pub window: Option<i32>,
}

impl Attention {
    /// `x`: `[B, L, D]` → `[B, L, D]`, appending to `cache`; the projections run on `path`
    /// (see [`Linear::forward_path`]).
    pub fn forward(&self, x: &Array, cache: &mut KvCache, path: MoePath) -> Result<Array> {
        let sh = x.shape();
        if sh.len() != 3 {
            return Err(Error::invalid(format!(
                "attention expects [B, L, D], got {sh:?}"
            )));
        }
        let (b, l) = (sh[0], sh[1]);
        let q = self
            .q_proj
            .forward_path(x, path)?
            .reshape(&[b, l, self.n_heads, self.head_dim])?;
        let k =
            self.k_proj
                .forward_path(x, path)?
                .reshape(&[b, l, self.n_kv_heads, self.head_dim])?;
        let v =
            self.v_proj
                .forward_path(x, path)?
                .reshape(&[b, l, self.n_kv_heads, self.head_dim])?;
        let q = match &self.q_norm {
            Some(n) => n.forward(&q)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(n) => n.forward(&k)?,
            None => k,
        };
        let q = q.transpose_axes(&[0, 2, 1, 3])?;
        let k = k.transpose_axes(&[0, 2, 1, 3])?;
        let v = v.transpose_axes(&[0, 2, 1, 3])?;
        let offset = cache.offset();
        let q = self.rope.forward(&q, offset)?;
        let k = self.rope.forward(&k, offset)?;
        let (keys, values) = cache.update_and_fetch(&k, &v, self.window)?;
        let t = keys.shape()[2];
        let mask_arr;
        let mask = if l == 1 {
            None
        } else {
            mask_arr = causal_mask(l, t, self.window)?;
            Some(ScaledDotProductAttentionMask::Array(&mask_arr))
        };
        let sinks = match &self.sinks {
            Some(s) if s.dtype() != q.dtype() => Some(s.as_dtype(q.dtype())?),
            other => other.clone(),
        };
        let o = mlx_rs::fast::scaled_dot_product_attention(
            &q,
            &keys,
            &values,
            self.scale,
            mask,
            sinks.as_ref(),
        )?;
        let o = o
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[b, l, self.n_heads * self.head_dim])?;
        self.o_proj.forward_path(&o, path)
    }

    /// Float32 copy with dequantized weights.
    pub fn to_f32(&self) -> Result<Attention> {
        Ok(Attention {
            q_proj: self.q_proj.to_f32()?,
            k_proj: self.k_proj.to_f32()?,
            v_proj: self.v_proj.to_f32()?,
            o_proj: self.o_proj.to_f32()?,
            q_norm: self.q_norm.as_ref().map(RmsNorm::to_f32).transpose()?,
            k_norm: self.k_norm.as_ref().map(RmsNorm::to_f32).transpose()?,
            sinks: self
                .sinks
                .as_ref()
                .map(|s| s.as_dtype(Dtype::Float32))
                .transpose()?,
            rope: Rope {
                freqs: self
                    .rope
                    .freqs
                    .as_ref()
                    .map(|f| f.as_dtype(Dtype::Float32))
                    .transpose()?,
                ..self.rope.clone()
            },
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The positions held by a cache whose keys are their positions, in stored order.
    fn positions(keys: &Array) -> Vec<f32> {
        crate::array::to_f32_vec(keys).unwrap()
    }

    #[test]
    fn a_windowed_cache_keeps_mlx_lm_rotating_cache_order() {
        // What mlx-lm's RotatingKVCache(max_size=4) returns for these update sizes, keys = positions.
        let want: [(i32, &[f32]); 9] = [
            (3, &[0., 1., 2.]),
            (1, &[0., 1., 2., 3.]),
            (1, &[4., 1., 2., 3.]),
            (1, &[4., 5., 2., 3.]),
            (2, &[3., 4., 5., 6., 7.]),
            (1, &[8., 5., 6., 7.]),
            (1, &[8., 9., 6., 7.]),
            (5, &[7., 8., 9., 10., 11., 12., 13., 14.]),
            (1, &[15., 12., 13., 14.]),
        ];
        let mut c = KvCache::new();
        let mut pos = 0;
        for (l, kept) in want {
            let k = Array::from_iter((pos..pos + l).map(|p| p as f32), &[1, 1, l, 1]);
            pos += l;
            let (keys, values) = c.update_and_fetch(&k, &k, Some(4)).unwrap();
            assert_eq!(positions(&keys), kept, "after {pos} positions");
            assert_eq!(positions(&values), kept);
            assert_eq!(c.offset(), pos);
        }
        // Without a window every position stays, in order.
        let mut c = KvCache::new();
        for l in [3, 1, 2] {
            let k = Array::from_iter((0..l).map(|p| p as f32), &[1, 1, l, 1]);
            c.update_and_fetch(&k, &k, None).unwrap();
        }
        let k = Array::from_slice(&[9f32], &[1, 1, 1, 1]);
        let (keys, _) = c.update_and_fetch(&k, &k, None).unwrap();
        assert_eq!(positions(&keys), [0., 1., 2., 0., 0., 1., 9.]);
    }
}
