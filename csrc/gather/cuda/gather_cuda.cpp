// Thin CUDA binding of mtlkernels::gather: validate, build the tensor and block tables, launch.
#include <torch/library.h>

#include <cstring>

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
  at::Tensor descs = build_gather_table(xs, idx1, idx2, dim1, dim2, outs);
  const int64_t n = static_cast<int64_t>(xs.size());
  // One host buffer: descriptors, the block prefix (blocks of kGatherBlockElems outputs), and the
  // kernel's error word (zero), so that one copy also clears the flag.
  const int64_t error_word = n * kGatherDescWords + n + 1;
  at::Tensor host = at::empty({error_word + 1}, at::kLong);
  int64_t* h = host.data_ptr<int64_t>();
  std::memcpy(h, descs.data_ptr<int64_t>(), n * kGatherDescWords * sizeof(int64_t));
  int64_t* starts = h + n * kGatherDescWords;
  starts[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    const GatherDesc g = load_gather_desc(h + i * kGatherDescWords);
    const int64_t elems = gather_rows(g) * g.C;
    starts[i + 1] = starts[i] + (elems + cuda::kGatherBlockElems - 1) / cuda::kGatherBlockElems;
  }
  const int64_t blocks = starts[n];
  h[error_word] = 0;
  at::Tensor table = table_to_device(host, xs[0].device());
  int64_t* d = table.data_ptr<int64_t>();
  check_launch(cuda::launch_gather(d, d + n * kGatherDescWords, n, blocks, d + error_word,
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
