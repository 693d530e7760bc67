// Torch-side glue shared by the thin CUDA bindings: dtype mapping, error checks, moving a host
// table to the device on the current stream.
#pragma once

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

#include "mtlkernels/cuda_launch.h"

namespace mtlkernels {

inline cuda::DType cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: TORCH_CHECK(false, "mtlkernels CUDA kernels take float32, float16 or bfloat16, got ", t);
  }
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

inline int multiprocessor_count(const at::Device& device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device.index()));
  return sms;
}

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "mtlkernels: ", what, " failed: ", cudaGetErrorString(err));
}

// Copies an int64 CPU table to `device` asynchronously on the current stream (pinned staging; the
// caching host allocator keeps the staging buffer alive until the copy has run).
inline at::Tensor table_to_device(const at::Tensor& host, const at::Device& device) {
  return host.pin_memory().to(device, /*non_blocking=*/true);
}

}  // namespace mtlkernels
