// Host check of the CUDA filter_stats launch in chunks (common.h filter_stats_chunk_end /
// filter_stats_chunk_table / filter_stats_out_at): for random layer sizes, task counts and table
// limits, the chunks cover every layer once and in order, each chunk's table fits its limit, and
// every row read through its chunk's table (layer search, K, weight and gradient addresses, output
// row) is the row the whole table gives; and the chunk's block map (filter_stats_block_map /
// filter_stats_block_row) gives every row to exactly one warp (a short row, K <= kShortRowK) or to
// all warps of one block (a long row).
// Exit status 0 = pass; prints the first mismatch otherwise.
#include <cstdio>
#include <random>
#include <vector>

#include "mtlkernels/common.h"

using namespace mtlkernels;

static int check_block_map(const FilterStatsTable& ct) {
  const int warps = 4;
  std::vector<int64_t> map(ct.num_layers + 1);
  filter_stats_block_map(ct, warps, map.data());
  std::vector<int> seen(ct.num_rows(), 0);
  for (int64_t b = 0; b < map[ct.num_layers]; ++b) {
    int64_t first = -2;
    for (int w = 0; w < warps; ++w) {
      int64_t l = -1;
      const int64_t row = filter_stats_block_row(ct, map.data(), warps, b, w, &l);
      if (row < 0) {
        if (!filter_stats_short_rows(ct, l)) { std::printf("long row block %lld idle\n", (long long)b); return 1; }
        continue;
      }
      if (row < ct.row_offsets()[l] || row >= ct.row_offsets()[l + 1]) {
        std::printf("block %lld warp %d: row %lld outside layer %lld\n", (long long)b, w, (long long)row, (long long)l);
        return 1;
      }
      if (filter_stats_short_rows(ct, l)) {
        ++seen[row];
      } else if (w == 0) {
        first = row;
        ++seen[row];
      } else if (row != first) {
        std::printf("block %lld: warps of a long row disagree\n", (long long)b);
        return 1;
      }
    }
  }
  for (int64_t r = 0; r < ct.num_rows(); ++r)
    if (seen[r] != 1) {
      std::printf("row %lld taken %d times\n", (long long)r, seen[r]);
      return 1;
    }
  return 0;
}

static int check_call(std::mt19937& rng, int64_t L, int T, int64_t max_words) {
  std::vector<int64_t> full(filter_stats_table_size(L, T));
  std::uniform_int_distribution<int64_t> rows(1, 9), big(1, 1 << 20);
  full[0] = 0;
  for (int64_t l = 0; l < L; ++l) {
    full[l + 1] = full[l] + rows(rng);
    full[L + 1 + l] = rng() & 1 ? 1 + static_cast<int64_t>(rng() % (2 * kShortRowK)) : big(rng);
    full[2 * L + 1 + l] = big(rng) * 16;
    for (int t = 0; t < T; ++t) full[3 * L + 1 + l * T + t] = big(rng) * 16 + t;
  }
  const FilterStatsTable ft{full.data(), L, T};
  const FilterStatsOut out{reinterpret_cast<float*>(0x1000), reinterpret_cast<float*>(0x2000),
                           reinterpret_cast<float*>(0x3000), reinterpret_cast<float*>(0x4000),
                           reinterpret_cast<float*>(0x5000)};
  int64_t next = 0;
  for (int64_t l0 = 0, l1; l0 < L; l0 = l1) {
    l1 = filter_stats_chunk_end(ft, l0, max_words);
    const int64_t n = l1 - l0;
    if (l1 <= l0 || l1 > L || filter_stats_table_size(n, T) + n + 1 > max_words) {
      std::printf("L=%lld T=%d max=%lld: bad chunk [%lld, %lld)\n", (long long)L, T,
                  (long long)max_words, (long long)l0, (long long)l1);
      return 1;
    }
    std::vector<int64_t> chunk(filter_stats_table_size(n, T));
    filter_stats_chunk_table(ft, l0, l1, chunk.data());
    const FilterStatsTable ct{chunk.data(), n, T};
    const FilterStatsOut o = filter_stats_out_at(out, ft.row_offsets()[l0], T);
    if (check_block_map(ct)) return 1;
    for (int64_t r = 0; r < ct.num_rows(); ++r, ++next) {
      const int64_t cl = ct.layer_of_row(r), fl = ft.layer_of_row(next);
      bool ok = cl + l0 == fl && ct.k(cl) == ft.k(fl) && ct.weight_addr(cl) == ft.weight_addr(fl) &&
                r - ct.row_offsets()[cl] == next - ft.row_offsets()[fl] &&
                o.dot + r * T == out.dot + next * T && o.gram + r * T * T == out.gram + next * T * T &&
                o.wsq + r == out.wsq + next && o.wabs + r == out.wabs + next &&
                o.wg2 + r * T * T == out.wg2 + next * T * T;
      for (int t = 0; t < T; ++t) ok = ok && ct.grad_addr(cl, t) == ft.grad_addr(fl, t);
      if (!ok) {
        std::printf("L=%lld T=%d max=%lld: row %lld differs through chunk [%lld, %lld)\n",
                    (long long)L, T, (long long)max_words, (long long)next, (long long)l0,
                    (long long)l1);
        return 1;
      }
    }
  }
  if (next != ft.num_rows()) {
    std::printf("chunks cover %lld of %lld rows\n", (long long)next, (long long)ft.num_rows());
    return 1;
  }
  return 0;
}

int main() {
  std::mt19937 rng(2024);
  std::uniform_int_distribution<int64_t> layers(1, 300);
  std::uniform_int_distribution<int> tasks(1, kMaxTasks);
  const int64_t limits[] = {6 + kMaxTasks, 37, 496, 4064, 100000};
  int calls = 0;
  for (int trial = 0; trial < 400; ++trial)
    for (int64_t max_words : limits) {
      if (check_call(rng, layers(rng), tasks(rng), max_words)) return 1;
      ++calls;
    }
  // the sizes of the issue: ResNet-152 (155 layers) at T = 16 is one chunk of 2,946 words
  if (check_call(rng, 155, 16, 4064) || filter_stats_table_size(155, 16) != 2946) return 1;
  std::printf("chunks ok (%d calls)\n", calls);
  return 0;
}
