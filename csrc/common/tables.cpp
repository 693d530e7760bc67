#include "tables.h"

#include <c10/util/SmallVector.h>

#include <algorithm>
#include <tuple>
#include <utility>

namespace mtlkernels {

namespace {
bool kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}
int64_t addr(const at::Tensor& t) { return reinterpret_cast<int64_t>(t.data_ptr()); }

// Index values on the CPU are checked here, before any copy (n1 + n2 reads per tensor: nothing
// next to the copy); CUDA index values are checked by the kernel (an error word, gather_cuda.cpp).
void check_cpu_index_values(const at::Tensor& t, int64_t size, int64_t i, int s, int64_t dim) {
  const int64_t* v = t.const_data_ptr<int64_t>();
  for (int64_t j = 0; j < t.numel(); ++j)
    TORCH_CHECK(static_cast<uint64_t>(v[j]) < static_cast<uint64_t>(size), "gather: idx", s + 1,
                "[", i, "][", j, "] = ", v[j], " is out of range for dim ", dim, " of xs[", i,
                "] (size ", size, ")");
}
}  // namespace

namespace {
// Row f of a tensor with dense rows is the K elements at data + f * K, in an order its strides fix:
// dims 1.. tile K densely in any permutation (contiguous, channels_last, ...) and dim 0 steps by K.
// The statistics are sums within a row, so any order works as long as W and every G_t share it
// (same_layout): then the kernels read rows at f * K without a .contiguous() copy.
bool rows_dense(at::IntArrayRef size, at::IntArrayRef stride) {
  int64_t K = 1;
  c10::SmallVector<std::pair<int64_t, int64_t>, 8> dims;  // (stride, size) of dims 1.. of size > 1
  for (size_t d = 1; d < size.size(); ++d) {
    K *= size[d];
    if (size[d] != 1) dims.emplace_back(stride[d], size[d]);
  }
  if (size[0] > 1 && stride[0] != K) return false;
  std::sort(dims.begin(), dims.end());
  int64_t expect = 1;
  for (const auto& [st, sz] : dims) {
    if (st != expect) return false;
    expect *= sz;
  }
  return true;
}

// Same element order: equal strides wherever the size is > 1 (a size-1 dim's stride is never used).
bool same_layout(at::IntArrayRef size, at::IntArrayRef a, at::IntArrayRef b) {
  for (size_t d = 0; d < size.size(); ++d)
    if (size[d] != 1 && a[d] != b[d]) return false;
  return true;
}

// Task gradient k of weights[l]: g itself (per-task form) or g[t] of a stacked g (sizes and
// strides after its task dim).
void check_grad(const at::Tensor& w, int64_t l, const at::Tensor& g, int64_t k, bool stacked,
                const at::Tensor& w0) {
  const at::IntArrayRef size = stacked ? g.sizes().slice(1) : g.sizes();
  const at::IntArrayRef stride = stacked ? g.strides().slice(1) : g.strides();
  TORCH_CHECK(size == w.sizes(), "filter_stats: grads[", k, "] must have the shape of weights[", l,
              "] ", w.sizes(), stacked ? " after its task dim" : "", ", got ", g.sizes());
  TORCH_CHECK(same_layout(size, stride, w.strides()), "filter_stats: grads[", k,
              "] must have the strides of weights[", l, "] ", w.strides(),
              stacked ? " after its task dim" : "", " (same element order), got ", g.strides());
  TORCH_CHECK(g.scalar_type() == w0.scalar_type() && g.device() == w0.device(),
              "filter_stats: grads[", k, "] differs in dtype or device from weights[0]");
}

void check_layer(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& grads,
                 int64_t l, FilterStatsForm form) {
  const auto& w0 = weights[0];
  const auto& w = weights[l];
  const int T = form.num_tasks;
  TORCH_CHECK(w.dim() >= 1 && w.numel() > 0, "filter_stats: weights[", l, "] is empty");
  TORCH_CHECK(w.scalar_type() == w0.scalar_type() && w.device() == w0.device(),
              "filter_stats: weights[", l, "] differs in dtype or device from weights[0]");
  TORCH_CHECK(rows_dense(w.sizes(), w.strides()), "filter_stats: weights[", l,
              "] must have dense rows (contiguous, channels_last, or any layout whose row f is the K "
              "elements at f * K), got sizes ", w.sizes(), " and strides ", w.strides());
  if (form.stacked) {
    const auto& g = grads[l];
    TORCH_CHECK(g.dim() == w.dim() + 1 && g.size(0) == T, "filter_stats: grads[", l,
                "] must be a [T=", T, ", ...] stack of weights[", l, "]'s task gradients, got ",
                g.sizes());
    check_grad(w, l, g, l, true, w0);
  } else {
    for (int t = 0; t < T; ++t) check_grad(w, l, grads[l * T + t], l * T + t, false, w0);
  }
}
}  // namespace

FilterStatsForm check_filter_stats_args(const std::vector<at::Tensor>& weights,
                                        const std::vector<at::Tensor>& grads) {
  const int64_t L = static_cast<int64_t>(weights.size());
  TORCH_CHECK(L > 0, "filter_stats: weights is empty");
  const int64_t n = static_cast<int64_t>(grads.size());
  TORCH_CHECK(n > 0 && n % L == 0, "filter_stats: grads must hold one [T, ...] stack or T tensors "
              "per weight (layer-major), got ", n, " grads for ", L, " weights");
  // Stacked when each layer has one tensor with a task dim in front; an unstacked call with T=1
  // has grads shaped like the weights, so the two forms never look alike.
  const bool stacked = n == L && grads[0].dim() == weights[0].dim() + 1;
  const int64_t T = stacked ? grads[0].size(0) : n / L;
  TORCH_CHECK(T >= 1 && T <= kMaxTasks, "filter_stats: T must be in 1..", kMaxTasks, ", got ", T);
  const FilterStatsForm form{static_cast<int>(T), stacked};
  TORCH_CHECK(kernel_dtype(weights[0].scalar_type()),
              "filter_stats: dtype must be float32, float16 or bfloat16, got ",
              weights[0].scalar_type());
  for (int64_t l = 0; l < L; ++l) check_layer(weights, grads, l, form);
  return form;
}

at::Tensor build_filter_stats_table(const std::vector<at::Tensor>& weights,
                                    const std::vector<at::Tensor>& grads, FilterStatsForm form,
                                    bool row_map) {
  const int64_t L = static_cast<int64_t>(weights.size());
  const int T = form.num_tasks;
  int64_t F = 0;
  for (const auto& w : weights) F += w.size(0);
  at::Tensor table = at::empty(
      {row_map ? filter_stats_table_size(L, T, F) : filter_stats_table_size(L, T)}, at::kLong);
  int64_t* d = table.data_ptr<int64_t>();
  d[0] = 0;
  for (int64_t l = 0; l < L; ++l) {
    const auto& w = weights[l];
    d[l + 1] = d[l] + w.size(0);
    d[L + 1 + l] = w.numel() / w.size(0);
    d[2 * L + 1 + l] = addr(w);
    int64_t* g = d + 3 * L + 1 + l * T;
    if (form.stacked) {  // task t of a stack: base + t * stride(0) elements
      const int64_t step = grads[l].stride(0) * grads[l].element_size();
      for (int t = 0; t < T; ++t) g[t] = addr(grads[l]) + t * step;
    } else {
      for (int t = 0; t < T; ++t) g[t] = addr(grads[l * T + t]);
    }
  }
  if (row_map) {
    int32_t* m = reinterpret_cast<int32_t*>(d + filter_stats_table_size(L, T));
    if (F % 2) m[F] = 0;  // the pad of an odd count: no uninitialised bytes in the table
    for (int64_t l = 0; l < L; ++l) std::fill(m + d[l], m + d[l + 1], static_cast<int32_t>(l));
  }
  return table;
}

at::Tensor filter_stats_table_op(const std::vector<at::Tensor>& weights,
                                 const std::vector<at::Tensor>& grads, bool row_map) {
  const FilterStatsForm form = check_filter_stats_args(weights, grads);
  TORCH_CHECK(!row_map || weights.size() < (size_t{1} << 31), "filter_stats: too many layers");
  return build_filter_stats_table(weights, grads, form, row_map);
}

std::vector<at::Tensor> alloc_filter_stats(int64_t F, int T, const at::TensorOptions& opts) {
  const auto o = opts.dtype(at::kFloat);
  return {at::empty({F, T}, o), at::empty({F, T, T}, o), at::empty({F}, o), at::empty({F}, o),
          at::empty({F, T, T}, o)};
}

FilterStatsOut filter_stats_out(std::vector<at::Tensor>& o) {
  return FilterStatsOut{o[0].data_ptr<float>(), o[1].data_ptr<float>(), o[2].data_ptr<float>(),
                        o[3].data_ptr<float>(), o[4].data_ptr<float>()};
}

void check_channel_contrib_args(const at::Tensor& a, const at::Tensor& d) {
  TORCH_CHECK(a.dim() == 3 && d.dim() == 3, "channel_contrib: expects [N, C, S] views, got activation ",
              a.sizes(), " and grad ", d.sizes());
  TORCH_CHECK(a.sizes() == d.sizes(), "channel_contrib: shapes differ: activation ", a.sizes(),
              " vs grad ", d.sizes());
  TORCH_CHECK(kernel_dtype(a.scalar_type()) && a.scalar_type() == d.scalar_type(),
              "channel_contrib: activation and grad must both be float32, float16 or bfloat16, got ",
              a.scalar_type(), " and ", d.scalar_type());
  TORCH_CHECK(a.device() == d.device(), "channel_contrib: activation is on ", a.device(),
              " but grad on ", d.device());
  TORCH_CHECK(a.numel() > 0, "channel_contrib: empty input");
}

namespace {
// Checks one tensor's arguments (before anything is allocated: a bad call raises first).
void check_gather_tensor(const std::vector<at::Tensor>& xs,
                         const std::vector<std::optional<at::Tensor>>& idx1,
                         const std::vector<std::optional<at::Tensor>>& idx2, at::IntArrayRef dim1,
                         at::IntArrayRef dim2, int64_t i) {
  const auto& x = xs[i];
  TORCH_CHECK(x.is_contiguous(), "gather: xs[", i, "] must be contiguous");
  TORCH_CHECK(x.device() == xs[0].device(), "gather: xs[", i, "] is on another device");
  const int64_t es = x.element_size();
  TORCH_CHECK(es == 1 || es == 2 || es == 4 || es == 8, "gather: xs[", i,
              "] has an element size of ", es, " bytes (1, 2, 4 or 8 supported)");
  const std::optional<at::Tensor>* ix[2] = {&idx1[i], &idx2[i]};
  const int64_t dm[2] = {dim1[i], dim2[i]};
  for (int s = 0; s < 2; ++s) {
    if (!ix[s]->has_value()) continue;
    const auto& t = ix[s]->value();
    TORCH_CHECK(dm[s] >= 0 && dm[s] < x.dim(), "gather: dim ", dm[s], " of idx", s + 1, "[", i,
                "] is out of range for xs[", i, "] with ", x.dim(), " dims");
    TORCH_CHECK(t.scalar_type() == at::kLong && t.dim() == 1 && t.is_contiguous(), "gather: idx",
                s + 1, "[", i, "] must be a contiguous 1-D int64 tensor, got ", t.scalar_type(),
                " of shape ", t.sizes());
    TORCH_CHECK(t.device() == x.device(), "gather: idx", s + 1, "[", i, "] is on ", t.device(),
                " but xs[", i, "] on ", x.device());
    if (t.is_cpu()) check_cpu_index_values(t, x.size(dm[s]), i, s, dm[s]);
  }
  TORCH_CHECK(!(ix[0]->has_value() && ix[1]->has_value() && dm[0] == dm[1]),
              "gather: dim1 == dim2 for xs[", i, "]");
}

// The canonical [A, D1, B, D2, C] form of xs[i] (common.h) and its output shape: the one place
// either is computed for a real call (the fakes only need the shape: _rawcheck.gather_out_shape).
GatherDesc canonical_gather(const at::Tensor& x, const std::optional<at::Tensor>& i1,
                            const std::optional<at::Tensor>& i2, int64_t d1, int64_t d2,
                            std::vector<int64_t>& out_shape) {
  // Order the two selected dims; an absent index becomes a size-1 dummy dim.
  int64_t lo = i1.has_value() ? d1 : -1, hi = i2.has_value() ? d2 : -1;
  const at::Tensor* ilo = i1.has_value() ? &i1.value() : nullptr;
  const at::Tensor* ihi = i2.has_value() ? &i2.value() : nullptr;
  if (lo >= 0 && hi >= 0 && lo > hi) { std::swap(lo, hi); std::swap(ilo, ihi); }
  if (lo < 0) { lo = hi; ilo = ihi; hi = -1; ihi = nullptr; }  // only one (or no) index
  auto prod = [&](int64_t a, int64_t b) {
    int64_t p = 1;
    for (int64_t k = a; k < b; ++k) p *= x.size(k);
    return p;
  };
  GatherDesc g{};
  if (lo < 0) {  // plain copy
    g.A = 1; g.D1 = 1; g.B = 1; g.D2 = 1; g.C = x.numel();
  } else if (hi < 0) {
    g.A = prod(0, lo); g.D1 = x.size(lo); g.B = 1; g.D2 = 1; g.C = prod(lo + 1, x.dim());
  } else {
    g.A = prod(0, lo); g.D1 = x.size(lo); g.B = prod(lo + 1, hi); g.D2 = x.size(hi);
    g.C = prod(hi + 1, x.dim());
  }
  g.n1 = ilo ? ilo->numel() : g.D1;
  g.n2 = ihi ? ihi->numel() : g.D2;
  g.idx1 = ilo ? addr(*ilo) : 0;
  g.idx2 = ihi ? addr(*ihi) : 0;
  out_shape.assign(x.sizes().begin(), x.sizes().end());
  if (ilo) out_shape[lo] = g.n1;
  if (ihi) out_shape[hi] = g.n2;
  g.in = addr(x);
  g.elem_size = x.element_size();
  return g;
}
}  // namespace

at::Tensor build_gather_table(const std::vector<at::Tensor>& xs,
                              const std::vector<std::optional<at::Tensor>>& idx1,
                              const std::vector<std::optional<at::Tensor>>& idx2,
                              at::IntArrayRef dim1, at::IntArrayRef dim2, int64_t block_elems,
                              std::vector<at::Tensor>& outs) {
  const int64_t n = static_cast<int64_t>(xs.size());
  TORCH_CHECK(n > 0, "gather: xs is empty");
  TORCH_CHECK(static_cast<int64_t>(idx1.size()) == n && static_cast<int64_t>(idx2.size()) == n &&
                  static_cast<int64_t>(dim1.size()) == n && static_cast<int64_t>(dim2.size()) == n,
              "gather: idx1, idx2, dim1, dim2 must have one entry per tensor");
  TORCH_CHECK(block_elems >= 1, "gather: block_elems must be >= 1, got ", block_elems);
  for (int64_t i = 0; i < n; ++i) check_gather_tensor(xs, idx1, idx2, dim1, dim2, i);
  at::Tensor table = at::empty({gather_table_size(n)}, at::kLong);
  int64_t* w = table.data_ptr<int64_t>();
  int64_t* starts = w + gather_block_starts_word(n);
  starts[0] = 0;
  outs.clear();
  std::vector<int64_t> out_shape;
  for (int64_t i = 0; i < n; ++i) {
    GatherDesc g = canonical_gather(xs[i], idx1[i], idx2[i], dim1[i], dim2[i], out_shape);
    at::Tensor out = at::empty(out_shape, xs[i].options());
    g.out = addr(out);
    store_gather_desc(g, w + i * kGatherDescWords);
    starts[i + 1] = starts[i] + (gather_rows(g) * g.C + block_elems - 1) / block_elems;
    outs.push_back(out);
  }
  w[gather_error_word(n)] = 0;
  return table;
}

std::tuple<at::Tensor, std::vector<at::Tensor>> gather_table_op(
    const std::vector<at::Tensor>& xs, const std::vector<std::optional<at::Tensor>>& idx1,
    const std::vector<std::optional<at::Tensor>>& idx2, at::IntArrayRef dim1, at::IntArrayRef dim2,
    int64_t block_elems) {
  std::vector<at::Tensor> outs;
  at::Tensor table = build_gather_table(xs, idx1, idx2, dim1, dim2, block_elems, outs);
  return {table, outs};
}

std::vector<int64_t> table_layout() { return {kGatherDescWords, kGatherDividerWord}; }

}  // namespace mtlkernels
