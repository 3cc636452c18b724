//! Transparent huge pages for weight buffers.
//!
//! Quantized MoE decode streams every chosen expert's weights from memory once per token. With 4 KiB
//! pages that is a TLB miss (a page walk, nested under virtualization) every 4 KiB of weights; with
//! 2 MiB pages there is one per 2 MiB. On Linux, [`promote`] asks the kernel to back the 2 MiB-aligned
//! interior of each buffer with huge pages now (`madvise(MADV_COLLAPSE)`, Linux 6.1+), falling back
//! to `MADV_HUGEPAGE` (later collapse by khugepaged) where that is refused. The contents and addresses
//! of the arrays do not change; only their page-table backing does. Elsewhere it does nothing.

use mlx_rs::{Array, Dtype};

use crate::error::{Error, Result};

/// What [`promote`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HugePages {
    /// Bytes of the arrays' buffers (their 2 MiB-aligned interiors are what can be promoted).
    pub total_bytes: usize,
    /// Bytes now backed by huge pages (`MADV_COLLAPSE` succeeded).
    pub collapsed_bytes: usize,
    /// Bytes only marked for a later collapse (`MADV_HUGEPAGE`).
    pub advised_bytes: usize,
}

const HUGE: usize = 2 << 20;

/// The data of an evaluated, row-contiguous array as (address, bytes).
fn buffer(a: &Array) -> Result<(usize, usize)> {
    fn span<T: mlx_rs::ArrayElement>(a: &Array) -> Result<(usize, usize)> {
        let s = a
            .try_as_slice::<T>()
            .map_err(|e| Error::Conversion(e.to_string()))?;
        Ok((s.as_ptr() as usize, std::mem::size_of_val(s)))
    }
    a.eval()?;
    match a.dtype() {
        Dtype::Uint8 => span::<u8>(a),
        Dtype::Uint32 => span::<u32>(a),
        Dtype::Int32 => span::<i32>(a),
        Dtype::Float32 => span::<f32>(a),
        Dtype::Float16 => span::<half::f16>(a),
        Dtype::Bfloat16 => span::<half::bf16>(a),
        other => Err(Error::invalid(format!(
            "huge pages: unsupported dtype {other:?}"
        ))),
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use std::ffi::{c_int, c_void};
    extern "C" {
        pub fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
    }
    pub const MADV_HUGEPAGE: c_int = 14;
    pub const MADV_COLLAPSE: c_int = 25;
}

/// Asks for huge pages behind the buffers of `arrays` (evaluated first). Best effort: a kernel that
/// refuses (no THP, `never`, too old) leaves the arrays as they were, and the report says so.
/// Errors only if an array cannot be read (dtype without a host view, not row-contiguous).
pub fn promote(arrays: &[&Array]) -> Result<HugePages> {
    let mut r = HugePages::default();
    for a in arrays {
        let (addr, len) = buffer(a)?;
        let one = promote_bytes(addr as *const u8, len);
        r.total_bytes += one.total_bytes;
        r.collapsed_bytes += one.collapsed_bytes;
        r.advised_bytes += one.advised_bytes;
    }
    Ok(r)
}

/// [`promote`] for a buffer of this process (e.g. a large `Vec` that is read like weights): the 2 MiB-aligned
/// interior of `buf`; nothing outside it is touched.
pub fn promote_slice<T>(buf: &[T]) -> HugePages {
    promote_bytes(buf.as_ptr().cast(), std::mem::size_of_val(buf))
}

/// [`promote`] for the 2 MiB-aligned interior of the `len` bytes at `ptr`, which must be one live
/// allocation of this process (e.g. a `Vec`'s buffer); nothing outside it is touched.
fn promote_bytes(ptr: *const u8, len: usize) -> HugePages {
    let mut r = HugePages {
        total_bytes: len,
        ..Default::default()
    };
    let addr = ptr as usize;
    let start = addr.div_ceil(HUGE) * HUGE;
    let end = (addr + len) / HUGE * HUGE;
    if end <= start {
        return r;
    }
    #[cfg(target_os = "linux")]
    {
        let p = start as *mut std::ffi::c_void;
        // SAFETY: [start, end) lies inside the caller's live buffer; madvise with these advices
        // changes only how those pages are backed, never their contents.
        if unsafe { sys::madvise(p, end - start, sys::MADV_COLLAPSE) } == 0 {
            r.collapsed_bytes = end - start;
        } else if unsafe { sys::madvise(p, end - start, sys::MADV_HUGEPAGE) } == 0 {
            r.advised_bytes = end - start;
        }
    }
    r
}

/// Whether promotion is wanted: on unless `ZMLX_HUGE_PAGES` is `0`, `off` or `false`.
pub fn enabled() -> bool {
    !matches!(
        std::env::var("ZMLX_HUGE_PAGES").as_deref(),
        Ok("0") | Ok("off") | Ok("false")
    )
}
