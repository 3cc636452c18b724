//! `zmlx dist-selftest` (hidden): joins the distributed group and checks every collective against the same
//! computation done in one process. Every rank knows every rank's data (a function of the rank), so each can
//! compute what the collective must return with plain MLX ops and compare exactly (the data are small
//! integers and halves, whose sums are exact in every dtype used). Run it under `zmlx launch`.

use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use mlx_rs::{ops, Array, Dtype};

use zmlx::array::to_f32_vec;
use zmlx::distributed::{self as dist, Backend, Group};

use super::Exit;

#[derive(Args, Debug)]
pub struct SelftestArgs {
    /// Backend to join (`any`: whichever the launcher configured, else the singleton group).
    #[arg(long, default_value = "any", value_parser = backend())]
    backend: Backend,
    /// Fail unless the group has exactly this many ranks.
    #[arg(long)]
    expect_size: Option<usize>,
    /// Fault injection: the process whose MLX_RANK is this exits with --exit-code before joining the group
    /// (its peers are left waiting for it).
    #[arg(long)]
    fail_rank: Option<usize>,
    /// Exit status of --fail-rank's process.
    #[arg(long, default_value_t = 3)]
    exit_code: u8,
}

fn backend() -> impl TypedValueParser<Value = Backend> {
    PossibleValuesParser::new(Backend::ALL.map(Backend::name)).try_map(|s| s.parse::<Backend>())
}

pub fn run(a: SelftestArgs) -> Result<()> {
    if let Some(r) = a.fail_rank {
        let mine = std::env::var(dist::ENV_RANK).ok();
        if mine.as_deref().map(str::trim) == Some(r.to_string().as_str()) {
            return Err(Exit {
                code: a.exit_code,
                msg: format!("rank {r}: failing on purpose (--fail-rank {r})"),
            }
            .into());
        }
    }
    let group = dist::init(false, a.backend).context("joining the distributed group")?;
    let (r, n) = (group.rank(), group.size());
    if let Some(want) = a.expect_size {
        if want != n {
            bail!("rank {r}: the group has {n} ranks, expected {want}");
        }
    }
    let say = |what: &str| println!("rank {r}/{n}: {what}");
    say(&format!("joined ({})", a.backend));

    for dtype in [Dtype::Float32, Dtype::Int32, Dtype::Bfloat16] {
        // A tiny array (fewer elements than ranks takes the ring's small-buffer path), a small matrix and
        // one large enough to be split into chunks.
        for shape in [&[1][..], &[3, 5], &[(1 << 18) + 7]] {
            let mine = data(r, shape, dtype)?;
            let all: Vec<Array> = (0..n)
                .map(|q| data(q, shape, dtype))
                .collect::<Result<_>>()?;
            let stacked = ops::stack(&all, 0)?;
            let what = |op: &str| format!("{op} {} {shape:?}", zmlx::array::dtype_name(dtype));
            check(
                &dist::all_sum(&mine, &group)?,
                &ops::sum_axis(&stacked, 0, None)?,
                &what("all_sum"),
            )?;
            check(
                &dist::all_max(&mine, &group)?,
                &ops::max_axis(&stacked, 0, None)?,
                &what("all_max"),
            )?;
            check(
                &dist::all_min(&mine, &group)?,
                &ops::min_axis(&stacked, 0, None)?,
                &what("all_min"),
            )?;
            check(
                &dist::all_gather(&mine, &group)?,
                &ops::concatenate(&all, 0)?,
                &what("all_gather"),
            )?;
        }
        say(&format!(
            "all_sum, all_max, all_min, all_gather {}: ok",
            zmlx::array::dtype_name(dtype)
        ));
    }

    if n > 1 {
        point_to_point(&group)?;
        say("send, recv, recv_like: ok");
    } else if dist::send(&data(0, &[2], Dtype::Float32)?, 0, &group).is_ok() {
        bail!("send in the singleton group did not fail");
    }

    // Optional capabilities: a backend without them says so (MLX's message); one with them must be right.
    let x = data(r, &[2 * n as i32, 3], Dtype::Float32)?;
    // The ring refuses sum_scatter when evaluating it.
    let scattered = dist::sum_scatter(&x, &group).and_then(|y| {
        y.eval()?;
        Ok(y)
    });
    match scattered {
        Ok(y) => {
            let all: Vec<Array> = (0..n)
                .map(|q| data(q, &[2 * n as i32, 3], Dtype::Float32))
                .collect::<Result<_>>()?;
            let sum = ops::sum_axis(&ops::stack(&all, 0)?, 0, None)?;
            let mine = zmlx::array::slice_axis(&sum, 0, 2 * r as i32, 2 * (r as i32 + 1))?;
            check(&y, &mine, "sum_scatter")?;
            say("sum_scatter: ok");
        }
        Err(e) => say(&format!("sum_scatter: not supported here ({e})")),
    }
    let color = (r % 2) as i32;
    match group.split(color, None) {
        Ok(sub) => {
            let members: Vec<usize> = (0..n).filter(|q| q % 2 == r % 2).collect();
            if sub.size() != members.len() {
                bail!(
                    "rank {r}: split by parity gave {} ranks, expected {}",
                    sub.size(),
                    members.len()
                );
            }
            let all: Vec<Array> = members
                .iter()
                .map(|&q| data(q, &[4], Dtype::Float32))
                .collect::<Result<_>>()?;
            check(
                &dist::all_sum(&data(r, &[4], Dtype::Float32)?, &sub)?,
                &ops::sum_axis(&ops::stack(&all, 0)?, 0, None)?,
                "all_sum over a split group",
            )?;
            say("split: ok");
        }
        Err(e) => say(&format!("split: not supported here ({e})")),
    }
    say("all checks passed");
    Ok(())
}

/// Each rank sends its data to the next rank and receives the previous one's, then the other way round;
/// every rank checks it got its neighbour's data. Even ranks send first and odd ranks receive first, so no
/// two neighbours both wait to receive.
fn point_to_point(group: &Group) -> Result<()> {
    let (r, n) = (group.rank(), group.size());
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    let shape = [4, 3];
    let mine = data(r, &shape, Dtype::Float32)?;
    mine.eval()?;
    let exchange = |sent: Array, got: Array| -> Result<Array> {
        if r % 2 == 0 {
            sent.eval()?;
            got.eval()?;
        } else {
            got.eval()?;
            sent.eval()?;
        }
        Ok(got)
    };

    let got = exchange(
        dist::send(&mine, right, group)?,
        dist::recv_like(&mine, left, group)?,
    )?;
    check(
        &got,
        &data(left, &shape, Dtype::Float32)?,
        "recv_like from the left",
    )?;

    let got = exchange(
        dist::send(&mine, left, group)?,
        dist::recv(&shape, Dtype::Float32, right, group)?,
    )?;
    check(
        &got,
        &data(right, &shape, Dtype::Float32)?,
        "recv from the right",
    )?;
    Ok(())
}

/// Rank `rank`'s data: small integers and halves, different on every rank and element, exact in bfloat16.
fn data(rank: usize, shape: &[i32], dtype: Dtype) -> Result<Array> {
    let len: i32 = shape.iter().product();
    let i = Array::from_iter(0..len, &[len]);
    // ((i * 7 + 3 * rank) mod 23) - 11, halved for float types: distinct per rank, |v| <= 11.
    let v = ops::subtract(
        ops::remainder(
            ops::add(
                ops::multiply(&i, Array::from_int(7))?,
                Array::from_int(3 * rank as i32),
            )?,
            Array::from_int(23),
        )?,
        Array::from_int(11),
    )?;
    let v = if dtype == Dtype::Int32 {
        v
    } else {
        ops::multiply(v.as_dtype(Dtype::Float32)?, Array::from_f32(0.5))?
    };
    Ok(v.as_dtype(dtype)?.reshape(shape)?)
}

fn check(got: &Array, want: &Array, what: &str) -> Result<()> {
    if got.shape() != want.shape() || got.dtype() != want.dtype() {
        bail!(
            "{what}: shape {:?} {:?}, expected {:?} {:?}",
            got.shape(),
            got.dtype(),
            want.shape(),
            want.dtype()
        );
    }
    let (g, w) = (to_f32_vec(got)?, to_f32_vec(want)?);
    if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
        bail!(
            "{what}: element {i} is {}, the single-process result is {}",
            g[i],
            w[i]
        );
    }
    Ok(())
}
