// Host check of the CUDA gather's fast index math (common.h): FastDivU31 against the division
// operator over all divisors up to 4096, edge divisors and edge numerators, and random pairs; and
// gather_in_elem_u31 against gather_in_row(g, e / C) + e % C for every output element of random
// gather descriptors (random sizes, random index arrays, with and without each index), read back
// from a gather table record (store_gather_desc / load_gather_dividers) as the kernels read them.
// Exit status 0 = pass; prints the first mismatch otherwise.
#include <cstdio>
#include <random>
#include <vector>

#include "mtlkernels/common.h"

using namespace mtlkernels;

static int check_div(uint32_t d, uint32_t n) {
  const uint32_t got = FastDivU31(d).div(n);
  if (got != n / d) {
    std::printf("FastDivU31(%u).div(%u) = %u, expected %u\n", d, n, got, n / d);
    return 1;
  }
  return 0;
}

int main() {
  std::mt19937 rng(4321);
  const uint32_t kMax = 0x7fffffffu;  // numerators < 2^31
  std::uniform_int_distribution<uint32_t> any(0, kMax);
  int failed = 0;
  std::vector<uint32_t> divisors;
  for (uint32_t d = 1; d <= 4096; ++d) divisors.push_back(d);
  for (int p = 12; p <= 31; ++p) {
    const uint32_t two = uint32_t{1} << p;
    divisors.push_back(two - 1);
    divisors.push_back(two);
    if (p < 31) divisors.push_back(two + 1);
  }
  for (int i = 0; i < 2000; ++i) divisors.push_back(1 + any(rng) % kMax);
  for (uint32_t d : divisors) {
    const uint32_t edges[] = {0, 1, d - 1, d, d + 1, 2 * d - 1, kMax, kMax - 1, kMax - d % kMax};
    for (uint32_t n : edges)
      if (n <= kMax) failed += check_div(d, n);
    for (int i = 0; i < 64; ++i) failed += check_div(d, any(rng));
    if (failed) return 1;
  }
  std::printf("FastDivU31 ok (%zu divisors)\n", divisors.size());

  std::uniform_int_distribution<int> size(1, 7);
  for (int trial = 0; trial < 3000; ++trial) {
    GatherDesc g{};
    g.A = size(rng); g.D1 = size(rng); g.B = size(rng); g.D2 = size(rng); g.C = size(rng);
    std::vector<int64_t> i1, i2;
    const bool has1 = rng() & 1, has2 = rng() & 1;
    g.n1 = has1 ? size(rng) : g.D1;
    g.n2 = has2 ? size(rng) : g.D2;
    for (int64_t j = 0; j < g.n1; ++j) i1.push_back(static_cast<int64_t>(rng() % g.D1));
    for (int64_t j = 0; j < g.n2; ++j) i2.push_back(static_cast<int64_t>(rng() % g.D2));
    g.idx1 = has1 ? reinterpret_cast<int64_t>(i1.data()) : 0;
    g.idx2 = has2 ? reinterpret_cast<int64_t>(i2.data()) : 0;
    if (!gather_fits_u31(g)) {
      std::printf("small descriptor reported as not fitting\n");
      return 1;
    }
    // through a table record, as the kernels read it (the dividers are made on the host)
    int64_t rec[kGatherDescWords];
    store_gather_desc(g, rec);
    const GatherDesc gt = load_gather_desc(rec);
    const GatherDividers dv = load_gather_dividers(rec);
    const int64_t total = gather_rows(g) * g.C;
    for (int64_t e = 0; e < total; ++e) {
      const int64_t expect = gather_in_row(g, e / g.C) + e % g.C;
      const int64_t got = gather_in_elem_u31(gt, dv, static_cast<uint32_t>(e));
      if (got != expect) {
        std::printf("trial %d element %lld: got %lld, expected %lld\n", trial,
                    static_cast<long long>(e), static_cast<long long>(got),
                    static_cast<long long>(expect));
        return 1;
      }
    }
  }
  // An output of >= 2^31 elements keeps zero divider words (the kernels take int64 divisions).
  GatherDesc big{};
  big.A = 1; big.D1 = 1 << 16; big.B = 1; big.D2 = 1; big.C = 1 << 16; big.n1 = big.D1; big.n2 = 1;
  int64_t rec[kGatherDescWords];
  store_gather_desc(big, rec);
  for (int i = 0; i < 4; ++i)
    if (gather_fits_u31(big) || rec[kGatherDividerWord + i] != 0) {
      std::printf("a large descriptor got divider words\n");
      return 1;
    }
  std::printf("gather_in_elem_u31 ok\n");
  return 0;
}
