// Copyright © 2026 zmlx contributors.
//
// The fused ops' batch inputs as the CPU kernels read them, inside the evaluation task. The ops hand
// their index, score and activation arrays to the primitive as the caller gave them (any integer
// index dtype, any strides, shapes that broadcast to the batch shape), instead of adding graph
// nodes (arange for a default index, astype, broadcast, contiguous copies, reshapes) that MLX would
// schedule one task each: on the 2-vCPU machine MLX's evaluation costs ~2 us per extra node, and a
// layer had 21 of them for 2 primitives. Resolving them here is a few loops over B indices.
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
// of range. For use inside evaluation tasks.
//
// How such an error reaches the user (MLX 0.32.4, read in mlx/scheduler.cpp, event.h, error.h and
// the no_gpu/cuda/metal event code, and checked with a throwing test primitive): the CPU encoder
// runs dispatched tasks on the stream's worker thread inside `Scheduler::enqueue`'s wrapper, which
// catches std::exception and stores the first message in the stream; the output's completion event
// takes that error when it is signaled, and `eval` / `Event::wait` on the caller's thread rethrows
// it as std::runtime_error (so the C API's guard reports it and returns non-zero). Nothing
// terminates, but tasks queued after the failed one still run: the kernels therefore check all
// indices before using any, and CheckedIndices (composed references) hands on a clamped copy.
// Anything thrown must derive from std::exception (others would escape the wrapper).
void batch_indices(
    std::string_view tag,
    const char* what,
    const array* idx,
    const Shape& src_batch,
    const Shape& batch,
    int64_t limit,
    std::vector<uint32_t>& out);

// The values of the floating array `a` (any strides, shape broadcast to `batch`) as float32.
void batch_floats(const array& a, const Shape& batch, std::vector<float>& out);

// The data of `a` laid out row-contiguous: a's own when it is row-contiguous, else a copy in buf.
const uint8_t* row_contiguous(const array& a, std::vector<uint8_t>& buf);

} // namespace mlx::core::moe
