// CUDA kernel of mtlkernels::filter_stats: every filter of every layer in ONE launch.
//
// One block per filter row (rows of all layers are numbered 0..F-1), or for T <= 8 one warp per
// row of K <= kShortRowK elements (common.h filter_stats_block_map). The layer table (common.h) is
// a __grid_constant__ kernel parameter, not device memory: no per-call pinned copy, and a block's
// search for its layer reads the constant bank (uniform across the block) instead of making 4-8
// dependent global loads before its first data load. A table larger than one parameter is
// launched in chunks of whole layers (common.h filter_stats_chunk_table). Threads stride over the
// row's K elements with 16-byte loads of the weight and the T gradient rows, keep the
// T + T(T+1) + 2 accumulators in registers, then reduce them (a warp reduce-scatter, then shared
// memory across a long row's warps) and store them through the epilogue shared with the CPU
// kernel (store_filter_acc). Bytes read are the minimum: (T + 1) x weights x element size, once.
#include <cstdint>

#include "mtlkernels/cuda_utils.cuh"

namespace mtlkernels {
namespace cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

// The table as a kernel parameter, in two sizes so that small calls do not ship 32 KB per launch.
// The other parameters take < 64 B. Small: under the 4 KB parameter limit every CUDA version has
// (VGG16, T = 3: 79 words). Large: under the 32,764 B limit of CUDA >= 12.1 on sm_70+ (torch
// 2.11+cu130 builds with CUDA 13.0; setup.py targets sm_80+): ResNet-152 (155 layers) at T = 16 is
// 2,946 words, one launch. Bigger tables take several launches.
template <int kWords>
struct ParamTable {
  int64_t w[kWords];
};
constexpr int kSmallTableWords = 496;   // 3,968 B
constexpr int kLargeTableWords = 4064;  // 32,512 B

// TL: compile-time task layout = the call's T (1..8), every accumulator in registers. T = 9..16
// take filter_stats_tiles_kernel below.
template <int TL>
__device__ __forceinline__ void accumulate(float* acc, float w, const float* g) {
  constexpr int P = num_pairs(TL);
  float wg[TL];
#pragma unroll
  for (int i = 0; i < TL; ++i) {
    wg[i] = w * g[i];
    acc[i] += wg[i];
  }
#pragma unroll
  for (int i = 0; i < TL; ++i) {
#pragma unroll
    for (int j = i; j < TL; ++j) {
      const int p = pair_index(TL, i, j);
      acc[TL + p] = fmaf(g[i], g[j], acc[TL + p]);
      acc[TL + P + p] = fmaf(wg[i], wg[j], acc[TL + P + p]);
    }
  }
  acc[TL + 2 * P] = fmaf(w, w, acc[TL + 2 * P]);
  acc[TL + 2 * P + 1] += fabsf(w);
}

// One thread's share of a row: elements start, start + stride, ... (16-byte vectors of VEC when
// every row is aligned) into acc. stride = the threads on the row: a warp (short rows) or a block.
template <typename scalar_t, int TL>
__device__ __forceinline__ void accumulate_row(float* acc, const FilterStatsTable& tab, int64_t l,
                                               int64_t row, int start, int stride) {
  constexpr int VEC = 16 / sizeof(scalar_t);
  const int T = tab.num_tasks;
  const int64_t K = tab.k(l);
  const int64_t local = row - tab.row_offsets()[l];
  const scalar_t* w = reinterpret_cast<const scalar_t*>(tab.weight_addr(l)) + local * K;
  const scalar_t* g[TL];
  bool aligned = (reinterpret_cast<uintptr_t>(w) & 15) == 0;
#pragma unroll
  for (int i = 0; i < TL; ++i) {
    g[i] = i < T ? reinterpret_cast<const scalar_t*>(tab.grad_addr(l, i)) + local * K : w;
    aligned &= (reinterpret_cast<uintptr_t>(g[i]) & 15) == 0;
  }
  float gf[TL];
  int64_t k_tail = 0;
  if (aligned) {  // 16-byte loads
    k_tail = (K / VEC) * VEC;
    for (int64_t k = static_cast<int64_t>(start) * VEC; k < k_tail; k += stride * VEC) {
      uint4 wv = __ldg(reinterpret_cast<const uint4*>(w + k));
      uint4 gv[TL];
#pragma unroll
      for (int i = 0; i < TL; ++i)
        gv[i] = i < T ? __ldg(reinterpret_cast<const uint4*>(g[i] + k)) : make_uint4(0, 0, 0, 0);
      const scalar_t* ws = reinterpret_cast<const scalar_t*>(&wv);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
#pragma unroll
        for (int i = 0; i < TL; ++i) gf[i] = to_float(reinterpret_cast<const scalar_t*>(&gv[i])[e]);
        accumulate<TL>(acc, to_float(ws[e]), gf);
      }
    }
  }
  for (int64_t k = k_tail + start; k < K; k += stride) {
#pragma unroll
    for (int i = 0; i < TL; ++i) gf[i] = i < T ? to_float(g[i][k]) : 0.f;
    accumulate<TL>(acc, to_float(w[k]), gf);
  }
}

// T = 1..8. The table's block map (common.h filter_stats_block_map) gives a block either one long
// row (all kThreads threads) or kWarps short rows (K <= kShortRowK, one warp each).
template <typename scalar_t, int TL, int kWords>
__global__ void __launch_bounds__(kThreads)
    filter_stats_kernel(const __grid_constant__ ParamTable<kWords> p, int64_t num_layers,
                        int num_tasks, FilterStatsOut out) {
  const FilterStatsTable tab{p.w, num_layers, num_tasks};
  const int64_t* block_map = p.w + filter_stats_table_size(num_layers, num_tasks);
  constexpr int NA = num_acc(TL);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t l;
  const int64_t row = filter_stats_block_row(tab, block_map, kWarps, blockIdx.x, warp, &l);
  if (row < 0) return;  // a warp past its layer's last short row (never in a long row's block)
  const bool short_rows = filter_stats_short_rows(tab, l);  // the same for the whole block
  float acc[NA];
#pragma unroll
  for (int a = 0; a < NA; ++a) acc[a] = 0.f;
  accumulate_row<scalar_t, TL>(acc, tab, l, row, short_rows ? lane : threadIdx.x,
                               short_rows ? 32 : kThreads);

  // A reduce-scatter within each warp (common.h: 31 M shuffles rather than 5 per accumulator);
  // a short row is then done, a long row sums its warps through shared memory.
  constexpr int M = (NA + 31) / 32;
  float red[32 * M];
#pragma unroll
  for (int a = 0; a < 32 * M; ++a) red[a] = a < NA ? acc[a] : 0.f;
  warp_reduce_scatter<M>(red, lane);
  if (short_rows) {
#pragma unroll
    for (int i = 0; i < M; ++i) {
      const int a = WarpReduceScatter<M>::value_index(lane, i);
      if (a < NA) store_filter_acc(out, row, TL, num_tasks, a, red[i]);
    }
    return;
  }
  __shared__ float part[kWarps][32 * M];
#pragma unroll
  for (int i = 0; i < M; ++i) part[warp][WarpReduceScatter<M>::value_index(lane, i)] = red[i];
  __syncthreads();
  for (int a = threadIdx.x; a < NA; a += kThreads) {
    float v = 0.f;
#pragma unroll
    for (int q = 0; q < kWarps; ++q) v += part[q][a];
    store_filter_acc(out, row, TL, num_tasks, a, v);
  }
}

// ---- T = 9..16: task tiles across warps (common.h TaskTiles), the row strip in shared memory. ----
// The register-resident path above spilled at TL = 16 (290 accumulators per thread). Here each warp
// owns two 4 x 4 tiles of the task grid (74 accumulators per thread) and reads W and the task rows
// of a kStrip-element strip from shared memory, which the whole block fills once per strip.
constexpr int kStrip = 256;  // elements per strip (8 per lane); 17 x 256 x 4 B = 17 KB of smem
constexpr int kTileThreads = TaskTiles::kWarps * 32;
static_assert(TaskTiles::kTL == kMaxTasks, "the tile path covers every T up to kMaxTasks");

template <typename scalar_t>
__device__ __forceinline__ void load_strip(float (*sg)[kStrip], float* sw,
                                           const scalar_t* const* rows, const scalar_t* w, int T,
                                           int64_t k0, int n) {
  for (int e = threadIdx.x; e < (T + 1) * kStrip; e += kTileThreads) {
    const int t = e / kStrip, k = e % kStrip;  // kStrip is a power of two: shifts
    if (k >= n) continue;
    if (t < T) sg[t][k] = to_float(rows[t][k0 + k]);
    else sw[k] = to_float(w[k0 + k]);
  }
}

template <typename scalar_t, int kWords>
__global__ void __launch_bounds__(kTileThreads)
    filter_stats_tiles_kernel(const __grid_constant__ ParamTable<kWords> p, int64_t num_layers,
                              int num_tasks, FilterStatsOut out) {
  using TT = TaskTiles;
  const FilterStatsTable tab{p.w, num_layers, num_tasks};
  __shared__ float sg[TT::kTL][kStrip];
  __shared__ float sw[kStrip];
  __shared__ const scalar_t* rows[TT::kTL];
  const int64_t row = blockIdx.x;
  const int T = tab.num_tasks;
  const int64_t l = tab.layer_of_row(row);
  const int64_t K = tab.k(l);
  const int64_t local = row - tab.row_offsets()[l];
  const scalar_t* w = reinterpret_cast<const scalar_t*>(tab.weight_addr(l)) + local * K;
  if (threadIdx.x < T)
    rows[threadIdx.x] = reinterpret_cast<const scalar_t*>(tab.grad_addr(l, threadIdx.x)) + local * K;
  for (int e = threadIdx.x; e < (TT::kTL - T) * kStrip; e += kTileThreads)  // padded tasks: zero rows
    sg[T + e / kStrip][e % kStrip] = 0.f;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int I[TT::kPerWarp], J[TT::kPerWarp];
#pragma unroll
  for (int s = 0; s < TT::kPerWarp; ++s) TT::tile(TT::kPerWarp * warp + s, I[s], J[s]);
  float acc[TT::kValues];
#pragma unroll
  for (int v = 0; v < TT::kValues; ++v) acc[v] = 0.f;

  for (int64_t k0 = 0; k0 < K; k0 += kStrip) {
    const int n = static_cast<int>(K - k0 < kStrip ? K - k0 : kStrip);
    __syncthreads();  // rows[] written; the previous strip fully read
    load_strip<scalar_t>(sg, sw, rows, w, T, k0, n);
    __syncthreads();
    for (int k = lane; k < n; k += 32) TT::accumulate(acc, sw[k], &sg[0][0], kStrip, k, I, J);
  }

  // A warp alone owns its slots: one reduce-scatter, then each lane stores what it holds.
  constexpr int M = (TT::kValues + 31) / 32;
  float red[32 * M];
#pragma unroll
  for (int v = 0; v < 32 * M; ++v) red[v] = v < TT::kValues ? acc[v] : 0.f;
  warp_reduce_scatter<M>(red, lane);
#pragma unroll
  for (int i = 0; i < M; ++i) {
    const int v = WarpReduceScatter<M>::value_index(lane, i);
    const int a = v < TT::kValues ? TT::acc_index(warp, v) : -1;
    if (a >= 0) store_filter_acc(out, row, TT::kTL, T, a, red[i]);
  }
}

// One launch of the chunk in p: T picks the instance (with_task_layout, common.h). The T = 1..8
// kernel takes the block map after the table (its grid: the map's last word), the tile kernel a
// block per row.
template <typename scalar_t, int kWords>
cudaError_t launch_chunk(ParamTable<kWords>& p, const FilterStatsTable& full, int64_t l0,
                         int64_t l1, const FilterStatsOut& out, cudaStream_t s) {
  const int T = full.num_tasks;
  const int64_t n = l1 - l0;
  filter_stats_chunk_table(full, l0, l1, p.w);
  const FilterStatsTable chunk{p.w, n, T};
  int64_t* block_map = p.w + filter_stats_table_size(n, T);
  filter_stats_block_map(chunk, kWarps, block_map);
  const int64_t blocks = T <= kFixedTaskLayouts ? block_map[n] : chunk.num_rows();
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  const unsigned grid = static_cast<unsigned>(blocks);
  return with_task_layout(T, [&](auto tl) {
    if constexpr (decltype(tl)::value == 0)
      filter_stats_tiles_kernel<scalar_t, kWords><<<grid, kTileThreads, 0, s>>>(p, n, T, out);
    else
      filter_stats_kernel<scalar_t, decltype(tl)::value, kWords>
          <<<grid, kThreads, 0, s>>>(p, n, T, out);
    return cudaGetLastError();
  });
}

// The call in chunks of whole layers whose tables fit a parameter (one chunk unless > 4,064 words).
template <typename scalar_t>
cudaError_t launch_chunks(const FilterStatsTable& full, const FilterStatsOut& out,
                          cudaStream_t s) {
  static thread_local ParamTable<kLargeTableWords> large;  // 32 KB: off the caller's stack
  ParamTable<kSmallTableWords> small;
  const int T = full.num_tasks;
  const int64_t* off = full.row_offsets();
  for (int64_t l0 = 0, l1; l0 < full.num_layers; l0 = l1) {
    l1 = filter_stats_chunk_end(full, l0, kLargeTableWords);
    const FilterStatsOut o = filter_stats_out_at(out, off[l0], T);
    const bool fits_small = filter_stats_table_size(l1 - l0, T) + (l1 - l0) + 1 <= kSmallTableWords;
    const cudaError_t err = fits_small ? launch_chunk<scalar_t>(small, full, l0, l1, o, s)
                                       : launch_chunk<scalar_t>(large, full, l0, l1, o, s);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t launch_filter_stats(const int64_t* h_table, int64_t num_layers, int num_tasks,
                                DType dtype, FilterStatsOut out, cudaStream_t stream) {
  if (num_tasks < 1 || num_tasks > kMaxTasks) return cudaErrorInvalidValue;
  const FilterStatsTable full{h_table, num_layers, num_tasks};
  return dispatch_dtype(dtype, [&](auto tag) {
    return launch_chunks<decltype(tag)>(full, out, stream);
  });
}

}  // namespace cuda
}  // namespace mtlkernels
