//! One description of a model's parameters: every tensor's name (mlx-lm's key layout), shape, kind and
//! synthetic initialisation, arranged as the modules they make up. A family writes its description once
//! (its [`Layout`], handed to [`decoder`]); the loader (`load.rs`) checks a checkpoint's tensors against it
//! and the synthesizer (`synthetic.rs`) creates exactly those tensors.

use mlx_rs::Dtype;

use super::config::{LayerQuant, ModelConfig};
use crate::moe::{Activation, RouterKind};

/// How the synthesizer draws a tensor's values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// N(0, std).
    Normal(f32),
    /// 1 + N(0, std), for norm weights.
    OnePlus(f32),
}

/// What a tensor is, which decides how a checkpoint's copy is checked and how a synthetic one is made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// The `{module}.weight` `[lead.., out, in]` of a linear map, an expert stack or an embedding, with
    /// the config's quantization for the module (`None`: unquantized). A checkpoint stores it quantized
    /// (uint32 codes in `.weight`, `.scales`, and `.biases` where the mode has them) iff it has
    /// `{module}.scales`, as mlx-lm decides, and as a float array otherwise; the synthesizer quantizes it
    /// iff the config does.
    Weight(Option<LayerQuant>),
    /// A float array: a norm weight, a bias, attention sinks.
    Float,
    /// A float array kept in float32 whatever the model's dtype (mlx-lm's `cast_predicate` leaves
    /// GLM-4 MoE's router correction bias out of the conversion to the model's dtype). A checkpoint may
    /// hold it in any float dtype.
    Float32,
}

/// One tensor of the description.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// Its name in the checkpoint (for a quantized weight, the name of its codes).
    pub name: String,
    /// Its logical shape (a quantized weight's before packing).
    pub shape: Vec<i32>,
    /// What it is.
    pub kind: Kind,
    /// How the synthesizer draws it.
    pub init: Init,
}

impl Param {
    /// The module a weight belongs to: its name less `.weight`, the prefix of its quantized parts.
    pub fn module(&self) -> &str {
        self.name.strip_suffix(".weight").unwrap_or(&self.name)
    }

    /// Elements in its logical shape (saturating: configs are validated field by field, and a product
    /// of valid fields can still exceed u64).
    pub fn numel(&self) -> u64 {
        self.shape
            .iter()
            .map(|&d| u64::try_from(d).unwrap_or(0))
            .fold(1u64, u64::saturating_mul)
    }

    /// Bytes it takes in a checkpoint whose float tensors have dtype `dtype`.
    pub fn nbytes(&self, dtype: Dtype) -> u64 {
        let float = float_bytes(dtype);
        let n = self.numel();
        match self.kind {
            Kind::Weight(Some(q)) => {
                // Affine stores a scale and a bias per group in the float dtype; the fp modes one
                // 8-bit scale (e8m0 or e4m3) per group.
                let per_group = if q.mode.has_biases() { 2 * float } else { 1 };
                let group = u64::try_from(q.group_size).unwrap_or(1).max(1);
                let bits = u64::try_from(q.bits).unwrap_or(0);
                (n.saturating_mul(bits) / 8).saturating_add((n / group).saturating_mul(per_group))
            }
            Kind::Weight(None) | Kind::Float => n.saturating_mul(float),
            Kind::Float32 => n.saturating_mul(4),
        }
    }
}

fn float_bytes(dtype: Dtype) -> u64 {
    match dtype {
        Dtype::Float64 => 8,
        Dtype::Float32 => 4,
        _ => 2,
    }
}

/// A linear map: weight `[lead.., out, in]` and optional bias `[lead.., out]` (`lead`: `[E]` for an
/// expert stack).
#[derive(Clone, Debug, PartialEq)]
pub struct LinearSpec {
    /// The weight ([`Kind::Weight`]).
    pub weight: Param,
    /// The bias, if the module has one.
    pub bias: Option<Param>,
}

/// The gate, up and down projections of a gated MLP: a dense one, or an expert stack.
#[derive(Clone, Debug, PartialEq)]
pub struct MlpSpec {
    /// `gate_proj`.
    pub gate: LinearSpec,
    /// `up_proj`.
    pub up: LinearSpec,
    /// `down_proj`.
    pub down: LinearSpec,
}

/// Self-attention.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionSpec {
    /// `q_proj`.
    pub q: LinearSpec,
    /// `k_proj`.
    pub k: LinearSpec,
    /// `v_proj`.
    pub v: LinearSpec,
    /// `o_proj`.
    pub o: LinearSpec,
    /// Per-head RMSNorm weight on the queries.
    pub q_norm: Option<Param>,
    /// Per-head RMSNorm weight on the keys.
    pub k_norm: Option<Param>,
    /// Per-head attention sinks.
    pub sinks: Option<Param>,
    /// Sliding-window size (`None`: full attention).
    pub window: Option<i32>,
}

/// A sparse MoE block.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeSpec {
    /// The router's linear map (`[E, D]`).
    pub router: LinearSpec,
    /// How its logits choose and weigh experts.
    pub routing: RouterKind,
    /// The router's score correction bias `[E]`.
    pub correction_bias: Option<Param>,
    /// The routed experts (lead `[E]`).
    pub experts: MlpSpec,
    /// The experts' activation.
    pub activation: Activation,
    /// Always-on shared experts, a dense MLP.
    pub shared: Option<MlpSpec>,
}

/// A layer's feed-forward part.
#[derive(Clone, Debug, PartialEq)]
pub enum FfnSpec {
    /// A dense MLP.
    Dense(Box<MlpSpec>),
    /// A sparse MoE block.
    Moe(Box<MoeSpec>),
}

/// One decoder layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    /// Self-attention.
    pub attn: AttentionSpec,
    /// RMSNorm weight before attention.
    pub input_norm: Param,
    /// RMSNorm weight before the feed-forward part.
    pub post_attn_norm: Param,
    /// Feed-forward part.
    pub ffn: FfnSpec,
}

/// A whole model's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Token embedding `[vocab, D]` ([`Kind::Weight`]).
    pub embed: Param,
    /// Layers.
    pub layers: Vec<LayerSpec>,
    /// Final RMSNorm weight.
    pub norm: Param,
    /// Output projection (`None`: tied to the embedding).
    pub lm_head: Option<LinearSpec>,
}

impl LinearSpec {
    fn push<'a>(&'a self, out: &mut Vec<&'a Param>) {
        out.push(&self.weight);
        out.extend(&self.bias);
    }
}

impl MlpSpec {
    fn push<'a>(&'a self, out: &mut Vec<&'a Param>) {
        for l in [&self.gate, &self.up, &self.down] {
            l.push(out);
        }
    }
}

impl ModelSpec {
    /// Every tensor, each once, in the order the synthesizer makes them.
    pub fn params(&self) -> Vec<&Param> {
        let mut v = vec![&self.embed];
        for l in &self.layers {
            let a = &l.attn;
            for p in [&a.q, &a.k, &a.v, &a.o] {
                p.push(&mut v);
            }
            v.extend([&a.q_norm, &a.k_norm, &a.sinks].into_iter().flatten());
            v.extend([&l.input_norm, &l.post_attn_norm]);
            match &l.ffn {
                FfnSpec::Dense(m) => m.push(&mut v),
                FfnSpec::Moe(m) => {
                    m.router.push(&mut v);
                    v.extend(&m.correction_bias);
                    m.experts.push(&mut v);
                    if let Some(s) = &m.shared {
                        s.push(&mut v);
                    }
                }
            }
        }
        v.push(&self.norm);
        if let Some(h) = &self.lm_head {
            h.push(&mut v);
        }
        v
    }

    /// Bytes of a checkpoint of these parameters whose float tensors have dtype `dtype`.
    pub fn nbytes(&self, dtype: Dtype) -> u64 {
        self.params()
            .iter()
            .fold(0u64, |s, p| s.saturating_add(p.nbytes(dtype)))
    }

    fn expert_stacks(&self) -> impl Iterator<Item = &MlpSpec> {
        self.layers.iter().filter_map(|l| match &l.ffn {
            FfnSpec::Moe(m) => Some(&m.experts),
            FfnSpec::Dense(_) => None,
        })
    }

    /// The modules of the routed expert stacks (`{module}.weight`, its quantized parts and `{module}.bias`
    /// all lead with the expert axis).
    pub fn expert_modules(&self) -> Vec<&str> {
        self.expert_stacks()
            .flat_map(|m| [&m.gate, &m.up, &m.down])
            .map(|l| l.weight.module())
            .collect()
    }

    /// Bytes of the routed expert stacks (weights, their quantization parts, biases) in a checkpoint
    /// whose float tensors have dtype `dtype`.
    pub fn expert_nbytes(&self, dtype: Dtype) -> u64 {
        self.expert_stacks()
            .flat_map(|m| [&m.gate, &m.up, &m.down])
            .flat_map(|l| std::iter::once(&l.weight).chain(&l.bias))
            .map(|p| p.nbytes(dtype))
            .sum()
    }

    /// The description of one rank's share under expert parallelism: every expert stack holding `count`
    /// experts (the names stay: a rank's tensors are slices of the checkpoint's).
    pub fn with_expert_count(&self, count: i32) -> ModelSpec {
        let mut spec = self.clone();
        for l in &mut spec.layers {
            if let FfnSpec::Moe(m) = &mut l.ffn {
                for lin in [&mut m.experts.gate, &mut m.experts.up, &mut m.experts.down] {
                    for p in std::iter::once(&mut lin.weight).chain(lin.bias.as_mut()) {
                        if let Some(e) = p.shape.first_mut() {
                            *e = count;
                        }
                    }
                }
            }
        }
        spec
    }
}

/// What tells one family's decoder apart: mlx-lm's module names and the options of its modules. Each
/// layer is `model.layers.{i}` with `self_attn`, `input_layernorm`, `post_attention_layernorm` and a
/// feed-forward part: a dense MLP under `mlp`, or a MoE block under [`Layout::moe`].
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// q/k/v projections carry a bias.
    pub qkv_bias: bool,
    /// The output projection carries a bias.
    pub o_bias: bool,
    /// Per-head RMSNorm on queries and keys.
    pub qk_norm: bool,
    /// Per-head attention sinks.
    pub sinks: bool,
    /// The MoE block's module name.
    pub moe: &'static str,
    /// The router's module name under it.
    pub router: &'static str,
    /// The router carries a bias.
    pub router_bias: bool,
    /// The router is a linear layer that mlx-lm quantizes with the rest (GLM-4 MoE's `MoEGate` is a
    /// bare matrix, which `nn.quantize` leaves in the float dtype).
    pub router_quantized: bool,
    /// The router has an `e_score_correction_bias` (float32).
    pub correction_bias: bool,
    /// The shared experts' module name under the MoE block (used where the config has some).
    pub shared_experts: &'static str,
    /// The expert stack's module name under it.
    pub experts: &'static str,
    /// The experts carry biases.
    pub expert_bias: bool,
    /// The experts' activation.
    pub activation: Activation,
}

/// The projections of an MLP, in order.
pub const MLP_PROJECTIONS: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// Layer `i`'s module path.
pub fn layer_path(i: i32) -> String {
    format!("model.layers.{i}")
}

impl Layout {
    /// Layer `i`'s MoE block path.
    pub fn moe_path(&self, i: i32) -> String {
        format!("{}.{}", layer_path(i), self.moe)
    }

    /// Layer `i`'s router path.
    pub fn router_path(&self, i: i32) -> String {
        format!("{}.{}", self.moe_path(i), self.router)
    }

    /// Layer `i`'s expert stack path.
    pub fn experts_path(&self, i: i32) -> String {
        format!("{}.{}", self.moe_path(i), self.experts)
    }
}

/// Builds the specs of one config: the shapes come from its sizes, the quantization from its
/// `quantization` block, the initialisation scales from its depth.
struct Builder<'a> {
    cfg: &'a ModelConfig,
    /// Scale of residual-branch outputs (o_proj, down_proj): 1/sqrt(2 L), as in GPT-2-style init.
    res: f32,
}

fn inv_sqrt(k: i32) -> f32 {
    1.0 / (k as f32).sqrt()
}

impl Builder<'_> {
    fn weight(&self, module: &str, shape: Vec<i32>, std: f32) -> Param {
        Param {
            name: format!("{module}.weight"),
            shape,
            kind: Kind::Weight(self.cfg.quant_for(module)),
            init: Init::Normal(std),
        }
    }

    fn linear(
        &self,
        module: &str,
        lead: &[i32],
        out: i32,
        inp: i32,
        std: f32,
        bias: bool,
    ) -> LinearSpec {
        let mut shape = lead.to_vec();
        shape.extend([out, inp]);
        LinearSpec {
            weight: self.weight(module, shape, std),
            bias: bias.then(|| {
                let mut shape = lead.to_vec();
                shape.push(out);
                float(format!("{module}.bias"), shape, Init::Normal(0.1))
            }),
        }
    }

    fn norm(&self, module: &str, dim: i32) -> Param {
        float(format!("{module}.weight"), vec![dim], Init::OnePlus(0.1))
    }

    /// A gated MLP `D → inter → D` under `module` (`lead`: `[E]` for an expert stack).
    fn mlp(&self, module: &str, lead: &[i32], inter: i32, bias: bool) -> MlpSpec {
        let d = self.cfg.hidden_size;
        let [gate, up, down] = MLP_PROJECTIONS.map(|p| format!("{module}.{p}"));
        MlpSpec {
            gate: self.linear(&gate, lead, inter, d, inv_sqrt(d), bias),
            up: self.linear(&up, lead, inter, d, inv_sqrt(d), bias),
            down: self.linear(&down, lead, d, inter, self.res * inv_sqrt(inter), bias),
        }
    }

    fn attention(&self, i: i32, l: &Layout) -> AttentionSpec {
        let c = self.cfg;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let a = format!("{}.self_attn", layer_path(i));
        let (q_out, kv_out) = (c.n_heads * hd, c.n_kv_heads * hd);
        let proj = |name: &str, out: i32, inp: i32, std: f32, bias: bool| {
            self.linear(&format!("{a}.{name}"), &[], out, inp, std, bias)
        };
        let qk_norm = |name: &str| l.qk_norm.then(|| self.norm(&format!("{a}.{name}"), hd));
        AttentionSpec {
            q: proj("q_proj", q_out, d, inv_sqrt(d), l.qkv_bias),
            k: proj("k_proj", kv_out, d, inv_sqrt(d), l.qkv_bias),
            v: proj("v_proj", kv_out, d, inv_sqrt(d), l.qkv_bias),
            o: proj("o_proj", d, q_out, self.res * inv_sqrt(q_out), l.o_bias),
            q_norm: qk_norm("q_norm"),
            k_norm: qk_norm("k_norm"),
            sinks: l
                .sinks
                .then(|| float(format!("{a}.sinks"), vec![c.n_heads], Init::Normal(1.0))),
            window: if c.sliding[i as usize] {
                c.sliding_window
            } else {
                None
            },
        }
    }

    fn moe(&self, i: i32, l: &Layout, routing: RouterKind) -> MoeSpec {
        let c = self.cfg;
        let (d, e) = (c.hidden_size, c.num_experts);
        let router_path = l.router_path(i);
        let mut router = self.linear(&router_path, &[], e, d, 2.0 * inv_sqrt(d), l.router_bias);
        if !l.router_quantized {
            router.weight.kind = Kind::Weight(None);
        }
        MoeSpec {
            router,
            routing,
            correction_bias: l.correction_bias.then(|| Param {
                name: format!("{router_path}.e_score_correction_bias"),
                shape: vec![e],
                kind: Kind::Float32,
                init: Init::Normal(0.1),
            }),
            experts: self.mlp(&l.experts_path(i), &[e], c.moe_intermediate, l.expert_bias),
            activation: l.activation,
            shared: c.shared_intermediate.map(|n| {
                self.mlp(
                    &format!("{}.{}", l.moe_path(i), l.shared_experts),
                    &[],
                    n,
                    false,
                )
            }),
        }
    }
}

fn float(name: String, shape: Vec<i32>, init: Init) -> Param {
    Param {
        name,
        shape,
        kind: Kind::Float,
        init,
    }
}

/// The parameters of a decoder-only transformer laid out as `layout`, sized by `cfg`: embedding, per
/// layer attention + norms + a MoE block routing as `routing` (a dense MLP on the config's non-sparse
/// layers), final norm and, unless tied to the embedding, the output projection.
pub fn decoder(cfg: &ModelConfig, layout: &Layout, routing: RouterKind) -> ModelSpec {
    let b = Builder {
        cfg,
        res: 1.0 / (2.0 * cfg.num_layers as f32).sqrt(),
    };
    let d = cfg.hidden_size;
    let layers = (0..cfg.num_layers)
        .map(|i| {
            let p = layer_path(i);
            LayerSpec {
                attn: b.attention(i, layout),
                input_norm: b.norm(&format!("{p}.input_layernorm"), d),
                post_attn_norm: b.norm(&format!("{p}.post_attention_layernorm"), d),
                ffn: if cfg.sparse[i as usize] {
                    FfnSpec::Moe(Box::new(b.moe(i, layout, routing.clone())))
                } else {
                    FfnSpec::Dense(Box::new(b.mlp(
                        &format!("{p}.mlp"),
                        &[],
                        cfg.intermediate,
                        false,
                    )))
                },
            }
        })
        .collect();
    ModelSpec {
        embed: b.weight("model.embed_tokens", vec![cfg.vocab_size, d], 1.0),
        layers,
        norm: b.norm("model.norm", d),
        lm_head: (!cfg.tie_word_embeddings)
            .then(|| b.linear("lm_head", &[], cfg.vocab_size, d, 3.0 * inv_sqrt(d), false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{synthetic, Arch, Dims, Ffn, Model};
    use crate::moe::MoePath;

    fn tiny(arch: Arch) -> ModelConfig {
        let d = Dims {
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            experts: 4,
            top_k: 2,
            expert_dim: 32,
            vocab: 128,
            window: Some(8),
        };
        let q = serde_json::json!({"group_size": 32, "bits": 4, "mode": "affine"});
        let c = synthetic::with_quant(arch.config_for(&d, "bfloat16"), q);
        ModelConfig::from_json(&c).unwrap_or_else(|e| panic!("{arch:?}: {e}"))
    }

    /// Synthesizes `spec`'s tensors and loads them back: every tensor is taken, none is left over.
    fn round_trip(cfg: &ModelConfig, spec: &ModelSpec) -> Model {
        let mut t = synthetic::synth_tensors_of(cfg, spec, 3, None, &mut |_, _, _| {}).unwrap();
        let m = Model::from_spec(cfg.clone(), spec, &mut t).unwrap();
        assert!(t.unused().is_empty(), "{:?}", t.unused());
        m
    }

    #[test]
    fn every_family_synthesizes_exactly_what_it_loads() {
        for arch in Arch::ALL {
            let cfg = tiny(arch);
            let spec = cfg.schema();
            let names: std::collections::HashSet<&str> =
                spec.params().iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names.len(), spec.params().len(), "{arch:?}: a name twice");
            let m = round_trip(&cfg, &spec);
            // GLM-4 MoE's first layer is dense (`first_k_dense_replace` 1).
            let moe_layers = if arch == Arch::Glm4Moe { 1 } else { 2 };
            assert_eq!(m.num_moe_layers(), moe_layers, "{arch:?}");
            let ids = mlx_rs::Array::from_slice(&[1u32, 2, 3], &[1, 3]);
            let y = m
                .forward(&ids, &mut m.new_cache(), MoePath::Reference)
                .unwrap();
            assert_eq!(y.shape(), &[1, 3, 128], "{arch:?}");
        }
    }

    #[test]
    fn shared_experts_and_a_router_correction_bias_load_from_the_description() {
        let cfg = tiny(Arch::Qwen3Moe);
        let mut spec = cfg.schema();
        let b = Builder {
            cfg: &cfg,
            res: 1.0,
        };
        for (i, l) in spec.layers.iter_mut().enumerate() {
            if let FfnSpec::Moe(m) = &mut l.ffn {
                let p = format!("{}.mlp", layer_path(i as i32));
                m.shared = Some(b.mlp(&format!("{p}.shared_experts"), &[], 64, false));
                m.correction_bias = Some(float(
                    format!("{p}.gate.e_score_correction_bias"),
                    vec![cfg.num_experts],
                    Init::Normal(0.1),
                ));
            }
        }
        let m = round_trip(&cfg, &spec);
        for l in &m.layers {
            let Ffn::Moe(moe) = &l.ffn else {
                panic!("a dense layer")
            };
            assert!(moe.shared.is_some() && moe.router.correction_bias.is_some());
        }
        // A checkpoint without them is reported by the first tensor it lacks.
        let mut t = synthetic::synth_tensors(&cfg, 3, &mut |_, _, _| {}).unwrap();
        let e = Model::from_spec(cfg.clone(), &spec, &mut t).unwrap_err();
        assert!(
            e.to_string()
                .contains("missing tensor 'model.layers.0.mlp.gate.e_score_correction_bias'"),
            "{e}"
        );
    }

    #[test]
    fn sizes_count_codes_scales_and_biases() {
        let q = |mode, group_size, bits| {
            Kind::Weight(Some(LayerQuant {
                mode,
                group_size,
                bits,
            }))
        };
        let p = |kind| Param {
            name: "w.weight".into(),
            shape: vec![4, 64],
            kind,
            init: Init::Normal(1.0),
        };
        use crate::quant::QuantMode::{Affine, Mxfp4};
        // 256 codes of 4 bits, 8 groups of a bf16 scale and bias.
        assert_eq!(p(q(Affine, 32, 4)).nbytes(Dtype::Bfloat16), 128 + 8 * 4);
        // 256 codes of 4 bits, 8 groups of one 8-bit scale.
        assert_eq!(p(q(Mxfp4, 32, 4)).nbytes(Dtype::Bfloat16), 128 + 8);
        assert_eq!(p(Kind::Float).nbytes(Dtype::Float32), 1024);
        assert_eq!(p(Kind::Weight(None)).nbytes(Dtype::Float16), 512);
        assert_eq!(p(Kind::Float).module(), "w");
    }
}
