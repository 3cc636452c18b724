// Copyright © 2026 zmlx contributors.
//
// The fused ops' batch inputs as the CPU kernels read them, inside the evaluation task. The ops hand
// their index, score and activation arrays to the primitive as the caller gave them (any integer
// index dtype, any strides, shapes that broadcast to the batch shape), instead of adding graph
// nodes (arange for a default index, astype, broadcast, contiguous copies, reshapes) that MLX would
// schedule one task each (each costs MLX a dispatch, which was a measurable part of a decode layer:
// BENCHMARKS.md). Resolving them here is a few loops over B indices.
#pragma once

#include <mlx/array.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mlx::core::moe {

// Positions of a batch: `batch` row-major.
int64_t batch_size(const Shape& batch);

// The batch dimensions of a matrix stack [..., rows, cols] (x, h or weights): all but the last two.
Shape batch_dims(const array& a);

// The values of the integer array `idx` (any integer dtype, any strides; its shape right-aligned
// with `batch` and broadcast to it) at every position of `batch`, into out[0, size of batch).
// Values that are negative or >= limit are stored as 0; the first is described in the returned
// message ("" when there is none). idx == nullptr: gather_qmm's default index, arange over
// `src_batch` (the batch dimensions of x or w) broadcast to `batch`.
std::string read_indices(
    std::string_view tag,
    const char* what,
    const array* idx,
    const Shape& src_batch,
    const Shape& batch,
    int64_t limit,
    uint32_t* out);

// read_indices into out (resized), throwing std::out_of_range with its message if an index is out
// of range. Inside evaluation tasks this is a last line of defence only (see check_indices_on_host):
// the kernels check all indices before using any, so nothing is read out of bounds either way.
void batch_indices(
    std::string_view tag,
    const char* what,
    const array* idx,
    const Shape& src_batch,
    const Shape& batch,
    int64_t limit,
    std::vector<uint32_t>& out);

// Checks a user-given index array of a fused op (or CheckedIndices) from the primitive's eval_cpu, on
// the thread that evaluates, before the op's task is enqueued: an index out of range throws
// std::out_of_range there, which `eval` reports cleanly.
//
// Why not in the task (MLX 0.32.4, mlx/scheduler.cpp, backend/cpu/encoder.h, transforms.cpp): an
// exception in a CPU task is stored in the stream and thrown again by the next `enqueue` from the
// main thread. When that enqueue is one of the pair `CommandEncoder::dispatch` issues every tenth
// dispatch (notify_new_task, the task, then the task that notifies completion), the scheduler's
// count of active tasks is raised but never lowered; once it exceeds MAX_ACTIVE_TASKS (10),
// eval_impl waits in wait_for_one() for a completion that never comes. Every error thrown inside a
// task leaks with some probability, so a loop of bad calls hangs after tens to thousands of them.
//
// The index data may still be in flight (computed by earlier tasks of this evaluation), so unless
// the array is already available the stream is synchronized first. The last few arrays checked
// (kept alive, so their ids stay unique) are not checked again: gather_qmm_combine after
// gather_qmm_swiglu on the same routing costs one synchronization per layer.
void check_indices_on_host(
    std::string_view tag,
    const char* what,
    const array& idx,
    const Shape& src_batch,
    const Shape& batch,
    int64_t limit,
    Stream s);

// The values of the floating array `a` (any strides, shape broadcast to `batch`) as float32.
void batch_floats(const array& a, const Shape& batch, std::vector<float>& out);

// The data of `a` laid out row-contiguous: a's own when it is row-contiguous, else a copy in buf.
const uint8_t* row_contiguous(const array& a, std::vector<uint8_t>& buf);

} // namespace mlx::core::moe
