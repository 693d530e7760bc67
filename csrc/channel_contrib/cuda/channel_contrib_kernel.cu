// CUDA kernels of mtlkernels::channel_contrib: contrib[c] = sum_{n,s} A[n,c,s] * D[n,c,s].
//
// [N, C, S] views with any strides. Two thread layouts so that a warp's loads are coalesced:
// - spatial-major (unit stride along s: NCHW): block (c, split), lanes along s. A row of S < 1024
//   positions takes one warp (8 rows at a time per block): with all 256 threads on a row, S = 49
//   (7 x 7) kept 49 of them busy, S = 196 196. Longer rows take the whole block.
// - channel-major (anything else, e.g. channels_last with unit stride along c): block
//   (32 channels, split), lanes along c, 8 position rows per block; (n, s) of the next position by
//   a cursor (common.h PositionCursor), not an int64 division per element.
// Each block writes partial[split, c]; the caller sums the partials over splits (deterministic).
// Products and sums are in double (exact products of float32 values, no overflow before the final
// rounding to float32), like every backend: an overflow is the same inf everywhere, not an
// artefact of FMA contraction or of the order of float32 partial sums. On A100/H100 (FP64 at half
// the float32 rate) that leaves the kernels bandwidth-bound; on GPUs with 1/64-rate FP64 it may
// not (unmeasured).
#include <cstdint>

#include "mtlkernels/cuda_utils.cuh"

namespace mtlkernels {
namespace cuda {
namespace {

template <typename scalar_t>
__device__ __forceinline__ double to_double(scalar_t x) { return static_cast<double>(to_float(x)); }

constexpr int kSpatialThreads = 256;
constexpr int64_t kWarpRowS = 1024;  // spatial rows shorter than this take one warp each
constexpr int kChanX = 32, kChanY = 8;

template <typename scalar_t>
__global__ void __launch_bounds__(kSpatialThreads)
    contrib_spatial_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ d,
                           int64_t sa0, int64_t sa1, int64_t sd0, int64_t sd1, int64_t N, int64_t C,
                           int64_t S, double* __restrict__ partial, int splits) {
  const int64_t c = blockIdx.x;
  const int split = blockIdx.y;
  const int64_t P = N * S;
  const int64_t p0 = P * split / splits, p1 = P * (split + 1) / splits;
  double acc = 0.0;
  for_spatial_positions(p0, p1, S, kWarpRowS, threadIdx.x, kSpatialThreads, [&](int64_t n, int64_t s) {
    acc = fma(to_double(a[n * sa0 + c * sa1 + s]), to_double(d[n * sd0 + c * sd1 + s]), acc);
  });
  __shared__ double part[kSpatialThreads / 32];
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double v = 0.0;
#pragma unroll
    for (int q = 0; q < kSpatialThreads / 32; ++q) v += part[q];
    partial[split * C + c] = v;
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kChanX* kChanY)
    contrib_channel_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ d,
                           const int64_t sa0, int64_t sa1, int64_t sa2, int64_t sd0, int64_t sd1,
                           int64_t sd2, int64_t N, int64_t C, int64_t S,
                           double* __restrict__ partial, int splits) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kChanX + threadIdx.x;
  const int split = blockIdx.y;
  const int64_t P = N * S;
  const int64_t p0 = P * split / splits, p1 = P * (split + 1) / splits;
  double acc = 0.0;
  if (c < C) {
    PositionCursor pos(p0 + threadIdx.y, kChanY, S);  // two divisions per thread, not per element
    for (int64_t p = p0 + threadIdx.y; p < p1; p += kChanY, pos.next()) {
      acc = fma(to_double(a[pos.n * sa0 + c * sa1 + pos.s * sa2]),
                to_double(d[pos.n * sd0 + c * sd1 + pos.s * sd2]), acc);
    }
  }
  __shared__ double part[kChanY][kChanX];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    double v = 0.0;
#pragma unroll
    for (int q = 0; q < kChanY; ++q) v += part[q][threadIdx.x];
    partial[split * C + c] = v;
  }
}

}  // namespace

int channel_contrib_splits(int64_t N, int64_t C, int64_t S, bool spatial_major, int num_sms) {
  const int64_t P = N * S;
  const int64_t cblocks = spatial_major ? C : (C + kChanX - 1) / kChanX;
  const int64_t min_positions = spatial_major ? 2048 : 256;  // per block, to amortise the partials
  int64_t splits = (4LL * num_sms + cblocks - 1) / cblocks;
  const int64_t max_splits = P / min_positions > 1 ? P / min_positions : 1;
  if (splits > max_splits) splits = max_splits;
  if (splits > 65535) splits = 65535;
  return static_cast<int>(splits < 1 ? 1 : splits);
}

cudaError_t launch_channel_contrib(const void* a, const void* d, DType dtype, int64_t N,
                                   int64_t C, int64_t S, const int64_t sa[3], const int64_t sd[3],
                                   double* partial, int splits, cudaStream_t stream) {
  const bool spatial_major = S > 1 && sa[2] == 1 && sd[2] == 1;
  return dispatch_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* ap = static_cast<const scalar_t*>(a);
    const auto* dp = static_cast<const scalar_t*>(d);
    if (spatial_major) {
      if (C > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
      dim3 grid(static_cast<unsigned>(C), splits);
      contrib_spatial_kernel<scalar_t><<<grid, kSpatialThreads, 0, stream>>>(
          ap, dp, sa[0], sa[1], sd[0], sd[1], N, C, S, partial, splits);
    } else {
      dim3 grid(static_cast<unsigned>((C + kChanX - 1) / kChanX), splits);
      contrib_channel_kernel<scalar_t><<<grid, dim3(kChanX, kChanY), 0, stream>>>(
          ap, dp, sa[0], sa[1], sa[2], sd[0], sd[1], sd[2], N, C, S, partial, splits);
    }
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace mtlkernels
