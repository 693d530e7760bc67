// C++ CPU kernel of mtlkernels::gather: every tensor of a compaction step in one parallel region.
//
// Each tensor is in the canonical [A, D1, B, D2, C] form of common.h; an output row is a
// contiguous run of C elements. Rows of all tensors form one range that the threads split; the
// copy is typeless (elements of 1, 2, 4 or 8 bytes).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../../common/tables.h"

namespace mtlkernels {
namespace {

// Output rows [r0, r1) of one tensor, in order: the row coordinates advance without a division
// per row (GatherRowCursor), and the element type is fixed for the whole run of rows.
template <typename elem_t>
void copy_rows(const GatherDesc& g, int64_t r0, int64_t r1) {
  const auto* in = reinterpret_cast<const elem_t*>(g.in);
  auto* out = reinterpret_cast<elem_t*>(g.out) + r0 * g.C;
  const int64_t C = g.C;
  GatherRowCursor cur(g, r0);
  for (int64_t r = r0; r < r1; ++r, out += C, cur.next(g)) {
    const elem_t* src = in + cur.in_row(g);
    if (C == 1) {
      *out = *src;
    } else {
      std::memcpy(out, src, C * sizeof(elem_t));
    }
  }
}

void copy_rows_typed(const GatherDesc& g, int64_t r0, int64_t r1) {
  switch (g.elem_size) {
    case 1: copy_rows<uint8_t>(g, r0, r1); break;
    case 2: copy_rows<uint16_t>(g, r0, r1); break;
    case 4: copy_rows<uint32_t>(g, r0, r1); break;
    default: copy_rows<uint64_t>(g, r0, r1); break;
  }
}

std::vector<at::Tensor> gather_cpu(const std::vector<at::Tensor>& xs,
                                   const std::vector<std::optional<at::Tensor>>& idx1,
                                   const std::vector<std::optional<at::Tensor>>& idx2,
                                   at::IntArrayRef dim1, at::IntArrayRef dim2) {
  std::vector<at::Tensor> outs;
  TORCH_CHECK(!xs.empty() && xs[0].device().is_cpu(), "gather (CPU): tensors must be on the CPU");
  // The threads split rows, not the table's blocks: its block map goes unused (block_elems 1).
  at::Tensor table = build_gather_table(xs, idx1, idx2, dim1, dim2, 1, outs);
  const int64_t n = static_cast<int64_t>(xs.size());
  std::vector<GatherDesc> descs(n);
  std::vector<int64_t> starts(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    descs[i] = load_gather_desc(table.data_ptr<int64_t>() + i * kGatherDescWords);
    starts[i + 1] = starts[i] + gather_rows(descs[i]);
  }
  const int64_t total = starts[n];
  // Grain: about 16 KiB of copying per task, whatever the row length.
  int64_t bytes = 0;
  for (const auto& g : descs) bytes += gather_rows(g) * g.C * g.elem_size;
  const int64_t grain = std::max<int64_t>(1, total * 16384 / std::max<int64_t>(bytes, 1));
  at::parallel_for(0, total, grain, [&](int64_t r0, int64_t r1) {
    // the tensors this range of (global) rows covers, each as one run of its local rows
    for (int64_t i = find_segment(starts.data(), n, r0); i < n && starts[i] < r1; ++i) {
      const int64_t lo = std::max(r0, starts[i]), hi = std::min(r1, starts[i + 1]);
      if (lo < hi) copy_rows_typed(descs[i], lo - starts[i], hi - starts[i]);
    }
  });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtlkernels, CPU, m) { m.impl("gather", &gather_cpu); }

}  // namespace mtlkernels
