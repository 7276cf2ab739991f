// kernels/cpu/conv2d.h: the oneDNN implementation (conv2d_*_dnnl), float only.
//
// Compiled in when cmake/SelaCpuGemm.cmake selects SELA_CPU_CONV=dnnl (oneDNN 2.x, the
// OpenMP build); otherwise the functions only return false.
//
// Per (direction, shape, bias?) a Plan is built once and cached process-wide: the primitive
// descriptor is created with algorithm::convolution_auto (oneDNN chooses Winograd or direct)
// and format `any`, so that oneDNN picks its fastest (blocked, e.g. nChw16c / OIhw16i16o)
// layouts; then the primitive itself and the reorders between our NCHW / OIHW buffers and
// those layouts (absent where a layout already matches, e.g. the 3-channel input of a first
// layer). A call binds our pointers and per-thread scratch (the blocked copies and the
// primitive's scratchpad, `scratchpad_mode::user`) and runs reorder-in, convolution,
// reorder-out on a per-thread stream. This is the work PyTorch 1.13 does for an NCHW tensor
// (same library, same formats), except that PyTorch asks for the direct algorithm only.
// The backward primitives are created with a forward primitive descriptor as hint, as the
// library requires. Shapes the library declines (status unimplemented) make the functions
// return false; the caller then uses im2col.
//
// Alignment: every buffer handed to a convolution primitive is 64-byte aligned. Our scratch
// is; a caller's buffer that the primitive would use as it is (bias, a matching layout) is
// staged through aligned scratch when it is not. Reason: oneDNN 2.6's Winograd
// backward-weights kernel crashed (SIGSEGV) when conv_lab handed it blocked buffers that
// were only 16-byte aligned; oneDNN's own allocations are 64-byte aligned, so the library
// is only exercised that way. Reorders accept any alignment.
#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "engine/error.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/parallel.h"

#if defined(SELA_CPU_CONV_DNNL)
#include <dnnl.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif
#endif

namespace sela::cpu {

#if defined(SELA_CPU_CONV_DNNL)
namespace {

using dnnl::memory;

struct Key {
  Conv2dDirection direction;
  std::array<std::int64_t, 11> sizes;
  bool bias;
  bool operator<(const Key& other) const {
    if (direction != other.direction) return direction < other.direction;
    if (sizes != other.sizes) return sizes < other.sizes;
    return bias < other.bias;
  }
};

// One side of the convolution: our plain buffer and, when it differs, the library's layout
// and the reorder between them (ours -> library for inputs, library -> ours for outputs).
struct Operand {
  memory::desc plain;
  memory::desc library;
  bool converted = false;
  dnnl::reorder reorder;
};

struct Plan {
  dnnl::primitive convolution;
  std::string implementation;  // oneDNN's name for the kernel it chose
  Operand data_in;             // forward: src (in); backward input: diff_dst (in); weight: src (in)
  Operand weights;             // forward, backward input: weights (in); weight: diff_weights (out)
  Operand data_out;   // forward: dst (out); backward input: diff_src (out); weight: diff_dst (in)
  memory::desc bias;  // (O), forward: bias (in); weight: diff_bias (out)
  memory::desc scratchpad;
};

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

Operand make_operand(const memory::desc& plain, const memory::desc& library, bool to_library) {
  Operand op;
  op.plain = plain;
  op.library = library;
  op.converted = !(plain == library);
  if (op.converted) {
    const dnnl::engine& e = cpu_engine();
    dnnl::reorder::primitive_desc pd = to_library
                                           ? dnnl::reorder::primitive_desc(e, plain, e, library)
                                           : dnnl::reorder::primitive_desc(e, library, e, plain);
    op.reorder = dnnl::reorder(pd);
  }
  return op;
}

// Returns null when oneDNN has no implementation for this shape and direction.
std::unique_ptr<Plan> build_plan(const Key& key, const Conv2dShape& s) {
  const memory::dim n = s.batch, c = s.in_channels, h = s.in_height, w = s.in_width;
  const memory::dim o = s.out_channels, kh = s.kernel_h, kw = s.kernel_w;
  const memory::dim oh = s.out_height(), ow = s.out_width();
  const memory::dims strides = {s.stride_h, s.stride_w};
  const memory::dims pad_l = {s.pad_h, s.pad_w};
  // Right/bottom padding that makes the output size exact (may be below pad_l, even < 0).
  const memory::dims pad_r = {(oh - 1) * s.stride_h + kh - h - s.pad_h,
                              (ow - 1) * s.stride_w + kw - w - s.pad_w};
  using tag = memory::format_tag;
  const auto f32 = memory::data_type::f32;
  const memory::desc plain_src({n, c, h, w}, f32, tag::nchw);
  const memory::desc plain_weights({o, c, kh, kw}, f32, tag::oihw);
  const memory::desc plain_dst({n, o, oh, ow}, f32, tag::nchw);
  const memory::desc any_src({n, c, h, w}, f32, tag::any);
  const memory::desc any_weights({o, c, kh, kw}, f32, tag::any);
  const memory::desc any_dst({n, o, oh, ow}, f32, tag::any);
  const memory::desc bias_md = key.bias ? memory::desc({o}, f32, tag::x) : memory::desc();
  const dnnl::engine& engine = cpu_engine();
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto algorithm = dnnl::algorithm::convolution_auto;

  auto plan = std::make_unique<Plan>();
  try {
    dnnl::convolution_forward::desc forward_desc(
        dnnl::prop_kind::forward_training, algorithm, any_src, any_weights,
        key.direction == Conv2dDirection::forward ? bias_md : memory::desc(), any_dst, strides,
        pad_l, pad_r);
    dnnl::convolution_forward::primitive_desc forward_pd(forward_desc, attr, engine);
    if (key.direction == Conv2dDirection::forward) {
      plan->convolution = dnnl::convolution_forward(forward_pd);
      plan->implementation = forward_pd.impl_info_str();
      plan->data_in = make_operand(plain_src, forward_pd.src_desc(), true);
      plan->weights = make_operand(plain_weights, forward_pd.weights_desc(), true);
      plan->data_out = make_operand(plain_dst, forward_pd.dst_desc(), false);
      plan->bias = bias_md;
      plan->scratchpad = forward_pd.scratchpad_desc();
    } else if (key.direction == Conv2dDirection::backward_input) {
      dnnl::convolution_backward_data::desc desc(algorithm, any_src, any_weights, any_dst, strides,
                                                 pad_l, pad_r);
      dnnl::convolution_backward_data::primitive_desc pd(desc, attr, engine, forward_pd);
      plan->convolution = dnnl::convolution_backward_data(pd);
      plan->implementation = pd.impl_info_str();
      plan->data_in = make_operand(plain_dst, pd.diff_dst_desc(), true);
      plan->weights = make_operand(plain_weights, pd.weights_desc(), true);
      plan->data_out = make_operand(plain_src, pd.diff_src_desc(), false);
      plan->scratchpad = pd.scratchpad_desc();
    } else {
      dnnl::convolution_backward_weights::desc desc(algorithm, any_src, any_weights, bias_md,
                                                    any_dst, strides, pad_l, pad_r);
      dnnl::convolution_backward_weights::primitive_desc pd(desc, attr, engine, forward_pd);
      plan->convolution = dnnl::convolution_backward_weights(pd);
      plan->implementation = pd.impl_info_str();
      plan->data_in = make_operand(plain_src, pd.src_desc(), true);
      plan->weights = make_operand(plain_weights, pd.diff_weights_desc(), false);
      plan->data_out = make_operand(plain_dst, pd.diff_dst_desc(), true);
      plan->bias = bias_md;
      plan->scratchpad = pd.scratchpad_desc();
    }
  } catch (const dnnl::error& e) {
    if (e.status == dnnl_unimplemented) return nullptr;
    SELA_FAIL("conv2d", "oneDNN could not set up the convolution for " << conv2d_shape_text(s)
                                                                       << ": " << e.what());
  }
  return plan;
}

const Plan* find_plan(Conv2dDirection direction, const Conv2dShape& s, bool bias) {
  Key key{direction,
          {s.batch, s.in_channels, s.in_height, s.in_width, s.out_channels, s.kernel_h, s.kernel_w,
           s.stride_h, s.stride_w, s.pad_h, s.pad_w},
          bias};
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Plan>> plans;  // null: declined by the library
  std::lock_guard<std::mutex> lock(mutex);
  auto found = plans.find(key);
  if (found == plans.end()) found = plans.emplace(key, build_plan(key, s)).first;
  return found->second.get();
}

// Grow-only 64-byte-aligned per-thread buffers, one per role.
enum Slot { kDataIn = 0, kWeights, kDataOut, kScratchpad, kBias, kSlots };

void* scratch_bytes(Slot slot, std::size_t bytes) {
  struct Buffer {
    struct Free {
      void operator()(void* p) const { std::free(p); }
    };
    std::unique_ptr<void, Free> data;
    std::size_t capacity = 0;
  };
  thread_local Buffer buffers[kSlots];
  Buffer& buffer = buffers[slot];
  if (bytes == 0) bytes = 64;
  if (buffer.capacity < bytes) {
    std::size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    SELA_CHECK(p != nullptr, "conv2d", "cannot allocate " << rounded << " bytes of scratch");
    buffer.data.reset(p);
    buffer.capacity = rounded;
  }
  return buffer.data.get();
}

bool is_aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; }

void sync_openmp_threads() {
#ifdef _OPENMP
  if (!omp_in_parallel() && omp_get_max_threads() != num_threads())
    omp_set_num_threads(num_threads());
#endif
}

dnnl::stream& thread_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

// Our input buffer as library memory: reordered into scratch when the layout differs,
// copied into scratch when it matches but is not aligned, used as it is otherwise.
memory input_memory(const memory::desc& plain_md, const memory::desc& library_md,
                    const dnnl::reorder* reorder, const float* ours, Slot slot,
                    dnnl::stream& stream) {
  memory plain(plain_md, cpu_engine(), const_cast<float*>(ours));
  if (reorder) {
    memory library(library_md, cpu_engine(), scratch_bytes(slot, library_md.get_size()));
    reorder->execute(stream, plain, library);
    return library;
  }
  if (is_aligned(ours)) return plain;
  void* staged = scratch_bytes(slot, plain_md.get_size());
  std::memcpy(staged, ours, plain_md.get_size());
  return memory(plain_md, cpu_engine(), staged);
}

memory input_memory(const Operand& op, const float* ours, Slot slot, dnnl::stream& stream) {
  return input_memory(op.plain, op.library, op.converted ? &op.reorder : nullptr, ours, slot,
                      stream);
}

// An output: the library writes into our buffer when layout and alignment allow, else into
// scratch that finish_output reorders or copies into our buffer afterwards.
struct Output {
  memory library;
  bool staged = false;
};

Output output_memory(const memory::desc& plain_md, const memory::desc& library_md, bool converted,
                     float* ours, Slot slot) {
  if (!converted && is_aligned(ours)) return {memory(plain_md, cpu_engine(), ours), false};
  const memory::desc& md = converted ? library_md : plain_md;
  return {memory(md, cpu_engine(), scratch_bytes(slot, md.get_size())), true};
}

Output output_memory(const Operand& op, float* ours, Slot slot) {
  return output_memory(op.plain, op.library, op.converted, ours, slot);
}

void finish_output(const memory::desc& plain_md, const dnnl::reorder* reorder, Output& out,
                   float* ours, dnnl::stream& stream) {
  if (!out.staged) return;
  if (reorder) {
    memory plain(plain_md, cpu_engine(), ours);
    reorder->execute(stream, out.library, plain);
  } else {
    stream.wait();  // the convolution has finished writing the staged copy
    std::memcpy(ours, out.library.get_data_handle(), plain_md.get_size());
  }
}

void finish_output(const Operand& op, Output& out, float* ours, dnnl::stream& stream) {
  finish_output(op.plain, op.converted ? &op.reorder : nullptr, out, ours, stream);
}

memory scratchpad_memory(const Plan& plan) {
  return memory(plan.scratchpad, cpu_engine(),
                scratch_bytes(kScratchpad, plan.scratchpad.get_size()));
}

}  // namespace

bool conv2d_forward_dnnl(const Conv2dShape& s, const float* input, const float* weight,
                         const float* bias, float* output) {
  check_conv2d_shape(s);
  const Plan* plan = find_plan(Conv2dDirection::forward, s, bias != nullptr);
  if (!plan) return false;
  sync_openmp_threads();
  try {
    dnnl::stream& stream = thread_stream();
    memory src = input_memory(plan->data_in, input, kDataIn, stream);
    memory weights = input_memory(plan->weights, weight, kWeights, stream);
    Output dst = output_memory(plan->data_out, output, kDataOut);
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src},
                                            {DNNL_ARG_WEIGHTS, weights},
                                            {DNNL_ARG_DST, dst.library},
                                            {DNNL_ARG_SCRATCHPAD, scratchpad_memory(*plan)}};
    if (bias)
      args[DNNL_ARG_BIAS] = input_memory(plan->bias, plan->bias, nullptr, bias, kBias, stream);
    plan->convolution.execute(stream, args);
    finish_output(plan->data_out, dst, output, stream);
    stream.wait();
  } catch (const dnnl::error& e) {
    SELA_FAIL("conv2d", "oneDNN forward failed for " << conv2d_shape_text(s) << ": " << e.what());
  }
  return true;
}

bool conv2d_backward_input_dnnl(const Conv2dShape& s, const float* grad_output, const float* weight,
                                float* grad_input) {
  check_conv2d_shape(s);
  const Plan* plan = find_plan(Conv2dDirection::backward_input, s, false);
  if (!plan) return false;
  sync_openmp_threads();
  try {
    dnnl::stream& stream = thread_stream();
    memory diff_dst = input_memory(plan->data_in, grad_output, kDataIn, stream);
    memory weights = input_memory(plan->weights, weight, kWeights, stream);
    Output diff_src = output_memory(plan->data_out, grad_input, kDataOut);
    plan->convolution.execute(stream, {{DNNL_ARG_DIFF_DST, diff_dst},
                                       {DNNL_ARG_WEIGHTS, weights},
                                       {DNNL_ARG_DIFF_SRC, diff_src.library},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad_memory(*plan)}});
    finish_output(plan->data_out, diff_src, grad_input, stream);
    stream.wait();
  } catch (const dnnl::error& e) {
    SELA_FAIL("conv2d",
              "oneDNN backward_input failed for " << conv2d_shape_text(s) << ": " << e.what());
  }
  return true;
}

bool conv2d_backward_weight_dnnl(const Conv2dShape& s, const float* input, const float* grad_output,
                                 float* grad_weight, float* grad_bias) {
  check_conv2d_shape(s);
  const Plan* plan = find_plan(Conv2dDirection::backward_weight, s, grad_bias != nullptr);
  if (!plan) return false;
  sync_openmp_threads();
  try {
    dnnl::stream& stream = thread_stream();
    memory src = input_memory(plan->data_in, input, kDataIn, stream);
    memory diff_dst = input_memory(plan->data_out, grad_output, kDataOut, stream);
    Output diff_weights = output_memory(plan->weights, grad_weight, kWeights);
    Output diff_bias;
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src},
                                            {DNNL_ARG_DIFF_DST, diff_dst},
                                            {DNNL_ARG_DIFF_WEIGHTS, diff_weights.library},
                                            {DNNL_ARG_SCRATCHPAD, scratchpad_memory(*plan)}};
    if (grad_bias) {
      diff_bias = output_memory(plan->bias, plan->bias, false, grad_bias, kBias);
      args[DNNL_ARG_DIFF_BIAS] = diff_bias.library;
    }
    plan->convolution.execute(stream, args);
    finish_output(plan->weights, diff_weights, grad_weight, stream);
    if (grad_bias) finish_output(plan->bias, nullptr, diff_bias, grad_bias, stream);
    stream.wait();
  } catch (const dnnl::error& e) {
    SELA_FAIL("conv2d",
              "oneDNN backward_weight failed for " << conv2d_shape_text(s) << ": " << e.what());
  }
  return true;
}

std::string conv2d_implementation(const Conv2dShape& s, Conv2dDirection direction) {
  check_conv2d_shape(s);
  const Plan* plan = find_plan(direction, s, direction != Conv2dDirection::backward_input);
  return plan ? "dnnl " + plan->implementation : std::string("im2col");
}

#else  // no oneDNN in this build

bool conv2d_forward_dnnl(const Conv2dShape&, const float*, const float*, const float*, float*) {
  return false;
}
bool conv2d_backward_input_dnnl(const Conv2dShape&, const float*, const float*, float*) {
  return false;
}
bool conv2d_backward_weight_dnnl(const Conv2dShape&, const float*, const float*, float*, float*) {
  return false;
}
std::string conv2d_implementation(const Conv2dShape& s, Conv2dDirection) {
  check_conv2d_shape(s);
  return "im2col";
}

#endif

}  // namespace sela::cpu
