// SPDX-License-Identifier: Apache-2.0
// missing_kernels.cpp - kernels for the dispatch keys gaussfield has no implementation
// for: sparse tensors (COO and the compressed layouts), Apple's MPS and Intel's XPU
// devices, and CUDA in a build without the CUDA kernels.  Each raises an error that
// names the op, the argument and its layout or device, and what to do, instead of the
// dispatcher's generic "Could not run ... with arguments from the 'SparseCPU' backend".
// Meta needs none here: the fakes of python/gaussfield/autograd.py serve it.
//
// One boxed kernel serves every op and key: the dispatch key set says which key the
// call reached, the stack holds the arguments, the schema their names.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DispatchKey.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <sstream>
#include <string>

namespace gaussfield {
namespace {

const char* layout_name(c10::Layout layout) {
  switch (layout) {
    case c10::kSparse: return "torch.sparse_coo";
    case c10::kSparseCsr: return "torch.sparse_csr";
    case c10::kSparseCsc: return "torch.sparse_csc";
    case c10::kSparseBsr: return "torch.sparse_bsr";
    case c10::kSparseBsc: return "torch.sparse_bsc";
    default: return "a non-strided layout";
  }
}

// Whether t is one of the tensors that sent the call to `key`.
bool sent_here(const at::Tensor& t, c10::DispatchKey key) {
  const c10::DispatchKey functionality = c10::toFunctionalityKey(key);
  if (functionality == c10::DispatchKey::Sparse || functionality == c10::DispatchKey::SparseCsr) {
    return t.layout() != c10::kStrided;
  }
  return t.device().type() == c10::dispatchKeyToDeviceType(key);
}

// "x (torch.sparse_coo)", "means (on mps:0)": the arguments that sent the call here.
std::string culprits(const c10::FunctionSchema& schema, const torch::jit::Stack& stack,
                     c10::DispatchKey key) {
  const auto& arguments = schema.arguments();
  const size_t first = stack.size() - arguments.size();
  std::ostringstream out;
  const char* sep = "";
  for (size_t i = 0; i < arguments.size(); ++i) {
    const c10::IValue& v = stack[first + i];
    if (!v.isTensor()) continue;
    const at::Tensor& t = v.toTensor();
    if (!t.defined() || !sent_here(t, key)) continue;
    out << sep << arguments[i].name();
    if (t.layout() != c10::kStrided) {
      out << " (" << layout_name(t.layout()) << ")";
    } else {
      out << " (on " << t.device() << ")";
    }
    sep = ", ";
  }
  const std::string text = out.str();
  return text.empty() ? std::string("its tensor arguments") : text;
}

void missing_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                    torch::jit::Stack* stack) {
  const c10::DispatchKey key = keys.highestPriorityTypeId();
  const c10::FunctionSchema& schema = op.schema();
  const std::string who = culprits(schema, *stack, key);
  const c10::DispatchKey functionality = c10::toFunctionalityKey(key);
  if (functionality == c10::DispatchKey::Sparse || functionality == c10::DispatchKey::SparseCsr) {
    TORCH_CHECK_NOT_IMPLEMENTED(false, "gaussfield: ", schema.name(),
                                " has no kernel for sparse tensors, and was called with ", who,
                                ". Its kernels read dense (strided) tensors: pass t.to_dense().");
  }
  if (key == c10::DispatchKey::CUDA) {
    TORCH_CHECK_NOT_IMPLEMENTED(
        false, "gaussfield: ", schema.name(), " was called with CUDA tensors (", who,
        "), but this build of gaussfield has no CUDA kernels (it was built with "
        "GF_WITH_CUDA=OFF, or without a CUDA compiler, or against a torch without CUDA; "
        "gaussfield.build_info()['cuda_note'] says which). Rebuild it with the CUDA toolkit "
        "installed, against your CUDA build of torch: CMAKE_ARGS=\"-DGF_WITH_CUDA=ON\" pip "
        "install --no-build-isolation . (see docs/install.md), or move the tensors to the "
        "CPU (t.cpu()).");
  }
  TORCH_CHECK_NOT_IMPLEMENTED(false, "gaussfield: ", schema.name(), " has no kernel for the ",
                              c10::dispatchKeyToDeviceType(key), " device, and was called with ",
                              who, ". gaussfield runs on the CPU and on CUDA GPUs: move the "
                              "tensors there (t.cpu(), or t.cuda() with a CUDA build).");
}

// Every op of the library (ops.cpp's TORCH_LIBRARY); tests/test_install_errors.py checks
// that none is left out.
constexpr const char* kOps[] = {
    "gaussian_field",        "gaussian_field_backward",         "gaussian_field_double_backward",
    "_gaussian_field_culled", "_gaussian_field_culled_backward", "_culling_stats",
    "voxelize",              "voxelize_backward",
};

void register_missing(torch::Library& m) {
  for (const char* name : kOps) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&missing_kernel>());
  }
}

}  // namespace
}  // namespace gaussfield

TORCH_LIBRARY_IMPL(gaussfield, SparseCPU, m) { gaussfield::register_missing(m); }
TORCH_LIBRARY_IMPL(gaussfield, SparseCUDA, m) { gaussfield::register_missing(m); }
TORCH_LIBRARY_IMPL(gaussfield, SparseCsrCPU, m) { gaussfield::register_missing(m); }
TORCH_LIBRARY_IMPL(gaussfield, SparseCsrCUDA, m) { gaussfield::register_missing(m); }
TORCH_LIBRARY_IMPL(gaussfield, MPS, m) { gaussfield::register_missing(m); }
TORCH_LIBRARY_IMPL(gaussfield, XPU, m) { gaussfield::register_missing(m); }

#ifndef GF_HAVE_CUDA_KERNELS
// _culling_stats is left out: it is CPU-only in every build, and its Python wrapper
// (gaussfield.culling_stats) moves its inputs to the CPU first.
TORCH_LIBRARY_IMPL(gaussfield, CUDA, m) {
  for (const char* name : gaussfield::kOps) {
    if (std::string(name) != "_culling_stats") {
      m.impl(name, torch::CppFunction::makeFromBoxedFunction<&gaussfield::missing_kernel>());
    }
  }
}
#endif
