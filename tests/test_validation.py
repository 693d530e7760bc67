"""Input validation of the public ops API (mtlkernels.ops): one test per error it raises.

Every error must name the offending argument and be raised before any kernel runs. The "meta"
device stands in for a second device (there may be no GPU).
"""
from __future__ import annotations

import warnings

import pytest
import torch

with warnings.catch_warnings():  # the compiled extension may be missing: the reference suffices
    warnings.simplefilter("ignore", RuntimeWarning)
    import mtlkernels
    from mtlkernels import reference
    from mtlkernels.ops import (
        MAX_TASKS,
        channel_contrib,
        filter_stats,
        filter_stats_many,
        gather_channels,
        gather_many,
    )


def _wg(f=4, k=(3, 2), t=2, dtype=torch.float32):
    return torch.randn((f,) + k, dtype=dtype), torch.randn((t, f) + k, dtype=dtype)


def _act(dtype=torch.float32):
    return torch.randn(2, 3, 4, dtype=dtype), torch.randn(2, 3, 4, dtype=dtype)


# ====================================================================================== filter_stats
class TestFilterStats:
    def test_weight_not_tensor(self):
        w, g = _wg()
        with pytest.raises(TypeError, match=r"weight must be a torch\.Tensor, got ndarray"):
            filter_stats(w.numpy(), g)

    def test_grads_wrong_type(self):
        w, g = _wg()
        with pytest.raises(TypeError, match=r"grads must be a tensor \[T, \.\.\.\] or a list.*ndarray"):
            filter_stats(w, g.numpy())
        with pytest.raises(TypeError, match="grads must be a tensor.*dict"):
            filter_stats(w, {"task": g[0]})

    def test_grads_list_entry_not_tensor(self):
        w, g = _wg()
        with pytest.raises(TypeError, match=r"grads\[1\] must be a torch\.Tensor, got str"):
            filter_stats(w, [g[0], "g1"])

    def test_grads_stacked_wrong_shape(self):
        w, g = _wg()
        with pytest.raises(ValueError, match=r"grads must be \[T, 4, 3, 2\].*got \[2, 4, 3, 3\]"):
            filter_stats(w, torch.randn(2, 4, 3, 3))
        with pytest.raises(ValueError, match=r"grads must be \[T, 4, 3, 2\]"):
            filter_stats(w, g[0])  # missing the task dim

    def test_grads_list_wrong_shape(self):
        w, g = _wg()
        with pytest.raises(ValueError, match=r"grads\[1\] must have the weight's shape \[4, 3, 2\], got \[4, 6\]"):
            filter_stats(w, [g[0], g[1].reshape(4, 6)])

    @pytest.mark.parametrize("t", [0, MAX_TASKS + 1])
    def test_num_tasks_out_of_range(self, t):
        w, _ = _wg()
        with pytest.raises(ValueError, match=rf"number of tasks T must be in 1\.\.{MAX_TASKS}, got T={t} in grads"):
            filter_stats(w, torch.randn((t,) + tuple(w.shape)))

    def test_empty_grads_list(self):
        w, _ = _wg()
        with pytest.raises(ValueError, match="T=0 in grads"):
            filter_stats(w, [])

    def test_max_tasks_accepted(self):
        w, _ = _wg(f=2, k=(3,))
        s = filter_stats(w, torch.randn(MAX_TASKS, 2, 3), backend="reference")
        assert s.dot.shape == (2, MAX_TASKS)

    @pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
    def test_weight_not_floating(self, dtype):
        w, g = _wg()
        with pytest.raises(TypeError, match=r"weight must have a floating dtype \(float32.*got torch\."):
            filter_stats(w.to(dtype), g.to(dtype))

    def test_int_grads(self):
        w, g = _wg()
        with pytest.raises(TypeError, match=r"one dtype: weight is torch\.float32, grads\[0\] is torch\.int64"):
            filter_stats(w, g.long())

    def test_mixed_dtypes(self):
        w, g = _wg()
        with pytest.raises(TypeError, match=r"one dtype: weight is torch\.float32, grads\[1\] is torch\.float64"):
            filter_stats(w, [g[0], g[1].double()])

    def test_mixed_devices(self):
        w, g = _wg()
        with pytest.raises(ValueError, match=r"one device: weight is on cpu, grads\[0\] on meta"):
            filter_stats(w, g.to("meta"))
        with pytest.raises(ValueError, match=r"one device: weight is on meta, grads\[0\] on cpu"):
            filter_stats(w.to("meta"), g)

    def test_empty_weight(self):
        with pytest.raises(ValueError, match=r"weight must be a non-empty \[F, \.\.\.\] tensor, got shape \[0, 3\]"):
            filter_stats(torch.randn(0, 3), torch.randn(2, 0, 3))
        with pytest.raises(ValueError, match=r"weight must be a non-empty.*got shape \[\]"):
            filter_stats(torch.tensor(1.0), torch.randn(2))

    def test_unknown_backend(self):
        w, g = _wg()
        with pytest.raises(ValueError, match="backend must be 'auto' or one of.*got 'gpu'"):
            filter_stats(w, g, backend="gpu")
        with pytest.raises(TypeError, match="backend must be a string, got NoneType"):
            filter_stats(w, g, backend=None)

    def test_unavailable_backend(self):
        w, g = _wg()
        with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable: .*takes CUDA tensors, got tensors on cpu"):
            filter_stats(w, g, backend="cuda")

    def test_float64_needs_reference_backend(self):
        w, g = _wg(dtype=torch.float64)
        with pytest.raises(RuntimeError, match="backend 'cuda' cannot run torch.float64 inputs.*'reference' backend only"):
            filter_stats(w, g, backend="cuda")
        assert filter_stats(w, g).dot.dtype == torch.float64  # auto -> reference


# ================================================================================= filter_stats_many
class TestFilterStatsMany:
    def test_weights_not_list(self):
        w, g = _wg()
        with pytest.raises(TypeError, match="weights must be a list of tensors"):
            filter_stats_many(w, [g])

    def test_grads_not_list(self):
        w, g = _wg()
        with pytest.raises(TypeError, match="grads must be a list with one entry per layer, got Tensor"):
            filter_stats_many([w], g)

    def test_weights_empty(self):
        with pytest.raises(ValueError, match="weights is empty"):
            filter_stats_many([], [])

    def test_grads_length(self):
        w, g = _wg()
        with pytest.raises(ValueError, match="grads must have one entry per weight: 2 weights, 1 grads"):
            filter_stats_many([w, w], [g])

    def test_names_length(self):
        w, g = _wg()
        with pytest.raises(ValueError, match="names must have one entry per weight: 2 weights, 1 names"):
            filter_stats_many([w, w], [g, g], names=["conv1"])

    def test_weight_entry_not_tensor(self):
        w, g = _wg()
        with pytest.raises(TypeError, match=r"weights\[1\] must be a torch\.Tensor, got str"):
            filter_stats_many([w, "conv2"], [g, g])

    def test_weight_entry_int(self):
        w, g = _wg()
        with pytest.raises(TypeError, match=r"weights\[1\] must have a floating dtype.*int64"):
            filter_stats_many([w, w.long()], [g, g])

    def test_weight_entry_empty(self):
        w, g = _wg()
        with pytest.raises(ValueError, match=r"weights\[1\] must be a non-empty"):
            filter_stats_many([w, torch.randn(0, 2)], [g, torch.randn(2, 0, 2)])

    def test_grads_entry_shape(self):
        w, g = _wg()
        with pytest.raises(ValueError, match=r"grads\[1\] must be \[T, 5, 2\]"):
            filter_stats_many([w, torch.randn(5, 2)], [g, torch.randn(2, 5, 3)])
        with pytest.raises(ValueError, match=r"grads\[1\]\[0\] must have the weight's shape \[5, 2\]"):
            filter_stats_many([w, torch.randn(5, 2)], [g, [torch.randn(2, 5), torch.randn(5, 2)]])

    def test_mismatched_num_tasks(self):
        w, g = _wg()
        with pytest.raises(ValueError, match=r"grads\[1\] has T=3 task gradients, but grads\[0\] has T=2"):
            filter_stats_many([w, torch.randn(5, 2)], [g, torch.randn(3, 5, 2)])

    def test_num_tasks_out_of_range(self):
        w, _ = _wg()
        with pytest.raises(ValueError, match=r"T=17 in grads\[0\]"):
            filter_stats_many([w], [torch.randn((17,) + tuple(w.shape))])

    def test_mixed_dtypes_across_layers(self):
        w, g = _wg()
        with pytest.raises(TypeError, match=r"weights\[0\] is torch\.float32, weights\[1\] is torch\.float64"):
            filter_stats_many([w, torch.randn(5, 2, dtype=torch.float64)], [g, torch.randn(2, 5, 2, dtype=torch.float64)])
        with pytest.raises(TypeError, match=r"weights\[0\] is torch\.float32, grads\[1\]\[0\] is torch\.float16"):
            filter_stats_many([w, torch.randn(5, 2)], [g, torch.randn(2, 5, 2).half()])

    def test_mixed_devices_across_layers(self):
        w, g = _wg()
        with pytest.raises(ValueError, match=r"weights\[0\] is on cpu, weights\[1\] on meta"):
            filter_stats_many([w, torch.randn(5, 2, device="meta")], [g, torch.randn(2, 5, 2, device="meta")])
        with pytest.raises(ValueError, match=r"weights\[0\] is on cpu, grads\[1\]\[1\] on meta"):
            filter_stats_many([w, torch.randn(5, 2)], [g, [torch.randn(5, 2), torch.randn(5, 2, device="meta")]])

    def test_unknown_and_unavailable_backend(self):
        w, g = _wg()
        with pytest.raises(ValueError, match="backend must be 'auto'"):
            filter_stats_many([w], [g], backend="fast")
        with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable"):
            filter_stats_many([w], [g], backend="cuda")


# ==================================================================================== channel_contrib
class TestChannelContrib:
    def test_activation_not_tensor(self):
        a, d = _act()
        with pytest.raises(TypeError, match=r"activation must be a torch\.Tensor, got ndarray"):
            channel_contrib(a.numpy(), d)

    def test_grad_not_tensor(self):
        a, _ = _act()
        with pytest.raises(TypeError, match=r"grad must be a torch\.Tensor, got int"):
            channel_contrib(a, 1)

    def test_activation_int(self):
        a, d = _act()
        with pytest.raises(TypeError, match="activation must have a floating dtype.*int64"):
            channel_contrib(a.long(), d)

    def test_grad_int(self):
        a, d = _act()
        with pytest.raises(TypeError, match="grad must have a floating dtype.*int32"):
            channel_contrib(a, d.int())

    def test_mixed_dtypes(self):
        a, d = _act()
        with pytest.raises(TypeError, match=r"activation is torch\.float32, grad is torch\.float64"):
            channel_contrib(a, d.double())

    def test_mixed_devices(self):
        a, d = _act()
        with pytest.raises(ValueError, match="activation is on cpu, grad on meta"):
            channel_contrib(a, d.to("meta"))

    def test_shape_mismatch(self):
        a, _ = _act()
        with pytest.raises(ValueError, match=r"grad must have the activation's shape \[2, 3, 4\], got \[2, 3, 5\]"):
            channel_contrib(a, torch.randn(2, 3, 5))

    def test_too_few_dims(self):
        with pytest.raises(ValueError, match=r"activation must be \[N, C, \*\], got shape \[3\]"):
            channel_contrib(torch.randn(3), torch.randn(3))

    def test_empty(self):
        with pytest.raises(ValueError, match=r"activation is empty \(shape \[0, 3, 4\]\)"):
            channel_contrib(torch.randn(0, 3, 4), torch.randn(0, 3, 4))

    def test_backends(self):
        a, d = _act()
        with pytest.raises(ValueError, match="backend must be 'auto'.*got 'bogus'"):
            channel_contrib(a, d, backend="bogus")
        with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable: .*got tensors on cpu"):
            channel_contrib(a, d, backend="cuda")
        with pytest.raises(RuntimeError, match="backend 'cuda' cannot run torch.float64"):
            channel_contrib(a.double(), d.double(), backend="cuda")


# ===================================================================================== gather_channels
class TestGatherChannels:
    x = torch.randn(4, 3, 2)

    def test_x_not_tensor(self):
        with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
            gather_channels([[1.0, 2.0]], [0])

    def test_x_empty(self):
        with pytest.raises(ValueError, match=r"x is empty \(shape \[0, 3\]\)"):
            gather_channels(torch.randn(0, 3), [0])

    @pytest.mark.parametrize("idx", [torch.tensor([0.0, 1.0]), [0.5], torch.tensor([True, False, True, False])])
    def test_non_integer_index(self, idx):
        with pytest.raises(TypeError, match="out_idx must be an integer index tensor"):
            gather_channels(self.x, idx)

    def test_non_integer_in_index(self):
        with pytest.raises(TypeError, match="in_idx must be an integer index tensor, got torch.float32"):
            gather_channels(self.x, None, torch.tensor([1.0]))

    def test_2d_index(self):
        with pytest.raises(ValueError, match=r"out_idx must be 1-D, got shape \[1, 2\]"):
            gather_channels(self.x, torch.tensor([[0, 1]]))
        with pytest.raises(ValueError, match=r"in_idx must be 1-D, got shape \[\]"):
            gather_channels(self.x, None, torch.tensor(1))

    @pytest.mark.parametrize("idx,lo,hi", [([0, 4], 0, 4), ([-1, 2], -1, 2)])
    def test_out_of_range_index(self, idx, lo, hi):
        with pytest.raises(ValueError, match=rf"out_idx holds indices in \[{lo}, {hi}\], out of range for dim 0 of size 4"):
            gather_channels(self.x, idx)

    def test_out_of_range_in_index(self):
        with pytest.raises(ValueError, match=r"in_idx holds indices in \[0, 3\], out of range for dim 1 of size 3"):
            gather_channels(self.x, None, [0, 3])

    def test_repeated_index(self):
        with pytest.raises(ValueError, match="out_idx has repeated indices"):
            gather_channels(self.x, [1, 2, 1])

    @pytest.mark.parametrize("idx", [[], torch.tensor([], dtype=torch.long)])
    def test_empty_index(self, idx):
        with pytest.raises(ValueError, match="out_idx is empty"):
            gather_channels(self.x, idx)

    def test_index_on_other_device(self):
        with pytest.raises(ValueError, match="out_idx is on meta but its tensor is on cpu"):
            gather_channels(self.x, torch.tensor([0], device="meta"))

    def test_same_out_and_in_dim(self):
        with pytest.raises(ValueError, match="out_dim and in_dim are both 0"):
            gather_channels(self.x, [0], [1], out_dim=0, in_dim=0)
        with pytest.raises(ValueError, match="out_dim and in_dim are both 2"):
            gather_channels(self.x, [0], [1], out_dim=-1, in_dim=2)  # same dim after wrapping

    def test_dim_not_int(self):
        with pytest.raises(TypeError, match="out_dim must be an int, got float"):
            gather_channels(self.x, [0], out_dim=0.0)

    def test_dim_out_of_range(self):
        with pytest.raises(ValueError, match="in_dim=3 is out of range for x with 3 dims"):
            gather_channels(self.x, [0], [0], in_dim=3)

    def test_backends(self):
        with pytest.raises(ValueError, match="backend must be 'auto'.*got 'bogus'"):
            gather_channels(self.x, [0], backend="bogus")
        with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable: .*got tensors on cpu"):
            gather_channels(self.x, [0], backend="cuda")


# ======================================================================================== gather_many
class TestGatherMany:
    x = torch.randn(4, 3)

    def test_tensors_not_list(self):
        with pytest.raises(TypeError, match="tensors must be a list of tensors"):
            gather_many(self.x, [0])

    def test_tensors_empty(self):
        with pytest.raises(ValueError, match="tensors is empty"):
            gather_many([], None)

    def test_entry_not_tensor(self):
        with pytest.raises(TypeError, match=r"tensors\[1\] must be a torch\.Tensor, got str"):
            gather_many([self.x, "b"], torch.tensor([0]))

    def test_entry_empty(self):
        with pytest.raises(ValueError, match=r"tensors\[1\] is empty"):
            gather_many([self.x, torch.randn(3, 0)], torch.tensor([0]))

    @pytest.mark.parametrize("arg", ["out_idx", "in_idx", "out_dims", "in_dims"])
    def test_per_tensor_length(self, arg):
        value = [0, 1, 0] if arg.endswith("dims") else [torch.tensor([0])] * 3
        with pytest.raises(ValueError, match=f"{arg} must have one entry per tensor: 2 tensors, 3 entries"):
            gather_many([self.x, self.x], **{arg: value})

    def test_entry_index_errors_name_the_entry(self):
        with pytest.raises(ValueError, match=r"out_idx\[1\] holds indices in \[0, 5\]"):
            gather_many([self.x, self.x], [torch.tensor([0]), torch.tensor([0, 5])])
        with pytest.raises(ValueError, match=r"in_idx\[0\] has repeated indices"):
            gather_many([self.x, self.x], None, [torch.tensor([0, 0]), None])
        with pytest.raises(ValueError, match=r"out_dims\[1\] and in_dims\[1\] are both 1"):
            gather_many([self.x, self.x], torch.tensor([0]), torch.tensor([1]), out_dims=[0, 1])

    def test_mixed_devices(self):
        m = torch.randn(4, 3, device="meta")
        with pytest.raises(ValueError, match=r"one device: tensors\[0\] is on cpu, tensors\[1\] on meta"):
            gather_many([self.x, m], None)
        # also when every tensor has its own index (the device check comes before index values)
        with pytest.raises(ValueError, match=r"one device: tensors\[0\] is on cpu, tensors\[1\] on meta"):
            gather_many([self.x, m], [torch.tensor([0]), torch.tensor([0], device="meta")])

    def test_backends(self):
        with pytest.raises(ValueError, match="backend must be 'auto'"):
            gather_many([self.x], torch.tensor([0]), backend="bogus")
        with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable"):
            gather_many([self.x], torch.tensor([0]), backend="cuda")


# ========================================================================= results and ordering
def test_per_layer_matches_single_layer_calls():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 2, 3, 3), (5, 4), (2,)]
    ws = [torch.randn(s, generator=g) for s in shapes]
    gs = [torch.randn((3,) + s, generator=g) for s in shapes]
    many = filter_stats_many(ws, gs, backend="reference", names=["conv", "fc", "bn"])
    assert many.offsets == (0, 3, 8, 10) and many.num_layers == 3 and many.num_filters == 10
    layers = many.per_layer()
    assert [p.names for p in layers] == [("conv",), ("fc",), ("bn",)]
    for part, w, gl in zip(layers, ws, gs):
        single = filter_stats(w, list(gl.unbind(0)), backend="reference")
        assert part.offsets == single.offsets == (0, w.shape[0])
        for a, b in zip(part.tensors(), single.tensors()):
            torch.testing.assert_close(a, b)


@pytest.fixture
def kernels_forbidden(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a kernel ran before validation finished")

    for name in ("filter_stats", "channel_contrib", "gather"):
        monkeypatch.setattr(reference, name, boom)


def test_validation_runs_before_any_kernel(kernels_forbidden):
    w, g = _wg()
    a, d = _act()
    # the patched kernels are the ones the API would run ...
    with pytest.raises(AssertionError, match="kernel ran"):
        filter_stats(w, g, backend="reference")
    with pytest.raises(AssertionError, match="kernel ran"):
        channel_contrib(a, d, backend="reference")
    with pytest.raises(AssertionError, match="kernel ran"):
        gather_channels(w, [0], backend="reference")
    # ... yet every invalid call fails with its validation error instead
    with pytest.raises(ValueError, match=r"grads\[1\] has T=3"):
        filter_stats_many([w, torch.randn(5, 2)], [g, torch.randn(3, 5, 2)], backend="reference")
    with pytest.raises(TypeError, match="grads.*float64"):
        filter_stats(w, g.double(), backend="reference")
    with pytest.raises(ValueError, match="backend must be 'auto'"):
        filter_stats(w, g, backend="bogus")
    with pytest.raises(ValueError, match="grad must have the activation's shape"):
        channel_contrib(a, d[:1], backend="reference")
    with pytest.raises(ValueError, match="out_idx has repeated indices"):
        gather_channels(w, [0, 0], backend="reference")
    with pytest.raises(ValueError, match=r"in_idx\[1\] holds indices"):
        gather_many([w, w], None, [None, torch.tensor([9])], backend="reference")


def test_public_names_exported():
    for name in ("filter_stats", "filter_stats_many", "channel_contrib", "gather_channels", "gather_many"):
        assert getattr(mtlkernels, name) is getattr(mtlkernels.ops, name)
