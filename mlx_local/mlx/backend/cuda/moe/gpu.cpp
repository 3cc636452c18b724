// Copyright © 2026 zmlx contributors.
//
// Host side of the fused CUDA kernels: variant choice, launch grid, the graph node through
// fast::cuda_kernel. Compiled into every build (it needs only MLX's public headers); on a build
// without CUDA, cuda_available() is false and nothing here runs.
#include "mlx/backend/cuda/moe/gpu.h"

#include <mlx/backend/cuda/cuda.h>
#include <mlx/fast.h>
#include <mlx/ops.h>

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "mlx/moe/gather_qmm_combine/gather_qmm_combine.h"
#include "mlx/moe/gather_qmm_swiglu/gather_qmm_swiglu.h"
#include "mlx/moe/common/validate.h"

namespace mlx::core::moe::gpu {

namespace {

// kernels.cuh with comments and indentation removed (build.rs writes this file).
constexpr const char* kKernelSource =
#include "zmlx_gen/moe_kernels_cuh.inc"
    ;

constexpr int kThreads = 128; // zmlx_moe::THREADS
constexpr int kWarps = 4; // zmlx_moe::WARPS
constexpr int kMaxGridY = 65535;
constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();

// Launch shape of gather_qmm_swiglu: activation rows multiplied per pass (NTMAX), rows per warp (RW),
// chunks per lane in flight (U), whether a block prefetches its expert's rows into L2 (PF), and the
// blocks per multiprocessor the registers must allow (MB, 0: no bound).
struct SwigluShape {
  int nt, rw, u;
  bool pf;
  int mb;
};

// Launch shape of gather_qmm_combine and the quantized linear: rows per warp, units per lane in
// flight, blocks per multiprocessor.
struct CombineShape {
  int rw, u, mb;
};

using TemplateArgs = std::vector<std::pair<std::string, fast::TemplateArg>>;

// The cuda_kernel header. MLX hashes a kernel's whole source on every launch, so the device code
// is written once per process to a private file and #included (a short source); if that fails,
// or ZMLX_CUDA_INLINE_SOURCE is set, the text itself is the header.
class KernelHeader {
 public:
  KernelHeader() {
    text_ = kKernelSource;
    if (std::getenv("ZMLX_CUDA_INLINE_SOURCE") != nullptr) {
      return;
    }
    std::string base = "/tmp";
    if (const char* t = std::getenv("TMPDIR"); t != nullptr && *t == '/') {
      base = t;
    }
    if (base.find_first_of("\"\\\n") != std::string::npos) {
      base = "/tmp";
    }
    std::string tmpl = base + "/zmlx-cuda-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()) == nullptr) {
      return;
    }
    dir_ = buf.data();
    std::string file = dir_ + "/moe_kernels.cuh";
    std::ofstream f(file, std::ios::binary);
    f << kKernelSource;
    f.close();
    if (!f) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
      dir_.clear();
      return;
    }
    text_ = "#include \"" + file + "\"\n";
  }
  ~KernelHeader() {
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }
  const std::string& text() const {
    return text_;
  }

 private:
  std::string text_;
  std::string dir_;
};

const std::string& kernel_header() {
  static const KernelHeader h;
  return h.text();
}

// ZMLX_GPU_POISON=1: outputs are filled with NaN before the kernel runs (an element the kernel
// fails to write then shows). For tests; it adds a fill to every call.
std::optional<float> poison() {
  static const bool on = [] {
    const char* v = std::getenv("ZMLX_GPU_POISON");
    return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
  }();
  if (on) {
    return std::numeric_limits<float>::quiet_NaN();
  }
  return std::nullopt;
}

struct KernelSpec {
  const char* name;
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  const char* body;
};

const KernelSpec& swiglu_spec() {
  static const KernelSpec k{
      "zmlx_moe_swiglu",
      {"nil", "x", "gw", "gs", "gb", "uw", "us", "ub", "lhs", "rhs", "gbias", "ubias"},
      {"out"},
      "zmlx_moe::swiglu_entry<FMT, BITS, GS, ACT, (unsigned(ALPHA_HI) << 16) | unsigned(ALPHA_LO), "
      "(unsigned(LIMIT_HI) << 16) | unsigned(LIMIT_LO), NTMAX, RW, U, PF>("
      "nil, x, x_shape.data(), x_strides.data(), x_ndim, gw, gw_shape.data(), gw_ndim, gs, gb, uw, us, "
      "ub, lhs, lhs_shape.data(), lhs_strides.data(), lhs_ndim, rhs, rhs_shape.data(), "
      "rhs_strides.data(), rhs_ndim, gbias, gbias_strides.data(), gbias_ndim, ubias, "
      "ubias_strides.data(), ubias_ndim, out);"};
  return k;
}

const KernelSpec& combine_spec() {
  static const KernelSpec k{
      "zmlx_moe_combine",
      {"nil", "h", "w", "sc", "bi", "rhs", "scores", "bias"},
      {"out"},
      "zmlx_moe::combine_entry<FMT, BITS, GS, RW, U>("
      "nil, h, h_shape.data(), h_strides.data(), h_ndim, w, w_shape.data(), w_ndim, sc, bi, rhs, "
      "rhs_shape.data(), rhs_strides.data(), rhs_ndim, scores, scores_shape.data(), "
      "scores_strides.data(), scores_ndim, bias, bias_strides.data(), bias_ndim, out);"};
  return k;
}

const KernelSpec& layer_spec() {
  static const KernelSpec k{
      "zmlx_moe_layer",
      {"nil", "x", "gw", "gs", "gb", "uw", "us", "ub", "rhs", "gbias", "ubias", "dw", "ds", "db",
       "scores", "dbias", "ctr"},
      {"out", "hbuf"},
      "zmlx_moe::layer_entry<FMT, BITS, GS, ACT, (unsigned(ALPHA_HI) << 16) | unsigned(ALPHA_LO), "
      "(unsigned(LIMIT_HI) << 16) | unsigned(LIMIT_LO), NTMAX, RW, U, PF, CRW, CU>("
      "nil, x, x_shape.data(), x_strides.data(), x_ndim, gw, gw_shape.data(), gw_ndim, gs, gb, uw, "
      "us, ub, rhs, rhs_shape.data(), rhs_strides.data(), rhs_ndim, gbias, gbias_strides.data(), "
      "gbias_ndim, ubias, ubias_strides.data(), ubias_ndim, dw, dw_shape.data(), dw_ndim, ds, db, "
      "scores, scores_shape.data(), scores_strides.data(), scores_ndim, dbias, "
      "dbias_strides.data(), dbias_ndim, ctr, out, hbuf);"};
  return k;
}

const KernelSpec& norm_spec() {
  static const KernelSpec k{
      "zmlx_add_rms_norm",
      {"nil", "x", "r", "w"},
      {"h", "y"},
      "zmlx_norm::add_rms_norm_entry<(unsigned(EPS_HI) << 16) | unsigned(EPS_LO)>("
      "nil, x, r, w, x_shape.data(), x_ndim, h, y);"};
  return k;
}

// MLX's CUDA type names (mlx/backend/cuda/utils.cpp: dtype_to_cuda_type).
const char* cuda_type(Dtype t) {
  switch (t) {
    case bool_:
      return "bool";
    case int8:
      return "int8_t";
    case int16:
      return "int16_t";
    case int32:
      return "int32_t";
    case int64:
      return "int64_t";
    case uint8:
      return "uint8_t";
    case uint16:
      return "uint16_t";
    case uint32:
      return "uint32_t";
    case uint64:
      return "uint64_t";
    case float16:
      return "__half";
    case bfloat16:
      return "__nv_bfloat16";
    case float32:
      return "float";
    case float64:
      return "double";
    default:
      throw std::invalid_argument("[zmlx cuda] unexpected dtype");
  }
}

std::string arg_suffix(const TemplateArgs& args) {
  std::string s;
  for (const auto& [name, v] : args) {
    if (auto i = std::get_if<int>(&v)) {
      s += "_" + std::to_string(*i);
    } else if (auto b = std::get_if<bool>(&v)) {
      s += *b ? "_t" : "_f";
    }
  }
  return s;
}

// The head of the kernel MLX's fast::cuda_kernel generates for `spec` (custom_kernel.cpp:
// build_kernel): its name, then each input's pointer with its shape / strides / ndim where the body
// names them and the input has dimensions, then the outputs' pointers. min_blocks > 0 adds
// __launch_bounds__(kThreads, min_blocks).
std::string signature(
    const KernelSpec& spec,
    const std::vector<Dtype>& in_types,
    const std::vector<int>& in_ndims,
    const std::vector<Dtype>& out_types,
    const TemplateArgs& args,
    int min_blocks) {
  std::ostringstream o;
  o << "__global__ void ";
  if (min_blocks > 0) {
    o << "__launch_bounds__(" << kThreads << ", " << min_blocks << ") ";
  }
  o << "custom_kernel_" << spec.name << arg_suffix(args) << "(\n";
  const std::string body = spec.body;
  for (size_t i = 0; i < spec.inputs.size(); ++i) {
    const std::string& n = spec.inputs[i];
    o << "    const " << cuda_type(in_types[i]) << "* " << n << ",\n";
    if (in_ndims[i] == 0) {
      continue;
    }
    if (body.find(n + "_shape") != std::string::npos) {
      o << "    const __grid_constant__ Shape " << n << "_shape,\n";
    }
    if (body.find(n + "_strides") != std::string::npos) {
      o << "    const __grid_constant__ Strides " << n << "_strides,\n";
    }
    if (body.find(n + "_ndim") != std::string::npos) {
      o << "    const __grid_constant__ int " << n << "_ndim,\n";
    }
  }
  for (size_t i = 0; i < spec.outputs.size(); ++i) {
    o << "    " << cuda_type(out_types[i]) << "* " << spec.outputs[i]
      << (i + 1 < spec.outputs.size() ? ",\n" : ")");
  }
  return o.str();
}

// The whole kernel, as MLX generates it (the signature, the template arguments as constants, the
// body), after the declaration with launch bounds that kernel() puts in its header.
std::string wrap(
    const KernelSpec& spec,
    const std::vector<Dtype>& in_types,
    const std::vector<Dtype>& out_types,
    const TemplateArgs& args,
    int min_blocks) {
  std::ostringstream o;
  const std::vector<int> ndims(in_types.size(), 1);
  if (min_blocks > 0) {
    o << signature(spec, in_types, ndims, out_types, args, min_blocks) << ";\n\n";
  }
  o << signature(spec, in_types, ndims, out_types, args, 0) << " {\n";
  for (const auto& [name, v] : args) {
    if (auto i = std::get_if<int>(&v)) {
      o << "  constexpr int " << name << " = " << *i << ";\n";
    } else if (auto b = std::get_if<bool>(&v)) {
      o << "  constexpr bool " << name << " = " << (*b ? "true" : "false") << ";\n";
    }
  }
  o << "\n" << spec.body << "\n}\n\n";
  return o.str();
}

// The function object for one kernel variant. Without a launch bound it is one object per spec
// (it records which shape arguments the body uses). With one (min_blocks > 0), its header declares
// the kernel MLX is about to generate with __launch_bounds__(kThreads, min_blocks): NVRTC then keeps
// the registers within what min_blocks blocks per multiprocessor allow (MLX's generated definition
// has no attributes of its own, and a launch bound on an earlier declaration applies to it); those
// objects are made once per variant.
const fast::CustomKernelFunction& kernel(
    const KernelSpec& spec,
    const std::vector<array>& inputs,
    const std::vector<Dtype>& out_types,
    const TemplateArgs& args,
    int min_blocks) {
  auto make = [](const KernelSpec& k, const std::string& header) {
    return fast::cuda_kernel(
        k.name, k.inputs, k.outputs, k.body, header, /*ensure_row_contiguous=*/false);
  };
  if (min_blocks == 0) {
    static const fast::CustomKernelFunction sw = make(swiglu_spec(), kernel_header());
    static const fast::CustomKernelFunction co = make(combine_spec(), kernel_header());
    static const fast::CustomKernelFunction la = make(layer_spec(), kernel_header());
    static const fast::CustomKernelFunction no = make(norm_spec(), kernel_header());
    if (&spec == &swiglu_spec()) {
      return sw;
    }
    if (&spec == &norm_spec()) {
      return no;
    }
    return &spec == &combine_spec() ? co : la;
  }
  std::vector<Dtype> types;
  std::vector<int> ndims;
  for (const auto& a : inputs) {
    types.push_back(a.dtype());
    ndims.push_back(static_cast<int>(a.ndim()));
  }
  const std::string header = kernel_header() + "namespace mlx::core::cu {\n" +
      signature(spec, types, ndims, out_types, args, min_blocks) + ";\n}\n";
  static std::mutex mu;
  static std::map<std::string, fast::CustomKernelFunction> made;
  std::lock_guard<std::mutex> lock(mu);
  auto it = made.find(header);
  if (it == made.end()) {
    it = made.emplace(header, make(spec, header)).first;
  }
  return it->second;
}

// Adds one launch of `spec` to the graph: `grid` in threads, as fast::cuda_kernel takes it.
std::vector<array> launch(
    const KernelSpec& spec,
    const std::vector<array>& in,
    const std::vector<Shape>& out_shapes,
    const std::vector<Dtype>& out_types,
    std::tuple<int, int, int> grid,
    const TemplateArgs& args,
    int min_blocks,
    Stream s) {
  return kernel(spec, in, out_types, args, min_blocks)(
      in, out_shapes, out_types, grid, {kThreads, 1, 1}, args, poison(), false, s);
}

// The layer kernel's counters (see layer_entry in kernels.cuh): four uint32 zeros in device memory
// per stream, made once and kept for the process's life; every launch leaves them zero.
const array& layer_counters(Stream s) {
  static std::mutex mu;
  static std::map<int, const array*> per_stream;
  std::lock_guard<std::mutex> lock(mu);
  auto it = per_stream.find(s.index);
  if (it == per_stream.end()) {
    // An op's output, so the buffer is the stream's device memory and four elements long (a host
    // array lives in unified memory; zeros() may be a broadcast scalar).
    const array* a = new array(
        add(array({0u, 0u, 0u, 0u}, {4}, uint32), array(0u, uint32), s));
    it = per_stream.emplace(s.index, a).first;
  }
  return *it->second;
}

int fmt_code(const QuantParams& q) {
  switch (q.info->mode) {
    case QuantizationMode::Affine:
      return 0;
    case QuantizationMode::Mxfp4:
      return 1;
    case QuantizationMode::Nvfp4:
      return 2;
    case QuantizationMode::Mxfp8:
      return 3;
    default:
      throw std::invalid_argument("[zmlx cuda] unknown quantization mode.");
  }
}

uint32_t float_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

void quant_args(TemplateArgs& t, const QuantParams& q) {
  t.emplace_back("FMT", fmt_code(q));
  t.emplace_back("BITS", q.bits);
  t.emplace_back("GS", q.group_size);
}

TemplateArgs swiglu_args(const SwigluParams& p, const SwigluShape& sh) {
  TemplateArgs t;
  quant_args(t, p.q);
  t.emplace_back("NTMAX", sh.nt);
  t.emplace_back("RW", sh.rw);
  t.emplace_back("U", sh.u);
  t.emplace_back("PF", sh.pf);
  const bool gpt = p.activation == Activation::GptOss;
  // Floats travel as two 16-bit halves of their bits (template arguments are non-negative ints,
  // as they become part of the kernel's name).
  const uint32_t a = gpt ? float_bits(p.alpha) : 0u, l = gpt ? float_bits(p.limit) : 0u;
  t.emplace_back("ACT", gpt ? 1 : 0);
  t.emplace_back("ALPHA_HI", static_cast<int>(a >> 16));
  t.emplace_back("ALPHA_LO", static_cast<int>(a & 0xffffu));
  t.emplace_back("LIMIT_HI", static_cast<int>(l >> 16));
  t.emplace_back("LIMIT_LO", static_cast<int>(l & 0xffffu));
  return t;
}

TemplateArgs norm_args(float eps) {
  const uint32_t e = float_bits(eps);
  return {{"EPS_HI", static_cast<int>(e >> 16)}, {"EPS_LO", static_cast<int>(e & 0xffffu)}};
}

TemplateArgs combine_args(const QuantParams& q, const CombineShape& sh) {
  TemplateArgs t;
  quant_args(t, q);
  t.emplace_back("RW", sh.rw);
  t.emplace_back("U", sh.u);
  return t;
}

// Launch-shape overrides for tuning on a GPU host: ZMLX_CUDA_SW_DECODE="RW,U,PF,MB",
// ZMLX_CUDA_SW_PREFILL="RW,U,PF,MB", ZMLX_CUDA_COMBINE="RW,U,MB" (RW in {1, 2, 4}, U in {1, 2, 4},
// PF 0 or 1, MB in 0..16); anything else leaves the default.
bool parse_shape(const char* var, bool with_pf, int& rw, int& u, bool* pf, int& mb) {
  const char* v = std::getenv(var);
  if (v == nullptr) {
    return false;
  }
  int a = 0, b = 0, c = 1, m = 0;
  const int n = with_pf ? std::sscanf(v, "%d,%d,%d,%d", &a, &b, &c, &m)
                        : std::sscanf(v, "%d,%d,%d", &a, &b, &m);
  const bool ok = n >= 2 && (a == 1 || a == 2 || a == 4) && (b == 1 || b == 2 || b == 4) &&
      (c == 0 || c == 1) && m >= 0 && m <= 16;
  if (ok) {
    rw = a, u = b;
    if (pf != nullptr) {
      *pf = c == 1;
    }
    if (n >= (with_pf ? 4 : 3)) {
      mb = m;
    }
  }
  return ok;
}

// The defaults are the fastest shapes of the kernel benchmark on an H100 (BENCHMARKS.md,
// 2026-12-07): decode (at most one activation row per expert on average) four rows per warp, one
// chunk per lane in flight; prefill two activation rows per pass, two rows per warp, two chunks in
// flight (NTMAX 4 and one row per warp were slower); no launch bound (unmeasured).
SwigluShape swiglu_shape(int64_t rows, int64_t experts) {
  static const SwigluShape decode = [] {
    SwigluShape d{1, 4, 1, true, 0};
    parse_shape("ZMLX_CUDA_SW_DECODE", true, d.rw, d.u, &d.pf, d.mb);
    return d;
  }();
  static const SwigluShape prefill = [] {
    SwigluShape d{2, 2, 2, true, 0};
    parse_shape("ZMLX_CUDA_SW_PREFILL", true, d.rw, d.u, &d.pf, d.mb);
    return d;
  }();
  return rows <= experts ? decode : prefill;
}

// Two rows per warp, one unit per lane in flight: the fastest or within 5 % of it in every layer
// and T of the same benchmark.
CombineShape combine_shape() {
  static const CombineShape c = [] {
    CombineShape d{2, 1, 0};
    parse_shape("ZMLX_CUDA_COMBINE", false, d.rw, d.u, nullptr, d.mb);
    return d;
  }();
  return c;
}

TemplateArgs layer_args(const SwigluParams& p, const SwigluShape& sw, const CombineShape& co) {
  TemplateArgs t = swiglu_args(p, sw);
  t.emplace_back("CRW", co.rw);
  t.emplace_back("CU", co.u);
  return t;
}

// The stand-in for absent optional inputs (the kernels compare pointers with it; never read): one
// float32 element, made once and kept for the process's life.
const array& nil() {
  static const array* a = new array(std::initializer_list<float>{0.0f}, {1});
  return *a;
}

// Kernel arguments need at least one dimension (MLX passes no shape for 0-d arrays).
array at_least_1d(const array& a, Stream s) {
  return a.ndim() == 0 ? reshape(a, {1}, s) : a;
}

int64_t numel(const Shape& s, size_t from, size_t to) {
  int64_t n = 1;
  for (size_t i = from; i < to; ++i) {
    n *= s[i];
  }
  return n;
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// The combine kernel indexes (row, expert) pairs with 32-bit integers, and its grid's x dimension
// is an int.
bool rows_too_many(int64_t pairs, int64_t n, const CombineShape& sh) {
  return pairs > kMaxIndex || ceil_div(n, kWarps * sh.rw) * kThreads > std::numeric_limits<int>::max();
}

// The combine kernel's grid, in threads: a tile of output columns, then output rows (the kernel
// loops over rows past CUDA's limit on the y dimension).
std::tuple<int, int, int> combine_grid(int64_t rows, int64_t n, const CombineShape& sh) {
  return {
      static_cast<int>(ceil_div(n, kWarps * sh.rw) * kThreads),
      static_cast<int>(std::min<int64_t>(rows, kMaxGridY)),
      1};
}

} // namespace

bool cuda_available() {
  static const bool ok = [] {
    try {
      return cu::is_available();
    } catch (...) {
      return false;
    }
  }();
  return ok;
}

std::string unsupported(bool transpose, int K) {
  if (!transpose) {
    return "transpose=false weights";
  }
  if (K % 32 != 0) {
    return "K = " + std::to_string(K) + " is not a multiple of 32";
  }
  return {};
}

const char* coverage() {
  return "fused CUDA kernels for every mode (affine 2/3/4/5/6/8-bit g32/64/128, mxfp4, nvfp4, "
         "mxfp8) with transpose=true and K a multiple of 32; other layouts take MLX's composed ops; "
         "add_rms_norm: one launch for every dtype";
}

std::optional<array> swiglu(
    const array& x,
    const array& gate_w,
    const array& gate_scales,
    const std::optional<array>& gate_biases,
    const array& up_w,
    const array& up_scales,
    const std::optional<array>& up_biases,
    const std::optional<array>& lhs_indices,
    const std::optional<array>& rhs_indices,
    const std::optional<array>& gate_bias,
    const std::optional<array>& up_bias,
    const SwigluParams& p,
    Dtype out_dtype,
    const Shape& out_shape,
    int64_t experts,
    Stream s) {
  const int64_t npairs = numel(out_shape, 0, out_shape.size() - 2);
  const int64_t n = out_shape.back();
  const int64_t slots = npairs <= experts ? npairs : experts;
  // Activation rows per expert, on average, choose the launch shape.
  const int64_t rows = npairs * out_shape[out_shape.size() - 2];
  const SwigluShape sh = swiglu_shape(rows, experts);
  // The kernels index pairs with 32-bit integers.
  if (slots > kMaxGridY || rows > kMaxIndex ||
      ceil_div(n, kWarps * sh.rw) * kThreads > std::numeric_limits<int>::max()) {
    return std::nullopt;
  }
  int64_t total = 1;
  for (auto d : out_shape) {
    total *= d;
  }
  if (total == 0) {
    return zeros(out_shape, out_dtype, s);
  }
  const array& z = nil();
  std::vector<array> in = {
      z,
      x,
      gate_w,
      gate_scales,
      gate_biases.value_or(z),
      up_w,
      up_scales,
      up_biases.value_or(z),
      lhs_indices ? at_least_1d(*lhs_indices, s) : z,
      rhs_indices ? at_least_1d(*rhs_indices, s) : z,
      gate_bias.value_or(z),
      up_bias.value_or(z)};
  const TemplateArgs args = swiglu_args(p, sh);
  return launch(
      swiglu_spec(), in, {out_shape}, {out_dtype},
      {static_cast<int>(ceil_div(n, kWarps * sh.rw) * kThreads), static_cast<int>(slots), 1}, args,
      sh.mb, s)[0];
}

std::optional<array> combine(
    const array& h,
    const array& w,
    const array& scales,
    const std::optional<array>& biases,
    const array& rhs_indices,
    const array& scores,
    const std::optional<array>& bias,
    const CombineParams& p,
    Dtype out_dtype,
    const Shape& out_shape,
    Stream s) {
  const int64_t rows = numel(out_shape, 0, out_shape.size() - 1);
  const int64_t n = out_shape.back();
  const CombineShape sh = combine_shape();
  // Experts per output row (the batch's last dimension, broadcast between h and the indices).
  const int64_t k = std::max<int64_t>(
      h.ndim() >= 3 ? h.shape(-3) : 1, rhs_indices.ndim() >= 1 ? rhs_indices.shape(-1) : 1);
  if (rows_too_many(rows * k, n, sh)) {
    return std::nullopt;
  }
  if (rows * n == 0) {
    return zeros(out_shape, out_dtype, s);
  }
  const array& z = nil();
  std::vector<array> in = {
      z,
      h,
      w,
      scales,
      biases.value_or(z),
      at_least_1d(rhs_indices, s),
      at_least_1d(scores, s),
      bias.value_or(z)};
  const TemplateArgs args = combine_args(p.q, sh);
  return launch(combine_spec(), in, {out_shape}, {out_dtype}, combine_grid(rows, n, sh), args, sh.mb, s)[0];
}

bool layer_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("ZMLX_CUDA_LAYER");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return on;
}

std::optional<array> layer(
    const array& x,
    const array& gate_w,
    const array& gate_scales,
    const std::optional<array>& gate_biases,
    const array& up_w,
    const array& up_scales,
    const std::optional<array>& up_biases,
    const array& down_w,
    const array& down_scales,
    const std::optional<array>& down_biases,
    const array& indices,
    const array& scores,
    const std::optional<array>& gate_bias,
    const std::optional<array>& up_bias,
    const std::optional<array>& down_bias,
    const SwigluParams& p,
    Dtype h_dtype,
    const Shape& h_shape,
    Dtype out_dtype,
    const Shape& out_shape,
    int64_t experts,
    Stream s) {
  const int64_t npairs = numel(h_shape, 0, h_shape.size() - 2);
  const int64_t inter = h_shape.back();
  const int64_t rows = numel(out_shape, 0, out_shape.size() - 1);
  const int64_t d = out_shape.back();
  if (npairs * inter == 0 || rows * d == 0) {
    return std::nullopt;
  }
  const SwigluShape sw = swiglu_shape(npairs, experts);
  const CombineShape co = combine_shape();
  const int64_t slots = std::min(npairs, experts);
  const int64_t blocks = ceil_div(inter, kWarps * sw.rw) * slots +
      ceil_div(d, kWarps * co.rw) * std::min<int64_t>(rows, kMaxGridY);
  if (npairs > kMaxIndex || blocks * kThreads > std::numeric_limits<int>::max()) {
    return std::nullopt;
  }
  const array& z = nil();
  std::vector<array> in = {
      z,
      x,
      gate_w,
      gate_scales,
      gate_biases.value_or(z),
      up_w,
      up_scales,
      up_biases.value_or(z),
      at_least_1d(indices, s),
      gate_bias.value_or(z),
      up_bias.value_or(z),
      down_w,
      down_scales,
      down_biases.value_or(z),
      at_least_1d(scores, s),
      down_bias.value_or(z),
      layer_counters(s)};
  const TemplateArgs args = layer_args(p, sw, co);
  return launch(
      layer_spec(), in, {out_shape, h_shape}, {out_dtype, h_dtype},
      {static_cast<int>(blocks * kThreads), 1, 1}, args, sw.mb, s)[0];
}

std::optional<array> linear(
    const array& x,
    const array& w,
    const array& scales,
    const std::optional<array>& biases,
    const std::optional<array>& bias,
    const QuantParams& q,
    Dtype out_dtype,
    Stream s) {
  const int n = w.shape(-2);
  const array h = x.ndim() < 2 ? reshape(x, {1, x.shape(-1)}, s) : x;
  Shape out_shape(h.shape().begin(), h.shape().end() - 1);
  out_shape.push_back(n);
  const int64_t rows = numel(out_shape, 0, out_shape.size() - 1);
  const CombineShape sh = combine_shape();
  if (rows_too_many(rows, n, sh)) {
    return std::nullopt;
  }
  if (rows * n == 0) {
    return zeros(x.ndim() < 2 ? Shape{n} : out_shape, out_dtype, s);
  }
  // No expert indices and scores: one expert, score 1.
  const array& z = nil();
  std::vector<array> in = {z, h, w, scales, biases.value_or(z), z, z, bias.value_or(z)};
  const TemplateArgs args = combine_args(q, sh);
  array y = launch(combine_spec(), in, {out_shape}, {out_dtype}, combine_grid(rows, n, sh), args, sh.mb, s)[0];
  return x.ndim() < 2 ? reshape(y, {n}, s) : y;
}

std::optional<std::pair<array, array>> add_rms_norm(
    const array& x,
    const array& residual,
    const std::optional<array>& weight,
    float eps,
    Dtype h_dtype,
    Dtype y_dtype,
    Stream s) {
  const int64_t d = x.shape(-1);
  const int64_t rows = d == 0 ? 0 : static_cast<int64_t>(x.size()) / d;
  if (rows * kThreads > std::numeric_limits<int>::max()) {
    return std::nullopt;
  }
  if (x.size() == 0) {
    return std::make_pair(zeros(x.shape(), h_dtype, s), zeros(x.shape(), y_dtype, s));
  }
  const array& z = nil();
  std::vector<array> in = {
      z, ensure_contiguous(x, s), ensure_contiguous(residual, s),
      weight ? ensure_contiguous(*weight, s) : z};
  auto out = launch(
      norm_spec(), in, {x.shape(), x.shape()}, {h_dtype, y_dtype},
      {static_cast<int>(rows * kThreads), 1, 1}, norm_args(eps), 0, s);
  return std::make_pair(out[0], out[1]);
}

// ---------------------------------------------------------------------------------------------
// The ahead-of-time compile check
// ---------------------------------------------------------------------------------------------

std::string check_translation_unit() {
  std::ostringstream o;
  // Stand-in for MLX's default header (mlx/backend/cuda/device/utils.cuh, not in the wheel): the
  // CUDA types it provides and the parameter types of shapes and strides (MAX_NDIM = 10).
  o << "#include <cuda_bf16.h>\n#include <cuda_fp16.h>\n#include <cuda/std/array>\n"
       "#include <cstdint>\n"
       "namespace mlx::core::cu {\n"
       "using Shape = cuda::std::array<int32_t, 10>;\n"
       "using Strides = cuda::std::array<int64_t, 10>;\n"
       "}\n";
  o << kKernelSource << "\n";
  o << "namespace mlx::core::cu {\n\n";
  struct Q {
    QuantizationMode mode;
    int group, bits;
  };
  const std::vector<Q> quants = {
      {QuantizationMode::Affine, 64, 4}, {QuantizationMode::Affine, 32, 4},
      {QuantizationMode::Affine, 128, 4}, {QuantizationMode::Affine, 64, 2},
      {QuantizationMode::Affine, 64, 3}, {QuantizationMode::Affine, 64, 5},
      {QuantizationMode::Affine, 64, 6}, {QuantizationMode::Affine, 64, 8},
      {QuantizationMode::Affine, 32, 8}, {QuantizationMode::Mxfp4, 32, 4},
      {QuantizationMode::Nvfp4, 16, 4}, {QuantizationMode::Mxfp8, 32, 8}};
  int variant = 0;
  for (const auto& qq : quants) {
    const ModeInfo& mi = mode_info(qq.mode);
    QuantParams q{&mi, qq.group, qq.bits};
    // Every dtype for the common modes (affine 4-bit g64, mxfp4), bfloat16 for the others: the
    // dtypes only change loads and stores, which those variants cover.
    const bool common = (qq.mode == QuantizationMode::Affine && qq.bits == 4 && qq.group == 64) ||
        qq.mode == QuantizationMode::Mxfp4;
    std::vector<Dtype> dts = {bfloat16};
    if (common) {
      dts = {bfloat16, float16, float32};
    }
    for (Dtype dt : dts) {
      const Dtype st = mi.has_biases ? dt : uint8;
      // gather_qmm_swiglu: alternate the activation, NTMAX and the optional inputs' dtypes over
      // the variants (absent inputs are the float32 stand-in).
      SwigluParams p;
      p.q = q;
      const bool gpt = variant % 2 == 1;
      p.activation = gpt ? Activation::GptOss : Activation::SwiGLU;
      const Dtype idx = variant % 2 == 0 ? uint32 : int32;
      const Dtype opt_bias = gpt ? dt : float32;
      std::vector<Dtype> sw = {float32, dt, uint32, st, mi.has_biases ? dt : float32, uint32, st,
                               mi.has_biases ? dt : float32, variant % 3 == 0 ? idx : float32,
                               idx, opt_bias, opt_bias};
      {
        // Every other variant with a launch bound declared ahead, as kernel() does when MB is set.
        SwigluShape sh = swiglu_shape(variant % 3 == 0 ? 1 : 2 << variant % 3, 1);
        sh.mb = variant % 2 == 0 ? 8 : sh.mb;
        o << wrap(swiglu_spec(), sw, {dt}, swiglu_args(p, sh), sh.mb);
      }
      // gather_qmm_combine with float32 scores (and a bias every other variant), and the
      // quantized linear layer (no indices, no scores).
      const bool bias = variant % 2 == 0;
      std::vector<Dtype> co = {float32, dt, uint32, st, mi.has_biases ? dt : float32, uint32,
                               float32, bias ? dt : float32};
      o << wrap(combine_spec(), co, {float32}, combine_args(q, combine_shape()), bias ? 6 : 0);
      std::vector<Dtype> li = {float32, dt, uint32, st, mi.has_biases ? dt : float32, float32,
                               float32, bias ? float32 : dt};
      o << wrap(combine_spec(), li, {dt}, combine_args(q, combine_shape()), combine_shape().mb);
      // The one-launch layer: decode and prefill shapes, float32 or dtype scores.
      const Dtype sc = gpt ? float32 : dt;
      std::vector<Dtype> la = {float32, dt, uint32, st, mi.has_biases ? dt : float32, uint32, st,
                               mi.has_biases ? dt : float32, idx, opt_bias, opt_bias, uint32, st,
                               mi.has_biases ? dt : float32, sc, opt_bias, uint32};
      {
        const SwigluShape sh = swiglu_shape(variant % 2 == 0 ? 1 : 64, 8);
        o << wrap(layer_spec(), la, {promote_types(dt, sc), dt},
                  layer_args(p, sh, combine_shape()), variant % 3 == 0 ? 4 : 0);
      }
      ++variant;
    }
  }
  // add_rms_norm: each dtype with and without a weight, and the promotions (mixed inputs give
  // float32 h; a float32 weight gives float32 y).
  const std::vector<std::vector<Dtype>> norms = {
      {bfloat16, bfloat16, bfloat16, bfloat16, bfloat16},
      {float16, float16, float32, float16, float16},
      {float32, float32, float32, float32, float32},
      {bfloat16, bfloat16, float32, bfloat16, float32},
      {float16, bfloat16, bfloat16, float32, float32},
      {bfloat16, float32, float16, float32, float32}};
  for (const auto& t : norms) {
    o << wrap(norm_spec(), {float32, t[0], t[1], t[2]}, {t[3], t[4]}, norm_args(1e-6f), 0);
  }
  o << "} // namespace mlx::core::cu\n";
  return o.str();
}

} // namespace mlx::core::moe::gpu
