// C++ CPU kernel of mtlkernels::channel_contrib: contrib[c] = sum_{n,s} A[n,c,s] * D[n,c,s].
//
// Inputs arrive as [N, C, S] views with any strides. Two loop orders, chosen by the layout:
// - spatial-contiguous (NCHW): threads take channels, the inner loop runs along s (unit stride);
// - otherwise (channels_last has unit stride along c): threads take chunks of positions and keep
//   a [C] accumulator each, the inner loop runs along c; the per-chunk partials are summed in a
//   fixed order afterwards, so the result does not depend on the thread count's timing.
// Products and sums are in double (exact for 24-bit mantissas, and no float32 input can overflow
// them; so FMA contraction changes nothing either): overflow is decided by the sum rounded
// to float32 once, identically on every backend, never by a product or a partial sum.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../../common/tables.h"

namespace mtlkernels {
namespace {

template <typename scalar_t>
inline double exact_product(scalar_t a, scalar_t d) {
  return static_cast<double>(static_cast<float>(a)) * static_cast<double>(static_cast<float>(d));
}

template <typename scalar_t>
void contrib_spatial_major(const scalar_t* a, const scalar_t* d, const int64_t* sa,
                           const int64_t* sd, int64_t N, int64_t C, int64_t S, float* out) {
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double total = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* ap = a + n * sa[0] + c * sa[1];
        const scalar_t* dp = d + n * sd[0] + c * sd[1];
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t k = 0; k < S; ++k) s += exact_product(ap[k], dp[k]);
        total += s;
      }
      out[c] = static_cast<float>(total);
    }
  });
}

template <typename scalar_t>
void contrib_channel_major(const scalar_t* a, const scalar_t* d, const int64_t* sa,
                           const int64_t* sd, int64_t N, int64_t C, int64_t S, float* out) {
  const int64_t P = N * S;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(P, at::get_num_threads() * 4));
  std::vector<double> partial(chunks * C, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      double* acc = partial.data() + q * C;
      for (int64_t p = P * q / chunks; p < P * (q + 1) / chunks; ++p) {
        const int64_t n = p / S, s = p - n * S;
        const scalar_t* ap = a + n * sa[0] + s * sa[2];
        const scalar_t* dp = d + n * sd[0] + s * sd[2];
        const int64_t ca = sa[1], cd = sd[1];
#pragma omp simd
        for (int64_t c = 0; c < C; ++c)
          acc[c] += exact_product(ap[c * ca], dp[c * cd]);
      }
    }
  });
  for (int64_t q = 1; q < chunks; ++q)
    for (int64_t c = 0; c < C; ++c) partial[c] += partial[q * C + c];
  for (int64_t c = 0; c < C; ++c) out[c] = static_cast<float>(partial[c]);
}

at::Tensor channel_contrib_cpu(const at::Tensor& a, const at::Tensor& d) {
  check_channel_contrib_args(a, d);
  TORCH_CHECK(a.device().is_cpu(), "channel_contrib (CPU): tensors must be on the CPU");
  const int64_t N = a.size(0), C = a.size(1), S = a.size(2);
  at::Tensor out = at::empty({C}, a.options().dtype(at::kFloat));
  const int64_t sa[3] = {a.stride(0), a.stride(1), a.stride(2)};
  const int64_t sd[3] = {d.stride(0), d.stride(1), d.stride(2)};
  const bool spatial_major = S > 1 && sa[2] == 1 && sd[2] == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "channel_contrib_cpu", [&] {
    const auto* ap = a.const_data_ptr<scalar_t>();
    const auto* dp = d.const_data_ptr<scalar_t>();
    if (spatial_major)
      contrib_spatial_major(ap, dp, sa, sd, N, C, S, out.data_ptr<float>());
    else
      contrib_channel_major(ap, dp, sa, sd, N, C, S, out.data_ptr<float>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlkernels, CPU, m) { m.impl("channel_contrib", &channel_contrib_cpu); }

}  // namespace mtlkernels
