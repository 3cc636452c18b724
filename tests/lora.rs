//! One LoRA-style training step through a Qwen3-MoE model: adapters on every attention projection, the
//! quantized weights (experts included) frozen; `value_and_grad` of a cross-entropy loss with respect to the
//! adapters on the fused path (fused MoE ops, add_rms_norm, float32-accumulating linears, all differentiated
//! through their composed references) against the same on the reference path (mlx-lm's ops).

mod common;

use zmlx::array::to_f32_vec;
use zmlx::mlx_rs::error::Exception;
use zmlx::mlx_rs::ops::indexing::IndexOp;
use zmlx::mlx_rs::{ops, random, transforms, Array};
use zmlx::models::{self, synthetic::preset, Model};
use zmlx::moe::MoePath;
use zmlx::nn::Lora;

const RANK: i32 = 4;
const LEN: i32 = 12;

/// The model with adapters `ab` (a0, b0, a1, b1, ... over the layers' q, k, v, o projections) installed.
fn with_adapters(model: &Model, ab: &[Array]) -> Model {
    let mut m = model.clone();
    let mut it = ab.chunks(2);
    for layer in &mut m.layers {
        let a = &mut layer.attn;
        for proj in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj] {
            let p = it.next().expect("an adapter per projection");
            proj.lora = Some(Lora {
                a: p[0].clone(),
                b: p[1].clone(),
                scale: 2.0,
            });
        }
    }
    m
}

/// Mean next-token cross entropy of `ids` under the model with adapters `ab`, on `path`.
fn loss(model: &Model, ids: &Array, targets: &Array, ab: &[Array], path: MoePath) -> Array {
    let m = with_adapters(model, ab);
    let mut cache = m.new_cache();
    let logits = m
        .forward(ids, &mut cache, path)
        .unwrap()
        .as_dtype(zmlx::mlx_rs::Dtype::Float32)
        .unwrap();
    let lse = ops::logsumexp_axis(&logits, -1, false).unwrap();
    let picked = logits
        .take_along_axis(targets.expand_dims(-1).unwrap(), -1)
        .unwrap()
        .squeeze_axes(&[-1])
        .unwrap();
    ops::mean(ops::subtract(&lse, &picked).unwrap(), None).unwrap()
}

#[test]
fn lora_step_fused_equals_reference() {
    common::use_test_device();
    let p = preset("qwen3-tiny-f32").unwrap();
    let (model, _) = models::synthesize(&p.config, 3, &mut |_, _, _| {}).unwrap();
    let d = model.config.hidden_size;
    // Adapters per projection: a [in, r], b [r, out] (b not zero, so both get a gradient).
    let mut ab = Vec::new();
    let mut seed = 100;
    let mut rand = |shape: &[i32], std: f32| {
        seed += 1;
        random::normal::<f32>(shape, 0.0, std, &random::key(seed).unwrap()).unwrap()
    };
    for layer in &model.layers {
        let a = &layer.attn;
        for proj in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj] {
            let (i, o) = (proj.weight.in_dims(), proj.weight.out_dims());
            ab.push(rand(&[i, RANK], 1.0 / (i as f32).sqrt()));
            ab.push(rand(&[RANK, o], 0.05));
        }
    }
    assert_eq!(ab.len(), model.layers.len() * 8);
    assert!(d > 0);
    let toks = zmlx::generate::random_tokens(LEN as usize + 1, model.config.vocab_size, 9);
    let all = Array::from_slice(&toks, &[1, LEN + 1]);
    let ids = all.index((.., 0..LEN));
    let targets = all.index((.., 1..LEN + 1));
    let argnums: Vec<i32> = (0..ab.len() as i32).collect();
    let step = |path: MoePath| {
        let (model, ids, targets) = (&model, &ids, &targets);
        let f = move |a: &[Array]| -> Result<Vec<Array>, Exception> {
            Ok(vec![loss(model, ids, targets, a, path)])
        };
        let mut vg = transforms::value_and_grad_with_argnums(f, &argnums[..]);
        vg(&ab).unwrap()
    };
    let (vf, gf) = step(MoePath::Fused);
    let (vr, gr) = step(MoePath::Reference);
    let (lf, lr) = (
        to_f32_vec(&vf[0]).unwrap()[0],
        to_f32_vec(&vr[0]).unwrap()[0],
    );
    assert!(
        lf.is_finite() && (lf - lr).abs() <= 1e-4 * lr.abs(),
        "loss fused {lf} vs reference {lr}"
    );
    assert_eq!(gf.len(), ab.len());
    let mut worst = 0f64;
    for (i, (a, b)) in gf.iter().zip(&gr).enumerate() {
        assert_eq!(a.shape(), ab[i].shape());
        let (av, bv) = (to_f32_vec(a).unwrap(), to_f32_vec(b).unwrap());
        let scale = bv.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        assert!(
            scale > 0.0,
            "adapter {i}: zero gradient on the reference path"
        );
        let err = av
            .iter()
            .zip(&bv)
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .fold(0.0, f64::max);
        worst = worst.max(err / scale);
    }
    eprintln!("loss fused {lf} reference {lr}; worst relative gradient difference {worst:.3e}");
    assert!(
        worst <= 1e-3,
        "fused and reference gradients differ by {worst:.3e}"
    );
}
