// Thin CUDA binding of mtlkernels::filter_stats: validate, build the layer table (host), launch.
#include <torch/library.h>

#include "../../common/cuda_binding.h"
#include "../../common/tables.h"

namespace mtlkernels {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> filter_stats_cuda(
    const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& grads) {
  const FilterStatsForm form = check_filter_stats_args(weights, grads);
  const int T = form.num_tasks;
  const auto& w0 = weights[0];
  TORCH_CHECK(w0.is_cuda(), "filter_stats (CUDA): tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(w0.device());
  // The table stays on the host: the launches take it as a kernel parameter (no device copy).
  at::Tensor host = build_filter_stats_table(weights, grads, form);
  const int64_t rows = host.data_ptr<int64_t>()[weights.size()];
  auto outs = alloc_filter_stats(rows, T, w0.options());
  check_launch(cuda::launch_filter_stats(host.data_ptr<int64_t>(), weights.size(), T,
                                         cuda_dtype(w0.scalar_type()), filter_stats_out(outs),
                                         current_stream()),
               "filter_stats kernel launch");
  return {outs[0], outs[1], outs[2], outs[3], outs[4]};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlkernels, CUDA, m) { m.impl("filter_stats", &filter_stats_cuda); }

}  // namespace mtlkernels
