// Device helpers shared by the .cu kernels (torch-free).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "mtlkernels/cuda_launch.h"

namespace mtlkernels {
namespace cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Reduce-scatter of 32 M values per lane across the warp (common.h): afterwards v[0 .. M) of lane L
// hold the warp-wide sums of values M L .. M L + M - 1. One instantiation per step, so every index
// is a compile-time constant and v stays in registers.
template <int M, int S = 0>
__device__ __forceinline__ void warp_reduce_scatter(float* v, int lane) {
  using R = WarpReduceScatter<M>;
  constexpr int kHalf = R::half(S);
#pragma unroll
  for (int i = 0; i < kHalf; ++i) {
    const float received =
        __shfl_xor_sync(0xffffffffu, R::send(v, S, lane, i), R::partner_xor(S));
    R::keep(v, S, lane, i, received);
  }
  if constexpr (S + 1 < R::kSteps) warp_reduce_scatter<M, S + 1>(v, lane);
}

// Calls f.template operator()<scalar_t>() for the dtype.
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace mtlkernels
