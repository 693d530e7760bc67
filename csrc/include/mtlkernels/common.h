// Shared, torch-free building blocks of the mtlkernels kernels.
//
// Everything here compiles as plain C++ (the CPU kernels include it) and as CUDA device code (the
// .cu kernels include it), so the CPU tests exercise the exact index math and epilogues the GPU
// kernels use: the multi-layer table layout, the row -> layer lookup, the packed accumulator layout
// of the filter statistics and its store, and the canonical 5-D form of the channel gather.
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MTL_HD __host__ __device__ __forceinline__
#define MTL_UNROLL _Pragma("unroll")
#else
#define MTL_HD inline
#define MTL_UNROLL _Pragma("GCC unroll 16")
#endif

namespace mtlkernels {

// Largest number of tasks the compiled kernels take (the T x T Gram lives in registers).
constexpr int kMaxTasks = 16;
// T = 1 .. kFixedTaskLayouts run kernel instances compiled for exactly T tasks (every accumulator
// in registers, no padded task); larger T take one general path.
constexpr int kFixedTaskLayouts = 8;

// The one switch on T of the CPU and CUDA filter_stats (host code): f(std::integral_constant<int,
// TL>) with TL = T for T <= kFixedTaskLayouts, TL = 0 (the general path) otherwise.
template <typename F>
inline auto with_task_layout(int T, F&& f) {
  using std::integral_constant;
  switch (T) {
    case 1: return f(integral_constant<int, 1>{});
    case 2: return f(integral_constant<int, 2>{});
    case 3: return f(integral_constant<int, 3>{});
    case 4: return f(integral_constant<int, 4>{});
    case 5: return f(integral_constant<int, 5>{});
    case 6: return f(integral_constant<int, 6>{});
    case 7: return f(integral_constant<int, 7>{});
    case 8: return f(integral_constant<int, 8>{});
    default: return f(integral_constant<int, 0>{});
  }
}
static_assert(kFixedTaskLayouts == 8, "with_task_layout lists the fixed layouts 1..8");

// Index of the segment holding `item`, for ascending `starts[0..n]` with starts[0] == 0 and
// starts[n] == total (binary search; n is the number of segments). Used for row -> layer of the
// filter statistics, and row/block -> tensor of the gather.
MTL_HD int64_t find_segment(const int64_t* starts, int64_t n, int64_t item) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= item) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// ------------------------------------------------------------------------------------------------
// Filter statistics: multi-layer table, the one format of the CPU, CUDA and Triton kernels
// (csrc/common/tables.cpp builds it; Triton gets it from torch.ops.mtlkernels._filter_stats_table).
//
// One int64 buffer describes every layer of a call:
//   [0 .. L]                    row_offsets (first output row of each layer; [L] = total rows F)
//   [L+1 .. 2L]                 K of each layer (elements per filter)
//   [2L+1 .. 3L]                address of each layer's weight
//   [3L+1 .. 3L + L*T]          address of each (layer, task) gradient, layer-major
// optionally followed (filter_stats_table_size(L, T, F)) by a row -> layer map of F int32 entries
// packed two per word, for kernels that cannot afford a search per row (Triton).
// ------------------------------------------------------------------------------------------------
struct FilterStatsTable {
  const int64_t* data;
  int64_t num_layers;
  int num_tasks;

  MTL_HD const int64_t* row_offsets() const { return data; }
  MTL_HD int64_t k(int64_t l) const { return data[num_layers + 1 + l]; }
  MTL_HD int64_t weight_addr(int64_t l) const { return data[2 * num_layers + 1 + l]; }
  MTL_HD int64_t grad_addr(int64_t l, int t) const {
    return data[3 * num_layers + 1 + l * num_tasks + t];
  }
  MTL_HD int64_t num_rows() const { return data[num_layers]; }
  MTL_HD int64_t layer_of_row(int64_t row) const {
    return find_segment(data, num_layers, row);
  }
};

MTL_HD int64_t filter_stats_table_size(int64_t num_layers, int num_tasks) {
  return 3 * num_layers + 1 + num_layers * num_tasks;
}
// With the int32 row -> layer map of num_rows entries after the words above.
MTL_HD int64_t filter_stats_table_size(int64_t num_layers, int num_tasks, int64_t num_rows) {
  return filter_stats_table_size(num_layers, num_tasks) + (num_rows + 1) / 2;
}

// A call's table in pieces of whole layers, for kernels that take the table as a kernel parameter
// of bounded size (CUDA: __grid_constant__, no device copy and no search in global memory): a
// chunk [l0, l1) gets its own table (rows renumbered from the chunk's first row) and its own
// launch, with the output pointers advanced to that row (filter_stats_out_at).
// End l1 of the chunk that starts at l0: as many layers as fit max_words (>= 6 + T) with the
// chunk's block map (filter_stats_block_map: one more word per layer, plus one), at least one.
MTL_HD int64_t filter_stats_chunk_end(const FilterStatsTable& t, int64_t l0, int64_t max_words) {
  const int64_t fit = (max_words - 2) / (4 + t.num_tasks);
  const int64_t l1 = l0 + (fit > 1 ? fit : 1);
  return l1 < t.num_layers ? l1 : t.num_layers;
}

// Writes the table of layers [l0, l1) of t to dst (filter_stats_table_size(l1 - l0, T) words).
MTL_HD void filter_stats_chunk_table(const FilterStatsTable& t, int64_t l0, int64_t l1,
                                     int64_t* dst) {
  const int64_t n = l1 - l0, T = t.num_tasks;
  const int64_t* off = t.row_offsets();
  for (int64_t i = 0; i <= n; ++i) dst[i] = off[l0 + i] - off[l0];
  for (int64_t i = 0; i < n; ++i) {
    dst[n + 1 + i] = t.k(l0 + i);
    dst[2 * n + 1 + i] = t.weight_addr(l0 + i);
    for (int64_t k = 0; k < T; ++k) dst[3 * n + 1 + i * T + k] = t.grad_addr(l0 + i, static_cast<int>(k));
  }
}

// Packed accumulator layout of one filter for a layout of TL tasks (TL >= the call's T):
//   [0, TL)                 dot[t]
//   [TL, TL + P)            gram upper triangle (i <= j), row-major, P = TL (TL + 1) / 2
//   [TL + P, TL + 2P)       wg2 upper triangle
//   TL + 2P                 wsq
//   TL + 2P + 1             wabs
MTL_HD constexpr int num_pairs(int tl) { return tl * (tl + 1) / 2; }
MTL_HD constexpr int num_acc(int tl) { return tl + 2 * num_pairs(tl) + 2; }
MTL_HD constexpr int pair_index(int tl, int i, int j) {  // i <= j
  return i * tl - (i * (i - 1)) / 2 + (j - i);
}

struct FilterStatsOut {
  float* dot;   // [F, T]
  float* gram;  // [F, T, T]
  float* wsq;   // [F]
  float* wabs;  // [F]
  float* wg2;   // [F, T, T]
};

// CUDA filter_stats blocks: a row of at most kShortRowK elements (half of ResNet-152's rows have
// K = 256) takes one warp, `warps` rows per block, since a 128-thread block on it would leave half
// to three quarters of its threads without a 16-byte load; a longer row takes a whole block. The
// block map (after a chunk's table) gives each layer's first block; [n] is the grid size.
constexpr int64_t kShortRowK = 1024;
MTL_HD bool filter_stats_short_rows(const FilterStatsTable& t, int64_t l) { return t.k(l) <= kShortRowK; }

MTL_HD void filter_stats_block_map(const FilterStatsTable& t, int warps, int64_t* dst) {
  const int64_t* off = t.row_offsets();
  dst[0] = 0;
  for (int64_t l = 0; l < t.num_layers; ++l) {
    const int64_t rows = off[l + 1] - off[l];
    dst[l + 1] = dst[l] + (filter_stats_short_rows(t, l) ? (rows + warps - 1) / warps : rows);
  }
}

// The row warp `warp` of block `block` works on, its layer in *layer; -1 when that warp has no
// row (the last block of a layer of short rows). Every warp of a long row's block gets its row.
MTL_HD int64_t filter_stats_block_row(const FilterStatsTable& t, const int64_t* block_map,
                                      int warps, int64_t block, int warp, int64_t* layer) {
  const int64_t l = find_segment(block_map, t.num_layers, block);
  *layer = l;
  const int64_t* off = t.row_offsets();
  if (!filter_stats_short_rows(t, l)) return off[l] + (block - block_map[l]);
  const int64_t row = off[l] + (block - block_map[l]) * warps + warp;
  return row < off[l + 1] ? row : -1;
}

// The outputs from row `row` on (a chunk's first row).
MTL_HD FilterStatsOut filter_stats_out_at(const FilterStatsOut& o, int64_t row, int T) {
  return FilterStatsOut{o.dot + row * T, o.gram + row * T * T, o.wsq + row, o.wabs + row,
                        o.wg2 + row * T * T};
}

// The epilogue: store accumulator `a` (layout TL) of filter `row` for a call with T tasks,
// mirroring the symmetric T x T blocks. Accumulators of padded tasks (index >= T) are dropped.
MTL_HD void store_filter_acc(const FilterStatsOut& out, int64_t row, int tl, int T, int a, float v) {
  const int P = num_pairs(tl);
  if (a < tl) {
    if (a < T) out.dot[row * T + a] = v;
    return;
  }
  if (a >= tl + 2 * P) {
    if (a == tl + 2 * P) out.wsq[row] = v; else out.wabs[row] = v;
    return;
  }
  float* mat = a < tl + P ? out.gram : out.wg2;
  int p = (a - tl) % P;
  // decode p -> (i, j), i <= j (at most 16 steps)
  int i = 0;
  while (p >= tl - i) { p -= tl - i; ++i; }
  const int j = i + p;
  if (j >= T) return;
  float* m = mat + row * T * T;
  m[i * T + j] = v;
  m[j * T + i] = v;
}

// ------------------------------------------------------------------------------------------------
// Filter statistics for T = 9..16 on CUDA: the task pairs split across warps.
//
// With all 290 accumulators of TL = 16 in every thread, ptxas spilled (16-bit inputs: a 3.7 KB stack
// frame, ~18 KB of spill stores; every FMA through local memory). Instead a block of kWarps warps
// stages a strip of the row (W and the 16 task rows, float32) in shared memory, and each warp owns
// kPerWarp of the 10 upper 4 x 4 tiles (I <= J) of the 16 x 16 task grid: per element a thread reads
// W and the 8 task values of each tile from shared memory and does 16 gram and 16 wg2 FMAs per tile,
// holding kValues = 74 accumulators. A warp alone owns its tiles, so its reduction is one warp
// reduce-scatter with no cross-warp step. Tasks >= T are zero rows (dropped by the epilogue).
// Plain C++, so tests/cpp/task_tiles.cpp runs the same accumulation and mapping on the host.
// ------------------------------------------------------------------------------------------------
struct TaskTiles {
  static constexpr int kTL = 16;  // task layout of the path
  static constexpr int kTile = 4;
  static constexpr int kWarps = 5;
  static constexpr int kPerWarp = 2;  // 10 tiles = 5 warps x 2: balanced
  static constexpr int kTileValues = kTile * kTile;
  static constexpr int kValues = kPerWarp * (2 * kTileValues + kTile) + 2;  // 74 per thread
  // A thread's value slots: gram and wg2 of its tiles, dot of its tile rows, wsq, wabs.
  MTL_HD static constexpr int gram_slot(int s, int a, int b) { return s * kTileValues + a * kTile + b; }
  MTL_HD static constexpr int wg2_slot(int s, int a, int b) {
    return kPerWarp * kTileValues + gram_slot(s, a, b);
  }
  MTL_HD static constexpr int dot_slot(int s, int a) { return 2 * kPerWarp * kTileValues + s * kTile + a; }
  static constexpr int kWsqSlot = kValues - 2;
  static constexpr int kWabsSlot = kValues - 1;

  // Tile u (0 .. 9) of the upper triangle, row-major: (I, J) with I <= J.
  MTL_HD static void tile(int u, int& I, int& J) {
    I = 0;
    while (u >= kTL / kTile - I) { u -= kTL / kTile - I; ++I; }
    J = I + u;
  }

  // One element: w and the task values g[t * stride + k] (t < 16) into a thread's slots, for the
  // tiles (I[s], J[s]) of its warp.
  MTL_HD static void accumulate(float* acc, float w, const float* g, int stride, int k,
                                const int* I, const int* J) {
MTL_UNROLL
    for (int s = 0; s < kPerWarp; ++s) {
      float gi[kTile], gj[kTile], wgi[kTile], wgj[kTile];
MTL_UNROLL
      for (int a = 0; a < kTile; ++a) {
        gi[a] = g[(kTile * I[s] + a) * stride + k];
        gj[a] = g[(kTile * J[s] + a) * stride + k];
        wgi[a] = w * gi[a];
        wgj[a] = w * gj[a];
        acc[dot_slot(s, a)] += wgi[a];
      }
MTL_UNROLL
      for (int a = 0; a < kTile; ++a) {
MTL_UNROLL
        for (int b = 0; b < kTile; ++b) {
          acc[gram_slot(s, a, b)] += gi[a] * gj[b];
          acc[wg2_slot(s, a, b)] += wgi[a] * wgj[b];
        }
      }
    }
    acc[kWsqSlot] += w * w;
    acc[kWabsSlot] += w < 0.f ? -w : w;
  }

  // The accumulator (layout TL = 16, above) that slot v of warp `warp` holds, or -1 when the slot
  // is not an output: the lower half of a diagonal tile, the dot of an off-diagonal tile (its row's
  // diagonal tile has it), wsq/wabs outside warp 0. Every accumulator has exactly one owner.
  MTL_HD static int acc_index(int warp, int v) {
    constexpr int P = num_pairs(kTL);
    int I, J;
    if (v < 2 * kPerWarp * kTileValues) {
      const int kind = v / (kPerWarp * kTileValues);  // 0 gram, 1 wg2
      const int r = v % (kPerWarp * kTileValues);
      tile(kPerWarp * warp + r / kTileValues, I, J);
      const int i = kTile * I + (r % kTileValues) / kTile, j = kTile * J + r % kTile;
      return i > j ? -1 : kTL + kind * P + pair_index(kTL, i, j);
    }
    if (v < kWsqSlot) {
      const int r = v - 2 * kPerWarp * kTileValues;
      tile(kPerWarp * warp + r / kTile, I, J);
      return I == J ? kTile * I + r % kTile : -1;
    }
    if (warp != 0) return -1;
    return v == kWsqSlot ? kTL + 2 * P : kTL + 2 * P + 1;
  }
};

// ------------------------------------------------------------------------------------------------
// Warp reduce-scatter of a filter's accumulators (the CUDA epilogue's index logic; plain C++, so a
// host test runs it on 32 simulated lanes).
//
// Each of the 32 lanes of a warp holds N = 32 M partial sums v[0 .. N). In step s = 0 .. 4 the lane
// and its partner (lane ^ (16 >> s)) each hold n = N >> s values; a lane keeps the half chosen by
// its lane bit (the upper half when the bit is set), sends the other half to its partner and adds
// what the partner sent. After the 5 steps lane L holds, in v[0 .. M), the warp-wide sums of values
// M L .. M L + M - 1. That is 31 M shuffles per warp instead of 5 N (one butterfly sum per value):
// at T = 8 (82 accumulators, M = 3) 93 instead of 410, and the shuffle unit is the SM's narrowest.
// ------------------------------------------------------------------------------------------------
template <int M>
struct WarpReduceScatter {
  static constexpr int kValues = 32 * M;  // N: values per lane before the reduction
  static constexpr int kSteps = 5;
  MTL_HD static constexpr int half(int s) { return kValues >> (s + 1); }
  MTL_HD static constexpr int partner_xor(int s) { return 16 >> s; }
  // The value a lane sends for slot i (< half(s)) in step s ...
  MTL_HD static float send(const float* v, int s, int lane, int i) {
    return (lane & partner_xor(s)) ? v[i] : v[i + half(s)];
  }
  // ... and what it keeps in slot i, given the partner's value for that slot.
  MTL_HD static void keep(float* v, int s, int lane, int i, float received) {
    v[i] = ((lane & partner_xor(s)) ? v[i + half(s)] : v[i]) + received;
  }
  // After the last step: the value index that slot i of `lane` holds.
  MTL_HD static constexpr int value_index(int lane, int i) { return M * lane + i; }
};

// ------------------------------------------------------------------------------------------------
// channel_contrib: position cursor.
//
// A thread of the CUDA channel-major kernel (channels_last) visits positions p0, p0 + step, ... of
// the N x S positions and needs (n, s) = (p / S, p % S) for each: an int64 division per element
// (a long instruction sequence on a GPU) where one at the start suffices. The cursor divides once
// (start and step), then advances with an add and a compare.
// ------------------------------------------------------------------------------------------------
struct PositionCursor {
  int64_t n, s;    // the current position's (p / S, p % S)
  int64_t dn, ds;  // step / S, step % S
  int64_t S;

  MTL_HD PositionCursor(int64_t p, int64_t step, int64_t size)
      : n(p / size), s(p % size), dn(step / size), ds(step % size), S(size) {}
  MTL_HD void next() {
    n += dn;
    s += ds;
    if (s >= S) { s -= S; ++n; }
  }
};

// The positions [p0, p1) of N rows of S (p = n S + s) that thread `t` of a spatial-major block of
// `threads` threads visits, as f(n, s): a row of S < warp_row_s positions goes to one warp (lane
// along s, warps on rows n = first + warp, + warps, ...), a longer row to the whole block. One
// division per thread (the first row), none per element.
template <typename F>
MTL_HD void for_spatial_positions(int64_t p0, int64_t p1, int64_t S, int64_t warp_row_s, int t,
                                  int threads, F&& f) {
  const bool by_warp = S < warp_row_s;
  const int lane = t & 31, warp = t >> 5;
  const int first = by_warp ? lane : t, step = by_warp ? 32 : threads;
  const int64_t row_step = by_warp ? threads / 32 : 1;
  for (int64_t n = p0 / S + (by_warp ? warp : 0); n * S < p1; n += row_step) {
    const int64_t s0 = p0 > n * S ? p0 - n * S : 0;
    const int64_t s1 = p1 - n * S < S ? p1 - n * S : S;
    for (int64_t s = s0 + first; s < s1; s += step) f(n, s);
  }
}

// ------------------------------------------------------------------------------------------------
// Channel gather: canonical form.
//
// A contiguous tensor with two selected dims d_lo < d_hi is viewed as [A, D1, B, D2, C]
// (A = prod of dims before d_lo, B between, C after d_hi). Its output is [A, n1, B, n2, C] with
// out[a, j1, b, j2, c] = in[a, idx1[j1], b, idx2[j2], c]; an absent index is the identity
// (n = D). Rows (A * n1 * B * n2 of them) are contiguous runs of C elements in both tensors.
// ------------------------------------------------------------------------------------------------
struct GatherDesc {
  int64_t A, D1, B, D2, C;  // input sizes
  int64_t n1, n2;           // kept along D1 / D2
  int64_t idx1, idx2;       // addresses of int64 index arrays, 0 = identity
  int64_t in, out;          // addresses of input / output data
  int64_t elem_size;        // bytes per element: 1, 2, 4 or 8 (the gather is a typeless copy)
};

// A gather call's table, the one format of the CPU, CUDA and Triton gathers (tables.cpp builds it;
// Triton gets it from torch.ops.mtlkernels._gather_table), one int64 buffer:
//   [0, n W)             one record of W = kGatherDescWords words per tensor: the 12 GatherDesc
//                        words (load_gather_desc), then the multiply-high dividers of C, n2, B, n1
//                        (each m | s << 32; zero when the output has >= 2^31 elements)
//   [n W, n W + n]       block_starts: prefix sums of each tensor's blocks of block_elems outputs
//   n W + n + 1          the error word, zero: a kernel sets it to i + 1 for a bad index of tensor i
// so one host -> device copy carries the descriptors and the block map and clears the error word.
constexpr int kGatherDescWords = 16;
constexpr int kGatherDividerWord = 12;
MTL_HD int64_t gather_block_starts_word(int64_t n) { return n * kGatherDescWords; }
MTL_HD int64_t gather_error_word(int64_t n) { return n * kGatherDescWords + n + 1; }
MTL_HD int64_t gather_table_size(int64_t n) { return gather_error_word(n) + 1; }

MTL_HD int64_t gather_rows(const GatherDesc& g) { return g.A * g.n1 * g.B * g.n2; }

// Element offset, in the input, of the first element of output row (a, j1, b, j2), or -1 when an
// index is out of range: the raw ops trust no index value. The CPU binding checks the indices
// before the copy (so its kernel never sees -1); the CUDA kernel cannot raise, so it turns -1 into
// an error flag the binding reads back, and never loads from the bad offset.
MTL_HD int64_t gather_in_row_at(const GatherDesc& g, int64_t a, int64_t j1, int64_t b, int64_t j2) {
  const int64_t i1 = g.idx1 ? reinterpret_cast<const int64_t*>(g.idx1)[j1] : j1;
  const int64_t i2 = g.idx2 ? reinterpret_cast<const int64_t*>(g.idx2)[j2] : j2;
  // unsigned compares: a negative index fails too
  if (static_cast<uint64_t>(i1) >= static_cast<uint64_t>(g.D1) ||
      static_cast<uint64_t>(i2) >= static_cast<uint64_t>(g.D2))
    return -1;
  return (((a * g.D1 + i1) * g.B + b) * g.D2 + i2) * g.C;
}

// Output row coordinates (a, j1, b, j2) of a gather: set from a row number once (divisions), then
// advanced row by row like an odometer (no division), which is how the CPU kernel walks its rows.
struct GatherRowCursor {
  int64_t a, j1, b, j2;

  MTL_HD GatherRowCursor(const GatherDesc& g, int64_t r) {
    j2 = r % g.n2; r /= g.n2;
    b = r % g.B; r /= g.B;
    j1 = r % g.n1;
    a = r / g.n1;
  }
  // Element offset, in the input, of the first element of the current output row (-1: an index
  // is out of range, see gather_in_row_at).
  MTL_HD int64_t in_row(const GatherDesc& g) const { return gather_in_row_at(g, a, j1, b, j2); }
  MTL_HD void next(const GatherDesc& g) {
    if (++j2 < g.n2) return;
    j2 = 0;
    if (++b < g.B) return;
    b = 0;
    if (++j1 < g.n1) return;
    j1 = 0;
    ++a;
  }
};

// Element offset, in the input, of the first element of output row `r` (-1: bad index).
MTL_HD int64_t gather_in_row(const GatherDesc& g, int64_t r) {
  return GatherRowCursor(g, r).in_row(g);
}

// Division by a fixed divisor 1 <= d <= 2^31 of numerators n < 2^31 with a multiply-high, an add
// and a shift (Granlund & Montgomery; PyTorch's IntDivider does the same):
// n / d == (umulhi(n, m) + n) >> s. A GPU has no integer divider: an int64 division is a long
// instruction sequence, and the gather would pay three of them per element.
struct FastDivU31 {
  uint32_t m, s;  // no default member initialisers: CUDA __shared__ needs a trivial constructor

  FastDivU31() = default;
  MTL_HD explicit FastDivU31(uint32_t d) : m(0), s(0) {
    while (s < 31 && (uint32_t{1} << s) < d) ++s;
    m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << s) - d)) / d + 1);
  }
  // One table word (m | s << 32), as the gather table stores it.
  MTL_HD int64_t packed() const { return static_cast<int64_t>(m) | (static_cast<int64_t>(s) << 32); }
  MTL_HD static FastDivU31 unpack(int64_t w) {
    FastDivU31 d;
    d.m = static_cast<uint32_t>(w & 0xffffffffLL);
    d.s = static_cast<uint32_t>(w >> 32);
    return d;
  }
  MTL_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(n, m);
#else
    const uint32_t hi = static_cast<uint32_t>((static_cast<uint64_t>(n) * m) >> 32);
#endif
    return (hi + n) >> s;
  }
};

// The divisors of a gather's output index math, for tensors whose output has < 2^31 elements
// (gather_fits_u31): then every output index and size fits the fast division.
struct GatherDividers {
  FastDivU31 c, n2, b, n1;
  GatherDividers() = default;
  MTL_HD explicit GatherDividers(const GatherDesc& g)
      : c(static_cast<uint32_t>(g.C)), n2(static_cast<uint32_t>(g.n2)),
        b(static_cast<uint32_t>(g.B)), n1(static_cast<uint32_t>(g.n1)) {}
};

MTL_HD bool gather_fits_u31(const GatherDesc& g) {
  return gather_rows(g) * g.C < (int64_t{1} << 31);
}

// Element offset, in the input, of output element `e` (< 2^31) through the fast divisions: the
// same value as gather_in_row(g, e / C) + e % C, and -1 for an out-of-range index.
MTL_HD int64_t gather_in_elem_u31(const GatherDesc& g, const GatherDividers& dv, uint32_t e) {
  const uint32_t r = dv.c.div(e);
  const uint32_t c = e - r * static_cast<uint32_t>(g.C);
  const uint32_t q1 = dv.n2.div(r);
  const uint32_t j2 = r - q1 * static_cast<uint32_t>(g.n2);
  const uint32_t q2 = dv.b.div(q1);
  const uint32_t b = q1 - q2 * static_cast<uint32_t>(g.B);
  const uint32_t a = dv.n1.div(q2);
  const uint32_t j1 = q2 - a * static_cast<uint32_t>(g.n1);
  const int64_t row = gather_in_row_at(g, a, j1, b, j2);
  return row < 0 ? row : row + c;
}

MTL_HD GatherDesc load_gather_desc(const int64_t* w) {
  GatherDesc g;
  g.A = w[0]; g.D1 = w[1]; g.B = w[2]; g.D2 = w[3]; g.C = w[4];
  g.n1 = w[5]; g.n2 = w[6]; g.idx1 = w[7]; g.idx2 = w[8]; g.in = w[9]; g.out = w[10];
  g.elem_size = w[11];
  return g;
}

// Writes one record of a gather table: the descriptor and, when it fits, its dividers.
MTL_HD void store_gather_desc(const GatherDesc& g, int64_t* w) {
  w[0] = g.A; w[1] = g.D1; w[2] = g.B; w[3] = g.D2; w[4] = g.C;
  w[5] = g.n1; w[6] = g.n2; w[7] = g.idx1; w[8] = g.idx2; w[9] = g.in; w[10] = g.out;
  w[11] = g.elem_size;
  int64_t* d = w + kGatherDividerWord;
  d[0] = d[1] = d[2] = d[3] = 0;
  if (!gather_fits_u31(g)) return;
  const GatherDividers dv(g);
  d[0] = dv.c.packed(); d[1] = dv.n2.packed(); d[2] = dv.b.packed(); d[3] = dv.n1.packed();
}

MTL_HD GatherDividers load_gather_dividers(const int64_t* w) {
  GatherDividers dv;
  dv.c = FastDivU31::unpack(w[kGatherDividerWord]);
  dv.n2 = FastDivU31::unpack(w[kGatherDividerWord + 1]);
  dv.b = FastDivU31::unpack(w[kGatherDividerWord + 2]);
  dv.n1 = FastDivU31::unpack(w[kGatherDividerWord + 3]);
  return dv;
}

}  // namespace mtlkernels
