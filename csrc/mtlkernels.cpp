// The one place the mtlkernels operator schemas are declared. Backends register their kernels
// next to them with TORCH_LIBRARY_IMPL(mtlkernels, CPU|CUDA, m); the Triton kernels add
// mtlkernels::*_triton ops from Python (torch.library.triton_op); the fake (meta) kernels used by
// torch.compile and opcheck live in mtlkernels/_fake.py.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "common/tables.h"

extern "C" {
// `from mtlkernels import _C` loads this library, whose static initialisers register the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace mtlkernels {

bool built_with_cuda() {
#ifdef MTL_WITH_CUDA
  return true;
#else
  return false;
#endif
}

#ifdef MTL_WITH_CUDA
std::string cuda_kernel_image_error(int64_t device);  // csrc/common/cuda/kernel_image_cuda.cpp
#else
std::string cuda_kernel_image_error(int64_t) { return "mtlkernels._C was built without CUDA"; }
#endif

TORCH_LIBRARY(mtlkernels, m) {
  // weights: L tensors [F_l, ...] whose rows are dense (row f = the K elements at f * K, in any
  // order: contiguous, channels_last, ...). grads: per layer one [T, F_l, ...] stack (task t at
  // base + t * stride(0)), or L*T tensors shaped like the weights, layer-major; every task gradient
  // has its weight's strides. Returns float32
  // (dot [F, T], gram [F, T, T], wsq [F], wabs [F], wg2 [F, T, T]) over all F = sum F_l filters.
  m.def("filter_stats(Tensor[] weights, Tensor[] grads) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // activation, grad: [N, C, S] views (any strides). Returns float32 [C].
  m.def("channel_contrib(Tensor activation, Tensor grad) -> Tensor");
  // xs[i].index_select(dim1[i], idx1[i]).index_select(dim2[i], idx2[i]) for every i, one pass.
  m.def("gather(Tensor[] xs, Tensor?[] idx1, Tensor?[] idx2, int[] dim1, int[] dim2) -> Tensor[]");
  // The tables of common.h for kernels launched from Python (Triton): one format per op, built in
  // one place. row_map appends the int32 row -> layer map.
  m.def("_filter_stats_table(Tensor[] weights, Tensor[] grads, bool row_map) -> Tensor",
        &filter_stats_table_op);
  m.def("_gather_table(Tensor[] xs, Tensor?[] idx1, Tensor?[] idx2, int[] dim1, int[] dim2, "
        "int block_elems) -> (Tensor, Tensor[])", &gather_table_op);
  m.def("_table_layout() -> int[]", &table_layout);
  m.def("_built_with_cuda() -> bool", &built_with_cuda);
  // "" when the build has a kernel image (SASS or PTX) that CUDA device `device` can run, else why.
  m.def("_cuda_kernel_image_error(int device) -> str", &cuda_kernel_image_error);
}

}  // namespace mtlkernels
