// Host check of the CUDA filter_stats path for T = 9..16 (common.h TaskTiles): 5 warps of 32
// simulated lanes accumulate a row exactly as filter_stats_tiles_kernel does (lane k-stride over a
// [16][K] strip whose rows >= T are zero), each warp's slots are summed over its lanes (the warp
// reduce-scatter itself is checked by warp_reduce_scatter.cpp), mapped by acc_index and stored by
// store_filter_acc into NaN-poisoned outputs. Checks: every accumulator of the TL = 16 layout has
// exactly one owner; every output element is written and equals the direct formula (small integer
// values: exact). Exit status 0 = pass.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "mtlkernels/common.h"

using namespace mtlkernels;
using TT = TaskTiles;

static int check_ownership() {
  std::vector<int> owners(num_acc(TT::kTL), 0);
  for (int warp = 0; warp < TT::kWarps; ++warp)
    for (int v = 0; v < TT::kValues; ++v) {
      const int a = TT::acc_index(warp, v);
      if (a >= 0) ++owners[a];
    }
  for (int a = 0; a < num_acc(TT::kTL); ++a)
    if (owners[a] != 1) {
      std::printf("accumulator %d has %d owners\n", a, owners[a]);
      return 1;
    }
  std::printf("ownership ok\n");
  return 0;
}

static int check_row(int T, int K, std::mt19937& rng) {
  std::uniform_int_distribution<int> dist(-3, 3);
  std::vector<float> w(K), g(TT::kTL * K, 0.f);  // the shared-memory strip: [16][K], rows >= T zero
  for (auto& x : w) x = static_cast<float>(dist(rng));
  for (int t = 0; t < T; ++t)
    for (int k = 0; k < K; ++k) g[t * K + k] = static_cast<float>(dist(rng));
  const float nan = std::nanf("");
  std::vector<float> dot(T, nan), gram(T * T, nan), wg2(T * T, nan), wsq(1, nan), wabs(1, nan);
  const FilterStatsOut out{dot.data(), gram.data(), wsq.data(), wabs.data(), wg2.data()};
  for (int warp = 0; warp < TT::kWarps; ++warp) {
    int I[TT::kPerWarp], J[TT::kPerWarp];
    for (int s = 0; s < TT::kPerWarp; ++s) TT::tile(TT::kPerWarp * warp + s, I[s], J[s]);
    std::vector<float> sum(TT::kValues, 0.f);
    for (int lane = 0; lane < 32; ++lane) {
      float acc[TT::kValues] = {};
      for (int k = lane; k < K; k += 32) TT::accumulate(acc, w[k], g.data(), K, k, I, J);
      for (int v = 0; v < TT::kValues; ++v) sum[v] += acc[v];
    }
    for (int v = 0; v < TT::kValues; ++v) {
      const int a = TT::acc_index(warp, v);
      if (a >= 0) store_filter_acc(out, 0, TT::kTL, T, a, sum[v]);
    }
  }
  auto G = [&](int t, int k) { return g[t * K + k]; };
  double e_wsq = 0, e_wabs = 0;
  for (int k = 0; k < K; ++k) { e_wsq += w[k] * w[k]; e_wabs += std::fabs(w[k]); }
  bool ok = wsq[0] == e_wsq && wabs[0] == e_wabs;
  for (int i = 0; i < T; ++i) {
    double d = 0;
    for (int k = 0; k < K; ++k) d += w[k] * G(i, k);
    ok = ok && dot[i] == d;
    for (int j = 0; j < T; ++j) {
      double gr = 0, q = 0;
      for (int k = 0; k < K; ++k) {
        gr += G(i, k) * G(j, k);
        q += w[k] * w[k] * G(i, k) * G(j, k);
      }
      ok = ok && gram[i * T + j] == gr && wg2[i * T + j] == q;  // NaN (unwritten) fails
    }
  }
  if (!ok) std::printf("T=%d K=%d: mismatch\n", T, K);
  return ok ? 0 : 1;
}

int main() {
  std::mt19937 rng(7);
  int bad = check_ownership();
  for (int T = 9; T <= 16; ++T)
    for (int K : {1, 31, 33, 100, 257}) bad += check_row(T, K, rng);
  if (!bad) std::printf("rows ok\n");
  return bad ? 1 : 0;
}
