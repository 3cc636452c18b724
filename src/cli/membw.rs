//! Measures this machine's memory read bandwidth, so benchmarks can state achieved GB/s as a fraction of
//! what the machine can do, measured in the same run.

use std::time::Instant;

use zmlx::{Error, Result};

/// Result of a read-bandwidth measurement.
#[derive(Clone, Copy, Debug)]
pub struct Bandwidth {
    /// Best observed read bandwidth, bytes per second.
    pub bytes_per_sec: f64,
    /// Threads that read concurrently (what the measurement covered: the tests check it; the benchmark
    /// states it from its own settings).
    #[cfg_attr(not(test), allow(dead_code))]
    pub threads: usize,
    /// Size of the buffer that was read, bytes.
    #[cfg_attr(not(test), allow(dead_code))]
    pub buffer_bytes: usize,
}

impl Bandwidth {
    pub fn gb_per_sec(&self) -> f64 {
        self.bytes_per_sec / 1e9
    }
}

/// Sums a slice with independent accumulators so the compiler can keep several loads in flight.
#[inline(never)]
fn read_sum(chunk: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut it = chunk.chunks_exact(8);
    for c in &mut it {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    let mut total = it.remainder().iter().fold(0u64, |a, &b| a.wrapping_add(b));
    for a in acc {
        total = total.wrapping_add(a);
    }
    total
}

/// A read-bandwidth probe that keeps its buffer (filled and given the benchmarks' page backing once), so
/// that a benchmark can measure again and again without allocating and filling a large buffer each time.
pub struct ReadProbe {
    buf: Vec<u64>,
    threads: usize,
}

impl ReadProbe {
    /// A `buffer_bytes` buffer (should be far larger than the last-level cache) read by `threads` threads.
    /// Errors only on nonsensical arguments.
    pub fn new(buffer_bytes: usize, threads: usize) -> Result<ReadProbe> {
        if threads == 0 {
            return Err(Error::InvalidArgument(
                "bandwidth measurement needs at least one thread".to_string(),
            ));
        }
        let words = buffer_bytes / 8;
        if words < threads * 64 {
            return Err(Error::InvalidArgument(format!(
                "buffer of {buffer_bytes} bytes is too small to measure"
            )));
        }
        // Distinct non-zero values: pages are really backed and the sum cannot be folded away.
        let buf: Vec<u64> = (0..words as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
            .collect();
        // The same page backing as the weights the benchmarks stream (see zmlx::hugepages).
        if zmlx::hugepages::enabled() {
            zmlx::hugepages::promote_slice(&buf);
        }
        Ok(ReadProbe { buf, threads })
    }

    /// Reads the whole buffer `repeats` times and returns the best pass. Errors if `repeats` is 0.
    pub fn measure(&self, repeats: usize) -> Result<Bandwidth> {
        if repeats == 0 {
            return Err(Error::InvalidArgument(
                "bandwidth measurement needs at least one repeat".to_string(),
            ));
        }
        let words = self.buf.len();
        let per = words.div_ceil(self.threads);
        let mut best = 0f64;
        let mut sink = 0u64;
        for _ in 0..repeats {
            let t0 = Instant::now();
            let sums: Vec<u64> = std::thread::scope(|s| {
                let handles: Vec<_> = self
                    .buf
                    .chunks(per)
                    .map(|chunk| s.spawn(move || read_sum(chunk)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
            });
            let dt = t0.elapsed().as_secs_f64();
            sink = sums.into_iter().fold(sink, u64::wrapping_add);
            if dt > 0.0 {
                best = best.max((words * 8) as f64 / dt);
            }
        }
        std::hint::black_box(sink);
        Ok(Bandwidth {
            bytes_per_sec: best,
            threads: self.threads,
            buffer_bytes: words * 8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One measurement with a fresh probe.
    fn measure_read(buffer_bytes: usize, threads: usize, repeats: usize) -> Result<Bandwidth> {
        ReadProbe::new(buffer_bytes, threads)?.measure(repeats)
    }

    #[test]
    fn measures_a_positive_bandwidth() {
        let bw = measure_read(16 << 20, 2, 2).expect("measure");
        // Only the sign and finiteness: on a loaded 2-core host a 16 MiB read has measured 89 MB/s.
        assert!(
            bw.bytes_per_sec > 0.0 && bw.bytes_per_sec.is_finite(),
            "implausible bandwidth {:?}",
            bw
        );
        assert_eq!(bw.threads, 2);
    }

    #[test]
    fn a_probe_measures_repeatedly_and_rejects_zero_repeats() {
        let p = ReadProbe::new(16 << 20, 2).expect("probe");
        for _ in 0..2 {
            let bw = p.measure(1).expect("measure");
            assert!(
                bw.bytes_per_sec > 0.0 && bw.bytes_per_sec.is_finite(),
                "implausible bandwidth {:?}",
                bw
            );
            assert_eq!(bw.buffer_bytes, 16 << 20);
        }
        assert!(p.measure(0).is_err());
        assert!(ReadProbe::new(16 << 20, 0).is_err());
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(measure_read(1 << 20, 0, 1).is_err());
        assert!(measure_read(1 << 20, 1, 0).is_err());
        assert!(measure_read(64, 2, 1).is_err());
    }
}
