//! Huge-page promotion of weight buffers: contents unchanged, accounting consistent, bad input refused.

use zmlx::hugepages::promote;
use zmlx::mlx_rs::{self, Array, Dtype};

#[test]
fn promotion_keeps_contents_and_accounts_for_every_byte() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let key = mlx_rs::random::key(seed).expect("key");
    // 8 MiB of uint32 (spans several 2 MiB pages whatever its alignment) and a bf16 array.
    let w = mlx_rs::random::randint::<_, u32>(0, i32::MAX, &[512, 4096], &key)
        .expect("randint")
        .as_dtype(Dtype::Uint32)
        .expect("u32");
    let s = mlx_rs::random::normal::<f32>(&[4096, 300], 0.0, 1.0, &key)
        .expect("normal")
        .as_dtype(Dtype::Bfloat16)
        .expect("bf16");
    w.eval().expect("eval");
    s.eval().expect("eval");
    let before_w: Vec<u32> = w.as_slice::<u32>().to_vec();
    let before_s = s.as_dtype(Dtype::Float32).expect("f32");
    before_s.eval().expect("eval");
    let before_s: Vec<f32> = before_s.as_slice::<f32>().to_vec();

    let r = promote(&[&w, &s]).expect("promote");
    eprintln!("{r:?}");
    assert_eq!(r.total_bytes, w.nbytes() + s.nbytes());
    assert!(r.collapsed_bytes + r.advised_bytes <= r.total_bytes);
    // Whatever the kernel did, at most the 2 MiB-aligned interiors were touched.
    let interior = |a: &Array| -> usize {
        let n = a.nbytes();
        n.saturating_sub(2 << 20) / (2 << 20) * (2 << 20) + (2 << 20)
    };
    assert!(r.collapsed_bytes + r.advised_bytes <= interior(&w) + interior(&s));

    assert_eq!(w.as_slice::<u32>(), &before_w[..]);
    let after_s = s.as_dtype(Dtype::Float32).expect("f32");
    after_s.eval().expect("eval");
    assert_eq!(after_s.as_slice::<f32>(), &before_s[..]);
    // Still usable by MLX ops.
    let sum = w.sum(None).expect("sum");
    sum.eval().expect("eval");
}

#[test]
fn promotion_refuses_dtypes_without_a_host_view() {
    let a = Array::from_slice(&[true, false, true], &[3]);
    assert!(promote(&[&a]).is_err());
}
