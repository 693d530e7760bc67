// Torch-side helpers shared by the CPU and CUDA bindings: argument checks, the multi-layer /
// multi-tensor tables of include/mtlkernels/common.h built from tensors, and output allocation.
// The Python wrappers in mtlkernels/ops.py validate with friendly messages first; these
// TORCH_CHECKs are the last line of defence for direct torch.ops calls.
#pragma once

#include <torch/types.h>

#include <vector>

#include "mtlkernels/common.h"

namespace mtlkernels {

// How a filter_stats call passes its gradients (csrc/mtlkernels.cpp): `stacked` = one [T, F_l, ...]
// tensor per layer (task t at base + t * stride(0)), else T tensors per layer, layer-major.
struct FilterStatsForm {
  int num_tasks;
  bool stacked;
};

// Checks weights/grads (every tensor, before any kernel runs), returns the form.
FilterStatsForm check_filter_stats_args(const std::vector<at::Tensor>& weights,
                                        const std::vector<at::Tensor>& grads);

// int64 CPU tensor holding the FilterStatsTable of common.h (with the int32 row -> layer map
// after it when row_map).
at::Tensor build_filter_stats_table(const std::vector<at::Tensor>& weights,
                                    const std::vector<at::Tensor>& grads, FilterStatsForm form,
                                    bool row_map = false);
// torch.ops.mtlkernels._filter_stats_table: the checks, then the table (for the Triton kernels).
at::Tensor filter_stats_table_op(const std::vector<at::Tensor>& weights,
                                 const std::vector<at::Tensor>& grads, bool row_map);

// Allocates dot, gram, wsq, wabs, wg2 (float32, on the weights' device).
std::vector<at::Tensor> alloc_filter_stats(int64_t num_rows, int num_tasks,
                                           const at::TensorOptions& device);

FilterStatsOut filter_stats_out(std::vector<at::Tensor>& outs);

void check_channel_contrib_args(const at::Tensor& a, const at::Tensor& d);

// Checks the gather arguments, allocates the outputs, and returns the int64 CPU gather table of
// common.h (records, block_starts for blocks of block_elems outputs, a zero error word).
at::Tensor build_gather_table(const std::vector<at::Tensor>& xs,
                              const std::vector<std::optional<at::Tensor>>& idx1,
                              const std::vector<std::optional<at::Tensor>>& idx2,
                              at::IntArrayRef dim1, at::IntArrayRef dim2, int64_t block_elems,
                              std::vector<at::Tensor>& outs);
// torch.ops.mtlkernels._gather_table: (table, outputs), for the Triton kernels.
std::tuple<at::Tensor, std::vector<at::Tensor>> gather_table_op(
    const std::vector<at::Tensor>& xs, const std::vector<std::optional<at::Tensor>>& idx1,
    const std::vector<std::optional<at::Tensor>>& idx2, at::IntArrayRef dim1, at::IntArrayRef dim2,
    int64_t block_elems);
// torch.ops.mtlkernels._table_layout: [kGatherDescWords, kGatherDividerWord] for Python.
std::vector<int64_t> table_layout();

}  // namespace mtlkernels
