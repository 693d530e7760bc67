// CUDA kernel of mtlkernels::gather: every tensor of a compaction step in ONE launch.
//
// Each tensor is in the canonical [A, D1, B, D2, C] form of common.h. Output elements of all
// tensors are cut into blocks of kGatherBlockElems; a block finds its tensor in the block prefix
// table (binary search, common.h), loads that tensor's descriptor into shared memory and copies
// its elements, typeless (1, 2, 4 or 8 bytes), with coalesced writes.
#include <cstdint>

#include "mtlkernels/cuda_launch.h"

namespace mtlkernels {
namespace cuda {
namespace {

template <typename elem_t>
__device__ __forceinline__ void copy_block(const GatherDesc& g, int64_t base) {
  const int64_t total = gather_rows(g) * g.C;
  const auto* __restrict__ in = reinterpret_cast<const elem_t*>(g.in);
  auto* __restrict__ out = reinterpret_cast<elem_t*>(g.out);
#pragma unroll
  for (int it = 0; it < kGatherItems; ++it) {
    const int64_t e = base + it * kGatherThreads + threadIdx.x;
    if (e < total) {
      const int64_t r = e / g.C;
      out[e] = in[gather_in_row(g, r) + (e - r * g.C)];
    }
  }
}

__global__ void __launch_bounds__(kGatherThreads)
    gather_kernel(const int64_t* __restrict__ descs, const int64_t* __restrict__ block_starts,
                  int64_t num_tensors) {
  __shared__ int64_t words[kGatherDescWords];
  __shared__ int64_t first_block;
  if (threadIdx.x == 0) {
    const int64_t i = find_segment(block_starts, num_tensors, blockIdx.x);
    first_block = block_starts[i];
    for (int w = 0; w < kGatherDescWords; ++w) words[w] = descs[i * kGatherDescWords + w];
  }
  __syncthreads();
  const GatherDesc g = load_gather_desc(words);
  const int64_t base = (static_cast<int64_t>(blockIdx.x) - first_block) * kGatherBlockElems;
  switch (g.elem_size) {
    case 1: copy_block<uint8_t>(g, base); break;
    case 2: copy_block<uint16_t>(g, base); break;
    case 4: copy_block<uint32_t>(g, base); break;
    default: copy_block<unsigned long long>(g, base); break;
  }
}

}  // namespace

cudaError_t launch_gather(const int64_t* d_descs, const int64_t* d_block_starts,
                          int64_t num_tensors, int64_t num_blocks, cudaStream_t stream) {
  if (num_blocks <= 0) return cudaSuccess;
  if (num_blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  gather_kernel<<<static_cast<unsigned>(num_blocks), kGatherThreads, 0, stream>>>(
      d_descs, d_block_starts, num_tensors);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mtlkernels
