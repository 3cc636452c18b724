//! Printing of the CLI's reports.

use anyhow::Result;

use zmlx::fidelity::Report;
use zmlx::generate::Generation;
use zmlx::models::Model;

use super::bench::layer::{LayerRow, PairedBlock, CHAIN_LAYERS};
use super::bench::model::LayerTiming;

pub fn header() -> Result<()> {
    let dev = zmlx::runtime::default_device()?;
    println!(
        "zmlx {} | MLX {} ({} backend) | device {}",
        env!("CARGO_PKG_VERSION"),
        zmlx::runtime::mlx_version()?,
        zmlx::runtime::backend(),
        dev.name()
    );
    Ok(())
}

pub fn model_line(m: &Model, name: &str) {
    let c = &m.config;
    let q = match &c.quant {
        Some(q) => format!(
            "{} {}-bit g{}{}",
            q.default.mode,
            q.default.bits,
            q.default.group_size,
            if q.overrides.is_empty() {
                ""
            } else {
                " (+ per-layer overrides)"
            }
        ),
        None => "unquantized".to_string(),
    };
    println!(
        "model: {name}: {} | {} layers ({} MoE), D {}, {} experts top-{}, expert dim {}, vocab {} | {} | {}",
        c.arch.model_type(),
        c.num_layers,
        m.num_moe_layers(),
        c.hidden_size,
        c.num_experts,
        c.top_k,
        c.moe_intermediate,
        c.vocab_size,
        zmlx::array::dtype_name(c.dtype),
        q
    );
}

fn first_diff(a: &[u32], b: &[u32]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

pub fn decode_table(prompt: usize, r: &Generation, f: &Generation) {
    println!();
    println!(
        "decode: prompt {prompt} tokens, {} new tokens, greedy",
        r.tokens.len()
    );
    println!(
        "  {:<11} {:>12} {:>15} {:>14}",
        "path", "prefill (s)", "prefill tok/s", "decode tok/s"
    );
    let prefill_rate = |g: &Generation| {
        if g.prefill_secs > 0.0 {
            g.prompt_tokens as f64 / g.prefill_secs
        } else {
            0.0
        }
    };
    for (name, g) in [("reference", r), ("fused", f)] {
        println!(
            "  {:<11} {:>12.3} {:>15.1} {:>14.2}",
            name,
            g.prefill_secs,
            prefill_rate(g),
            g.decode_tok_per_s()
        );
    }
    println!(
        "  (reference: MLX's composed ops in the model dtype, as mlx-lm; fused: zmlx's fused MoE kernels and\n   float32-accumulating quantized matmuls, activations and KV cache in float32, weights stay quantized)"
    );
    let (rt, ft) = (r.decode_tok_per_s(), f.decode_tok_per_s());
    if rt > 0.0 {
        println!("  speedup (fused / reference decode): {:.2}x", ft / rt);
    }
    let (rp, fp) = (prefill_rate(r), prefill_rate(f));
    if rp > 0.0 {
        println!("  speedup (fused / reference prefill): {:.2}x", fp / rp);
    }
    match first_diff(&r.tokens, &f.tokens) {
        None => println!("  greedy tokens: identical ({} / {})", r.tokens.len(), r.tokens.len()),
        Some(p) => println!(
            "  greedy tokens: first difference at generated position {p} (free-running; the fidelity check below decides)"
        ),
    }
}

pub fn fidelity(rep: &Report) {
    let (mr, mf) = rep.max_errors();
    let (ar, af) = rep.mean_errors();
    let (or, of) = rep.oracle_agreement();
    let n = rep.steps.len();
    println!();
    println!(
        "fidelity: teacher-forced, prompt {} + {} steps, float32 oracle (exact dequantized weights in float32, no quantized kernels)",
        rep.prompt_len,
        n.saturating_sub(1)
    );
    println!("  max |logit - oracle|:  reference {mr:.5}  fused {mf:.5}");
    println!("  mean |logit - oracle|: reference {ar:.5}  fused {af:.5}");
    println!(
        "  fused error <= {:.2} x reference (+ slack): {} / {n} steps{}",
        rep.tol.error_ratio,
        n - rep.error_failures.len(),
        match rep.error_failures.first() {
            Some(p) => format!(" (first failure at position {p})"),
            None => String::new(),
        }
    );
    println!(
        "  fused more accurate than reference on {} / {n} steps; greedy == oracle: reference {or}/{n}, fused {of}/{n}",
        rep.fused_better_steps()
    );
    if rep.float32 {
        println!(
            "  float32 model: fused and reference greedy tokens must be identical at every step"
        );
    }
    match rep.first_divergence {
        None => println!(
            "  greedy tokens fused vs reference: identical where the margin exceeds twice the sum of both errors ({} flip(s) within error)",
            rep.explained_mismatches
        ),
        Some(p) => println!("  greedy tokens fused vs reference: first real divergence at position {p}"),
    }
    println!("FIDELITY {}", if rep.pass() { "PASS" } else { "FAIL" });
}

pub fn bench_table(rows: &[LayerTiming], tokens: usize) {
    println!();
    println!("MoE layer timing, {tokens} token(s) per call (median):");
    println!(
        "  {:>5} {:>10} {:>16} {:>12} {:>9}",
        "layer", "experts", "MLX composed ms", "fused ms", "speedup"
    );
    let (mut tr, mut tf) = (0.0, 0.0);
    for r in rows {
        tr += r.reference_s;
        tf += r.fused_s;
        println!(
            "  {:>5} {:>10} {:>16.3} {:>12.3} {:>8.2}x",
            r.layer,
            format!("{}/top{}", r.experts.0, r.experts.1),
            r.reference_s * 1e3,
            r.fused_s * 1e3,
            if r.fused_s > 0.0 {
                r.reference_s / r.fused_s
            } else {
                0.0
            }
        );
    }
    if tf > 0.0 {
        println!(
            "  {:>5} {:>10} {:>16.3} {:>12.3} {:>8.2}x",
            "all",
            "",
            tr * 1e3,
            tf * 1e3,
            tr / tf
        );
    }
}

pub fn layer_errors(rows: &[zmlx::fidelity::LayerError]) {
    if rows.is_empty() {
        return;
    }
    let (mut r, mut f) = (0f64, 0f64);
    for l in rows {
        r = r.max(l.reference);
        f = f.max(l.fused);
    }
    println!();
    println!(
        "MoE layers alone (same 16-token input, max |y - oracle| / max |oracle|): reference {r:.2e}, fused {f:.2e} (worst of {} layers)",
        rows.len()
    );
}

/// Column titles of the layer benchmark.
pub fn layer_header() {
    println!(
        "  (one layer per eval: each timed call evaluates one layer, as MLX's column does; {} layers per eval:\n   the fused path with {} layers chained on a residual stream in one evaluation, as in decoding, time per layer)",
        CHAIN_LAYERS,
        CHAIN_LAYERS
    );
    println!(
        "  {:>4} {:>11} {:>14} {:>9} | {:>9} {:>8} {:>7} {:>6} | {:>9} {:>8} {:>7} {:>6}  calls (MLX/one/chains)",
        "",
        "",
        "",
        "",
        "one layer",
        "per eval",
        "",
        "",
        format!("{} layers", CHAIN_LAYERS),
        "per eval",
        "",
        ""
    );
    println!(
        "  {:>4} {:>11} {:>14} {:>9} | {:>9} {:>8} {:>7} {:>6} | {:>9} {:>8} {:>7} {:>6}",
        "T",
        "MLX ms",
        "experts read",
        "MB read",
        "fused ms",
        "speedup",
        "GB/s",
        "peak",
        "ms/layer",
        "speedup",
        "GB/s",
        "peak"
    );
}

pub fn layer_header_gpu() {
    println!(
        "  (one layer per eval: each timed call evaluates one layer; {n} layers per eval: {n} layers chained on a\n   residual stream in one evaluation, as in decoding, time per layer; both paths both ways. \"of bw\":\n   expert-weight bytes / time over the copy bandwidth measured before each block of calls)",
        n = CHAIN_LAYERS
    );
    println!(
        "  {:>4} {:>14} {:>9} | {:>10} {:>10} {:>8} | {:>10} {:>10} {:>8} {:>8} {:>6}  calls (MLX/fused one, chains MLX/fused)",
        "T", "experts read", "MB read", "MLX us", "fused us", "speedup", "MLX us/l", "fused us/l", "speedup", "GB/s", "of bw"
    );
}

/// One row of the GPU layer benchmark: both paths one layer per evaluation and chained.
pub fn layer_row_gpu(r: &LayerRow, peak_gb_s: f64) {
    let chain = r.chain_fraction().unwrap_or(r.chain_gb_per_s() / peak_gb_s);
    let mlx_chain = r.mlx_chain_s.unwrap_or(f64::NAN);
    println!(
        "  {:>4} {:>14.1} {:>9.1} | {:>10.1} {:>10.1} {:>7.2}x | {:>10.1} {:>10.1} {:>7.2}x {:>8.0} {:>5.0}%  {}/{}, {}/{}",
        r.tokens,
        r.distinct_experts,
        r.weight_bytes / 1e6,
        r.mlx_s * 1e6,
        r.fused_s * 1e6,
        r.speedup(),
        mlx_chain * 1e6,
        r.chain_s * 1e6,
        r.chain_vs_mlx_chain().unwrap_or(f64::NAN),
        r.chain_gb_per_s(),
        100.0 * chain,
        r.mlx_iters,
        r.fused_iters,
        r.mlx_chain_iters,
        r.chain_iters
    );
    if let Some(m) = r.probe_median_gb_s() {
        println!("       copy bandwidth measured alongside: median {m:.0} GB/s");
    }
}

/// One row of the layer benchmark. The "peak" columns: the rows' fractions of the read bandwidth
/// measured alongside their blocks of calls where there are blocks, else of `peak_gb_s`.
pub fn layer_row(r: &LayerRow, peak_gb_s: f64) {
    let fused = r.fused_fraction().unwrap_or(r.fused_gb_per_s() / peak_gb_s);
    let chain = r.chain_fraction().unwrap_or(r.chain_gb_per_s() / peak_gb_s);
    println!(
        "  {:>4} {:>11.3} {:>14.1} {:>9.1} | {:>9.3} {:>7.1}x {:>7.1} {:>5.0}% | {:>9.3} {:>7.1}x {:>7.1} {:>5.0}%  {}/{}/{}",
        r.tokens,
        r.mlx_s * 1e3,
        r.distinct_experts,
        r.weight_bytes / 1e6,
        r.fused_s * 1e3,
        r.speedup(),
        r.fused_gb_per_s(),
        100.0 * fused,
        r.chain_s * 1e3,
        r.chain_speedup(),
        r.chain_gb_per_s(),
        100.0 * chain,
        r.mlx_iters,
        r.fused_iters,
        r.chain_iters
    );
    let range = |b: &[PairedBlock]| {
        let lo = b.iter().map(|b| b.probe_gb_s).fold(f64::INFINITY, f64::min);
        let hi = b.iter().map(|b| b.probe_gb_s).fold(0.0, f64::max);
        format!("{} blocks, {lo:.1}-{hi:.1} GB/s", b.len())
    };
    if let Some(m) = r.probe_median_gb_s() {
        println!(
            "       read bandwidth measured alongside (median {m:.1} GB/s): fused calls {}; chains {}",
            range(&r.fused_blocks),
            range(&r.chain_blocks)
        );
    }
}

/// Header of the `bench norm` table.
pub fn norm_header(chain: usize, with_bandwidth: bool) {
    println!(
        "  (one call per eval: x + r and the norm, both outputs evaluated; chained: {chain} residual steps in one\n   eval, time per step; GB/s: x and r read, h and y written, per chained fused step (cache-resident\n   inputs, as in a forward pass); agreement: max |fused y - MLX y| / max |MLX y|)"
    );
    if with_bandwidth {
        println!("  (of bw: the fused chained step's GB/s over the card's copy bandwidth measured before the row)");
    }
    println!(
        "  {:>6} {:>6} {:>9} | {:>10} {:>10} {:>7} | {:>10} {:>10} {:>7} | {:>8} | {:>9}{}",
        "T",
        "D",
        "dtype",
        "fused µs",
        "MLX µs",
        "speedup",
        "fused µs/s",
        "MLX µs/s",
        "speedup",
        "GB/s",
        "agreement",
        if with_bandwidth {
            " |  of bw | bw GB/s"
        } else {
            ""
        }
    );
}

/// One row of the `bench norm` table.
pub fn norm_row(r: &super::bench::norm::NormRow, bandwidth_gb_s: Option<f64>) {
    let gbs = r.bytes() / r.fused_chain_s / 1e9;
    let of_bw = bandwidth_gb_s
        .map(|b| format!(" | {:>5.1}% | {b:>7.0}", 100.0 * gbs / b))
        .unwrap_or_default();
    println!(
        "  {:>6} {:>6} {:>9} | {:>10.1} {:>10.1} {:>6.2}x | {:>10.1} {:>10.1} {:>6.2}x | {:>8.1} | {:>9.1e}{of_bw}",
        r.tokens,
        r.d,
        format!("{:?}", r.dtype).to_lowercase(),
        r.fused_s * 1e6,
        r.mlx_s * 1e6,
        r.mlx_s / r.fused_s,
        r.fused_chain_s * 1e6,
        r.mlx_chain_s * 1e6,
        r.mlx_chain_s / r.fused_chain_s,
        gbs,
        r.agreement
    );
}
