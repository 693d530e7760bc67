// Thin CUDA binding of mtlkernels::channel_contrib: validate, launch, sum the per-split partials.
#include <torch/library.h>

#include "../../common/cuda_binding.h"
#include "../../common/tables.h"

namespace mtlkernels {
namespace {

at::Tensor channel_contrib_cuda(const at::Tensor& a, const at::Tensor& d) {
  check_channel_contrib_args(a, d);
  TORCH_CHECK(a.is_cuda(), "channel_contrib (CUDA): tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t N = a.size(0), C = a.size(1), S = a.size(2);
  const int64_t sa[3] = {a.stride(0), a.stride(1), a.stride(2)};
  const int64_t sd[3] = {d.stride(0), d.stride(1), d.stride(2)};
  const bool spatial_major = S > 1 && sa[2] == 1 && sd[2] == 1;
  const int sms = multiprocessor_count(a.device());
  const int splits = cuda::channel_contrib_splits(N, C, S, spatial_major, sms);
  at::Tensor partial = at::empty({splits, C}, a.options().dtype(at::kDouble));
  check_launch(cuda::launch_channel_contrib(a.const_data_ptr(), d.const_data_ptr(),
                                            cuda_dtype(a.scalar_type()), N, C, S, sa, sd,
                                            partial.data_ptr<double>(), splits,
                                            current_stream()),
               "channel_contrib kernel launch");
  // one rounding to float32, of the double sum (overflow decided there, as on every backend)
  return (splits == 1 ? partial.view({C}) : partial.sum(0)).to(at::kFloat);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlkernels, CUDA, m) { m.impl("channel_contrib", &channel_contrib_cuda); }

}  // namespace mtlkernels
