// CUDA kernel of mtlkernels::gather: every tensor of a compaction step in ONE launch.
//
// Each tensor is in the canonical [A, D1, B, D2, C] form of common.h. Output elements of all
// tensors are cut into blocks of kGatherBlockElems; a block finds its tensor in the block prefix
// table (binary search, common.h), loads that tensor's descriptor into shared memory and copies
// its elements, typeless (1, 2, 4 or 8 bytes), with coalesced writes. The per-element index math
// uses multiply-high divisions (common.h FastDivU31) when the output has < 2^31 elements.
//
// Index values are not trusted: an out-of-range one is never loaded from; the block writes the
// tensor's number + 1 to an error word instead, which the binding reads back and raises on.
#include <cstdint>

#include "mtlkernels/cuda_launch.h"

namespace mtlkernels {
namespace cuda {
namespace {

// Copies this block's output elements of one tensor; in_offset(e) is the input offset of output
// element e, -1 for a bad index (reported through *error as tensor + 1; racing stores of the same
// kind are fine: any one offending tensor is reported).
template <typename elem_t, typename InOffset>
__device__ __forceinline__ void copy_block(const GatherDesc& g, int64_t base, InOffset in_offset,
                                           int64_t tensor, int64_t* error) {
  const int64_t total = gather_rows(g) * g.C;
  const auto* __restrict__ in = reinterpret_cast<const elem_t*>(g.in);
  auto* __restrict__ out = reinterpret_cast<elem_t*>(g.out);
#pragma unroll
  for (int it = 0; it < kGatherItems; ++it) {
    const int64_t e = base + it * kGatherThreads + threadIdx.x;
    if (e >= total) continue;
    const int64_t off = in_offset(e);
    if (off >= 0) {
      out[e] = in[off];
    } else {
      *error = tensor + 1;
    }
  }
}

// Outputs of < 2^31 elements (nearly all) map elements to input offsets with multiply-high
// divisions (common.h gather_in_elem_u31); larger ones with int64 divisions.
template <typename elem_t>
__device__ __forceinline__ void copy_block_any(const GatherDesc& g, const GatherDividers& dv,
                                               bool fits_u31, int64_t base, int64_t tensor,
                                               int64_t* error) {
  if (fits_u31) {
    copy_block<elem_t>(g, base, [&](int64_t e) {
      return gather_in_elem_u31(g, dv, static_cast<uint32_t>(e));
    }, tensor, error);
  } else {
    copy_block<elem_t>(g, base, [&](int64_t e) {
      const int64_t r = e / g.C;
      const int64_t row = gather_in_row(g, r);
      return row < 0 ? row : row + (e - r * g.C);
    }, tensor, error);
  }
}

__global__ void __launch_bounds__(kGatherThreads)
    gather_kernel(const int64_t* __restrict__ descs, const int64_t* __restrict__ block_starts,
                  int64_t num_tensors, int64_t* __restrict__ error) {
  __shared__ int64_t words[kGatherDescWords];
  __shared__ int64_t tensor;
  __shared__ int64_t first_block;
  __shared__ GatherDividers dividers;
  __shared__ int fits_u31;
  if (threadIdx.x == 0) {
    const int64_t i = find_segment(block_starts, num_tensors, blockIdx.x);
    tensor = i;
    first_block = block_starts[i];
    for (int w = 0; w < kGatherDescWords; ++w) words[w] = descs[i * kGatherDescWords + w];
    fits_u31 = gather_fits_u31(load_gather_desc(words));
    dividers = load_gather_dividers(words);  // made on the host (common.h table)
  }
  __syncthreads();
  const GatherDesc g = load_gather_desc(words);
  const GatherDividers dv = dividers;
  const bool fast = fits_u31 != 0;
  const int64_t base = (static_cast<int64_t>(blockIdx.x) - first_block) * kGatherBlockElems;
  const int64_t ti = tensor;
  switch (g.elem_size) {
    case 1: copy_block_any<uint8_t>(g, dv, fast, base, ti, error); break;
    case 2: copy_block_any<uint16_t>(g, dv, fast, base, ti, error); break;
    case 4: copy_block_any<uint32_t>(g, dv, fast, base, ti, error); break;
    default: copy_block_any<unsigned long long>(g, dv, fast, base, ti, error); break;
  }
}

}  // namespace

cudaError_t launch_gather(const int64_t* d_descs, const int64_t* d_block_starts,
                          int64_t num_tensors, int64_t num_blocks, int64_t* d_error,
                          cudaStream_t stream) {
  if (num_blocks <= 0) return cudaSuccess;
  if (num_blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  gather_kernel<<<static_cast<unsigned>(num_blocks), kGatherThreads, 0, stream>>>(
      d_descs, d_block_starts, num_tensors, d_error);
  return cudaGetLastError();
}

cudaError_t kernel_image_status() {
  // Any kernel will do: every .cu file is compiled for the same targets.
  cudaFuncAttributes attr;
  return cudaFuncGetAttributes(&attr, gather_kernel);
}

}  // namespace cuda
}  // namespace mtlkernels
