// Host check of the CUDA channel_contrib position walks (common.h): PositionCursor gives
// (p / S, p % S) at every step for random starts, steps and sizes; for_spatial_positions hands
// every position of a split to exactly one thread of a 256-thread block, for short rows (a warp
// per row) and long ones (the block per row), and no position outside the split.
// Exit status 0 = pass; prints the first mismatch otherwise.
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include "mtlkernels/common.h"

using namespace mtlkernels;

static int check_cursor(int64_t p0, int64_t step, int64_t S, int64_t count) {
  PositionCursor c(p0, step, S);
  for (int64_t i = 0, p = p0; i < count; ++i, p += step, c.next())
    if (c.n != p / S || c.s != p % S) {
      std::printf("cursor p=%lld step=%lld S=%lld: (%lld, %lld)\n", (long long)p, (long long)step,
                  (long long)S, (long long)c.n, (long long)c.s);
      return 1;
    }
  return 0;
}

static int check_split(int64_t N, int64_t S, int64_t p0, int64_t p1) {
  std::vector<int> seen(N * S, 0);
  for (int t = 0; t < 256; ++t)
    for_spatial_positions(p0, p1, S, 1024, t, 256, [&](int64_t n, int64_t s) {
      if (s >= 0 && s < S && n * S + s >= p0 && n * S + s < p1) ++seen[n * S + s];
      else seen[0] += 1000;  // outside the split
    });
  for (int64_t p = 0; p < N * S; ++p)
    if (seen[p] != (p >= p0 && p < p1 ? 1 : 0)) {
      std::printf("N=%lld S=%lld split [%lld, %lld): position %lld seen %d times\n", (long long)N,
                  (long long)S, (long long)p0, (long long)p1, (long long)p, seen[p]);
      return 1;
    }
  return 0;
}

int main() {
  std::mt19937 rng(77);
  for (int i = 0; i < 20000; ++i) {
    const int64_t S = 1 + rng() % 300, step = 1 + rng() % 20, p0 = rng() % 5000;
    if (check_cursor(p0, step, S, 200)) return 1;
  }
  const int64_t sizes[] = {1, 7, 31, 32, 49, 196, 1023, 1024, 3136};
  for (int64_t S : sizes)
    for (int trial = 0; trial < 6; ++trial) {
      const int64_t N = 1 + rng() % 12, P = N * S;
      int64_t a = rng() % (P + 1), b = rng() % (P + 1);
      if (a > b) std::swap(a, b);
      if (check_split(N, S, a, b) || check_split(N, S, 0, P)) return 1;
    }
  std::printf("positions ok\n");
  return 0;
}
