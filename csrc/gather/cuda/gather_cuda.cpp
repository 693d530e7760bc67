// Thin CUDA binding of mtlkernels::gather: validate, build the tensor and block tables, launch.
#include <torch/library.h>

#include "../../common/cuda_binding.h"
#include "../../common/tables.h"

namespace mtlkernels {
namespace {

std::vector<at::Tensor> gather_cuda(const std::vector<at::Tensor>& xs,
                                    const std::vector<std::optional<at::Tensor>>& idx1,
                                    const std::vector<std::optional<at::Tensor>>& idx2,
                                    at::IntArrayRef dim1, at::IntArrayRef dim2) {
  TORCH_CHECK(!xs.empty() && xs[0].is_cuda(), "gather (CUDA): tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(xs[0].device());
  std::vector<at::Tensor> outs;
  // One host buffer (common.h): records, block map, zero error word: one copy also clears the flag.
  at::Tensor host = build_gather_table(xs, idx1, idx2, dim1, dim2, cuda::kGatherBlockElems, outs);
  const int64_t n = static_cast<int64_t>(xs.size());
  const int64_t blocks = host.data_ptr<int64_t>()[gather_error_word(n) - 1];  // block_starts[n]
  at::Tensor table = table_to_device(host, xs[0].device());
  const int64_t error_word = gather_error_word(n);
  int64_t* d = table.data_ptr<int64_t>();
  check_launch(cuda::launch_gather(d, d + gather_block_starts_word(n), n, blocks, d + error_word,
                                   current_stream()),
               "gather kernel launch");
  // The read-back waits for the kernel (a sync per call): a bad index must raise, and only the
  // device knows the index values. Compaction steps are rare enough to afford it.
  const int64_t bad = table[error_word].item<int64_t>();
  TORCH_CHECK(bad == 0, "gather: an index of xs[", bad - 1, "] (idx1[", bad - 1, "] or idx2[",
              bad - 1, "]) is out of range for its dim");
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlkernels, CUDA, m) { m.impl("gather", &gather_cuda); }

}  // namespace mtlkernels
