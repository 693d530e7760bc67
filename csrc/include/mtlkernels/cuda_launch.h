// Torch-free launchers of the CUDA kernels: raw pointers, sizes, strides and a stream.
// The .cu files implement them with cuda_runtime.h only (so nvcc compiles them anywhere); the thin
// bindings in csrc/<op>/cuda/<op>_cuda.cpp validate tensors, extract pointers and call these.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "mtlkernels/common.h"

namespace mtlkernels {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// h_table: the FilterStatsTable words (common.h) in HOST memory: the launches take it (in chunks
// of whole layers) as a kernel parameter, so it may be freed once this returns. One block per row.
cudaError_t launch_filter_stats(const int64_t* h_table, int64_t num_layers, int num_tasks,
                                DType dtype, FilterStatsOut out, cudaStream_t stream);

// a, d: [N, C, S] with element strides sa/sd; writes partial[splits, C] (float64: exact products,
// summed in double), which the caller sums over splits (deterministic, no atomics) and rounds to
// float32 once.
cudaError_t launch_channel_contrib(const void* a, const void* d, DType dtype, int64_t N,
                                   int64_t C, int64_t S, const int64_t sa[3], const int64_t sd[3],
                                   double* partial, int splits, cudaStream_t stream);
// How many position splits launch_channel_contrib will use for these sizes.
int channel_contrib_splits(int64_t N, int64_t C, int64_t S, bool spatial_major, int num_sms);

// The parts of a gather table (common.h) built with block_elems = kGatherBlockElems, in device
// memory: d_descs its records, d_block_starts its block map, *d_error its error word (zero before
// the launch; becomes i + 1 when an index of tensor i is out of range).
constexpr int kGatherThreads = 256;
constexpr int kGatherItems = 8;
constexpr int64_t kGatherBlockElems = kGatherThreads * kGatherItems;
cudaError_t launch_gather(const int64_t* d_descs, const int64_t* d_block_starts,
                          int64_t num_tensors, int64_t num_blocks, int64_t* d_error,
                          cudaStream_t stream);

// cudaSuccess when this build holds a kernel image (SASS, or PTX the driver can compile) for the
// current device; cudaErrorNoKernelImageForDevice (or another error) when it does not.
cudaError_t kernel_image_status();

}  // namespace cuda
}  // namespace mtlkernels
