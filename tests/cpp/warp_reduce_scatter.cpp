// Host check of the CUDA filter_stats epilogue's index logic (common.h WarpReduceScatter): 4 warps
// of 32 simulated lanes run the reduce-scatter exactly as cuda_utils.cuh sequences it (per step:
// every lane computes its sends, then every lane keeps with its partner's), write their slots to
// the shared-memory layout part[warp][value_index], and the per-accumulator sums over the warps
// must equal the direct sums over all 128 threads. Values are small integers, so sums are exact.
// Exit status 0 = pass; prints the first mismatch otherwise.
#include <cstdio>
#include <random>
#include <vector>

#include "mtlkernels/common.h"

using namespace mtlkernels;

template <int M>
int check(int num_acc_values, std::mt19937& rng) {
  using R = WarpReduceScatter<M>;
  constexpr int N = R::kValues, kWarps = 4;
  std::uniform_int_distribution<int> dist(-1000, 1000);
  std::vector<std::vector<float>> acc(kWarps * 32, std::vector<float>(num_acc_values));
  std::vector<double> expect(num_acc_values, 0.0);
  for (auto& thread : acc)
    for (int a = 0; a < num_acc_values; ++a) {
      thread[a] = static_cast<float>(dist(rng));
      expect[a] += thread[a];
    }
  std::vector<std::vector<float>> part(kWarps, std::vector<float>(N, -12345.f));  // poisoned
  for (int w = 0; w < kWarps; ++w) {
    std::vector<std::vector<float>> v(32, std::vector<float>(N, 0.f));
    for (int lane = 0; lane < 32; ++lane)
      for (int a = 0; a < num_acc_values; ++a) v[lane][a] = acc[w * 32 + lane][a];
    for (int s = 0; s < R::kSteps; ++s) {
      std::vector<std::vector<float>> sent(32, std::vector<float>(R::half(s)));
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < R::half(s); ++i) sent[lane][i] = R::send(v[lane].data(), s, lane, i);
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < R::half(s); ++i)
          R::keep(v[lane].data(), s, lane, i, sent[lane ^ R::partner_xor(s)][i]);
    }
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < M; ++i) part[w][R::value_index(lane, i)] = v[lane][i];
  }
  for (int a = 0; a < num_acc_values; ++a) {
    double got = 0.0;
    for (int w = 0; w < kWarps; ++w) got += part[w][a];
    if (got != expect[a]) {
      std::printf("M=%d NA=%d: accumulator %d: got %g, expected %g\n", M, num_acc_values, a, got,
                  expect[a]);
      return 1;
    }
  }
  std::printf("M=%d NA=%d ok\n", M, num_acc_values);
  return 0;
}

int main() {
  std::mt19937 rng(1234);
  int failed = 0;
  // The kernel uses M = ceil(num_acc(TL) / 32) for TL = 1 .. 8 and 16.
  failed += check<(num_acc(1) + 31) / 32>(num_acc(1), rng);
  failed += check<(num_acc(3) + 31) / 32>(num_acc(3), rng);
  failed += check<(num_acc(5) + 31) / 32>(num_acc(5), rng);
  failed += check<(num_acc(6) + 31) / 32>(num_acc(6), rng);  // exactly 32 * M would be 62 of 64
  failed += check<(num_acc(8) + 31) / 32>(num_acc(8), rng);
  failed += check<(num_acc(16) + 31) / 32>(num_acc(16), rng);
  failed += check<2>(64, rng);  // no padding
  return failed;
}
