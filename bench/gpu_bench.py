"""GPU benchmark of the fused ops: CUDA events, warm-up, median of many runs, rotating inputs.

Providers: reference (eager PyTorch, einsum per layer), torch.compile(reference) (with --compile),
Triton, CUDA. The kernels are timed twice: through the public API (``ops.filter_stats_many``: input
checks, backend choice, the FilterStats result) and as the bare registered op on the same stacked
gradients ("op only"). Per-call CUDA events bracket the host work of the call too, so each filter_stats
row also has ``throughput_ms`` (N back-to-back calls / N: max(host, device) per call) and, on CUDA,
``kernel_ms`` / ``kernel_GBps`` (device time of the call's kernels and copies, torch.profiler).
Ceiling: device-to-device copy bandwidth measured in the same run (bytes read + written).
Writes JSON (device, versions, shapes, medians, GB/s, ratios) to --out and prints a table.

    python bench/gpu_bench.py --out bench/results/gpu_<device>.json      # kernels + eager reference
    python bench/gpu_bench.py --compile-only --out ...compile.json        # torch.compile(reference) rows

``--device cpu --smoke`` runs the same code on tiny networks with wall-clock timers: the test suite
uses it to keep this script working between the sessions that have a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from shapes import NETWORKS, numel  # noqa: E402

from mtlkernels import _backend, ops, reference  # noqa: E402

KERNELS = ("cuda", "triton", "cpu")


def time_ms(fn, input_sets, device, reps=50, warmup=5):
    """Median and IQR (ms) of fn(*inputs) over reps, cycling through input_sets (CUDA events on a
    GPU, wall clock on the CPU)."""
    for i in range(warmup):
        fn(*input_sets[i % len(input_sets)])
    t = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            starts[i].record()
            fn(*input_sets[i % len(input_sets)])
            ends[i].record()
        torch.cuda.synchronize()
        t = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        for i in range(reps):
            t0 = time.perf_counter()
            fn(*input_sets[i % len(input_sets)])
            t.append((time.perf_counter() - t0) * 1e3)
    t.sort()
    q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
    return statistics.median(t), q[2] - q[0]


def throughput_ms(fn, input_sets, device, calls=50):
    """Time per call of `calls` back-to-back calls (one clock pair around all of them): a call's host
    work overlaps the previous call's kernels, so this is max(host, device) per call, the rate a
    training loop sees. The per-call events of time_ms bracket one call's host work too, so a
    host-bound row there reports host latency, not kernel time."""
    _sync(device)
    t0 = time.perf_counter()
    for i in range(calls):
        fn(*input_sets[i % len(input_sets)])
    _sync(device)
    return (time.perf_counter() - t0) * 1e3 / calls


def kernel_ms(fn, input_sets, device, calls=10):
    """Device time per call of everything a call runs on the GPU (kernels and the table copy),
    from torch.profiler's CUDA activity; None off CUDA or when the profiler gives no device events."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            fn(*input_sets[i % len(input_sets)])
        _sync(device)
    us = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA)
    return us / 1e3 / calls if us else None


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device, nbytes):
    src = torch.empty(nbytes // 4, device=device).uniform_()
    dst = torch.empty_like(src)
    ms, _ = time_ms(lambda: dst.copy_(src), [()], device, reps=20)
    del src, dst
    return 2 * nbytes / ms / 1e6  # GB/s, read + write


def stats_inputs(net, T, dtype, sets, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(sets):
        ws = [torch.randn(*s, device=device, generator=gen).to(dtype) for s in NETWORKS[net]()]
        gs = [torch.randn(T, *s, device=device, generator=gen).to(dtype) for s in NETWORKS[net]()]
        out.append((ws, gs))
    return out


def gather_inputs(net, sets, device, seed=1):
    """One compaction step: half of every conv's output and input channels kept, for the weight and
    two Adam moments."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(sets):
        xs, oi, ii = [], [], []
        for s in NETWORKS[net]():
            keep_o = torch.randperm(s[0], device=device, generator=gen)[: max(1, s[0] // 2)].sort().values
            keep_i = torch.randperm(s[1], device=device, generator=gen)[: max(1, s[1] // 2)].sort().values
            for _ in range(3):  # weight, exp_avg, exp_avg_sq
                xs.append(torch.randn(*s, device=device, generator=gen))
                oi.append(keep_o)
                ii.append(keep_i)
        out.append((xs, oi, ii))
    return out


def filter_stats_case(net, T, dtype, device, args, backends):
    inputs = stats_inputs(net, T, dtype, 2, device)
    flat = [(ws, [g for G in gs for g in G.unbind(0)]) for ws, gs in inputs]
    nbytes = (T + 1) * numel(NETWORKS[net]()) * inputs[0][0][0].element_size()
    raw = {"cuda": torch.ops.mtlkernels.filter_stats, "cpu": torch.ops.mtlkernels.filter_stats}
    if "triton" in backends:
        from mtlkernels import triton_ops  # noqa: F401  (registers mtlkernels::filter_stats_triton)

        raw["triton"] = torch.ops.mtlkernels.filter_stats_triton
    providers = {}  # name -> (fn, takes the flat gradient list)
    for b in backends:
        providers[b] = (lambda ws, gs, b=b: ops.filter_stats_many(ws, gs, backend=b), False)
        providers[f"{b} (op only)"] = (lambda ws, gs, op=raw[b]: op(ws, gs), False)  # stacked, natively
    if not args.compile_only:
        providers["reference"] = (lambda ws, gs: ops.filter_stats_many(ws, gs, backend="reference"), False)
    case = {"op": "filter_stats_many", "net": net, "T": T, "dtype": str(dtype).replace("torch.", ""),
            "layers": len(inputs[0][0]), "filters": sum(w.shape[0] for w in inputs[0][0]),
            "weights": numel(NETWORKS[net]()), "bytes_read": nbytes, "providers": {}}
    if args.compile:
        compiled = torch.compile(reference.filter_stats)
        t0 = time.time()
        compiled(*flat[0])
        case["compile_seconds"] = time.time() - t0
        print(f"  torch.compile(reference) {net} T={T}: compiled in {case['compile_seconds']:.0f} s", flush=True)
        providers["torch.compile(reference)"] = (compiled, True)
    for name, (fn, takes_flat) in providers.items():
        reps = args.reps if args.reps else (20 if name == "reference" else 50)
        sets = flat if takes_flat else inputs
        ms, iqr = time_ms(fn, sets, device, reps=reps)
        row = {"median_ms": ms, "iqr_ms": iqr, "GBps": nbytes / ms / 1e6,
               "throughput_ms": throughput_ms(fn, sets, device, calls=reps)}
        k = kernel_ms(fn, sets, device) if name != "reference" else None
        if k:
            row.update(kernel_ms=k, kernel_GBps=nbytes / k / 1e6)
        case["providers"][name] = row
        print(f"  {net} T={T} {case['dtype']} {name}: {ms:.3f} ms", flush=True)
    base = next((case["providers"][b] for b in backends if b in case["providers"]), None)
    for r in case["providers"].values():
        r["fraction_of_copy_bw"] = r["GBps"] / args.bandwidth
        if base:
            r["time_vs_best_kernel"] = r["median_ms"] / base["median_ms"]
    return case


def gather_case(net, device, args, backends):
    sets = gather_inputs(net, 2, device)
    case = {"op": "gather_many", "net": net, "tensors": len(sets[0][0]),
            "bytes_moved_approx": sum(x.numel() // 4 * 4 * 2 for x in sets[0][0]),  # ~1/4 kept, r + w
            "providers": {}}
    for name in list(backends) + ["reference"]:
        fn = lambda xs, oi, ii, name=name: ops.gather_many(xs, oi, ii, backend=name, check_indices=False)  # noqa: E731
        ms, iqr = time_ms(fn, sets, device, reps=args.reps or 30)
        case["providers"][name] = {"median_ms": ms, "iqr_ms": iqr}
        print(f"  gather {net} {name}: {ms:.3f} ms", flush=True)
    base = next((case["providers"][b] for b in backends), None)
    for r in case["providers"].values():
        if base:
            r["time_vs_best_kernel"] = r["median_ms"] / base["median_ms"]
    return case


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="fewer cases")
    p.add_argument("--smoke", action="store_true", help="tiny networks (checks the script, not speed)")
    p.add_argument("--reps", type=int, default=0, help="timed runs per provider (default 50/20/30)")
    p.add_argument("--backends", default=",".join(KERNELS),
                   help="kernel backends to time, where available (comma-separated)")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile(reference) (compiling the 155-layer ResNet-152 "
                        "reference takes minutes: with --compile-only it runs on its own)")
    p.add_argument("--compile-only", action="store_true",
                   help="only VGG16 and ResNet-152 T=3 float32, with torch.compile(reference) and the kernels")
    args = p.parse_args(argv)
    args.compile = args.compile or args.compile_only
    device = torch.device(args.device)
    wanted = args.backends.split(",")
    backends = [b for b in KERNELS if b in wanted and b in _backend.available_backends(device.type)]
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result = {"device": name, **versions, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "backends": backends,
              "method": f"{'CUDA events' if device.type == 'cuda' else 'wall clock'} around each call, "
                        "median (and IQR) of 50 runs (reference 20, gather 30) after 5 warm-ups, "
                        "cycling through 2 input sets (each larger than L2 for the real networks)"}
    args.bandwidth = copy_bandwidth(device, (64 << 20) if args.smoke else (4 << 30))
    result["copy_bandwidth_GBps"] = args.bandwidth
    print(f"{name}: copy {args.bandwidth:.0f} GB/s (read + write); kernels: {backends}", flush=True)

    f32, bf16 = torch.float32, torch.bfloat16
    if args.smoke:
        cases, gathers = [("resnet_tiny", 3, f32), ("resnet_tiny", 2, bf16)], ["resnet_tiny"]
    else:
        cases = [("vgg16", 3, f32), ("resnet152", 3, f32), ("resnet152", 8, f32), ("resnet152", 3, bf16)]
        gathers = ["vgg16", "resnet152"]
        if args.quick:
            cases, gathers = cases[:2], gathers[:1]
    if args.compile_only:
        cases = [c for c in cases if c[1] == 3 and c[2] == f32]
        gathers = []
    rows = []
    for net, T, dtype in cases:
        rows.append(filter_stats_case(net, T, dtype, device, args, backends))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for net in gathers:
        rows.append(gather_case(net, device, args, backends))
    result["cases"] = rows
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n{'op':18} {'net':11} {'T':>2} {'dtype':9} {'provider':26} {'median ms':>10} {'GB/s':>7} "
          f"{'%copy':>6} {'x kernel':>8}")
    for c in rows:
        for pname, r in c["providers"].items():
            print(f"{c['op']:18} {c['net']:11} {c.get('T', ''):>2} {c.get('dtype', ''):9} {pname:26} "
                  f"{r['median_ms']:10.3f} {r.get('GBps', 0):7.0f} {100 * r.get('fraction_of_copy_bw', 0):6.1f} "
                  f"{r.get('time_vs_best_kernel', 0):8.2f}")
    return result


if __name__ == "__main__":
    main()
