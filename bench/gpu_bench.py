"""GPU benchmark of the fused ops: CUDA events, warm-up, median of many runs, rotating inputs.

Providers: reference (eager PyTorch, einsum per layer), torch.compile(reference), Triton, CUDA;
ceiling: device-to-device copy bandwidth measured in the same run (bytes read + written).
Writes JSON (device, versions, shapes, medians, GB/s, ratios) to --out and prints a table.

    python bench/gpu_bench.py --out bench/results/gpu_<device>.json
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


def time_ms(fn, input_sets, reps=50, warmup=5):
    """Median and IQR (ms) of fn(*inputs) over reps, cycling through input_sets."""
    for i in range(warmup):
        fn(*input_sets[i % len(input_sets)])
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        args = input_sets[i % len(input_sets)]
        starts[i].record()
        fn(*args)
        ends[i].record()
    torch.cuda.synchronize()
    t = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    q = statistics.quantiles(t, n=4)
    return statistics.median(t), q[2] - q[0]


def copy_bandwidth(nbytes=4 << 30):
    src = torch.empty(nbytes // 4, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms, _ = time_ms(lambda: dst.copy_(src), [()], reps=20)
    del src, dst
    return 2 * nbytes / ms / 1e6  # GB/s, read + write


def stats_inputs(net, T, dtype, sets, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shapes = NETWORKS[net]()
    out = []
    for _ in range(sets):
        ws = [torch.randn(*s, device="cuda", generator=gen).to(dtype) for s in shapes]
        gs = [torch.randn(T, *s, device="cuda", generator=gen).to(dtype) for s in shapes]
        out.append((ws, gs))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="fewer cases (smoke run)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    args = p.parse_args()
    dev = torch.cuda.get_device_name()
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    result = {
        "device": dev,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "backends": _backend.available_backends("cuda"),
        "method": "CUDA events around each call, median (and IQR) of 50 runs after 5 warm-ups, "
                  "cycling through 2 input sets (each larger than L2)",
    }
    bw = copy_bandwidth()
    result["copy_bandwidth_GBps"] = bw
    print(f"{dev}: device-to-device copy {bw:.0f} GB/s (read + write)", flush=True)

    rows = []
    cases = [("vgg16", 3, torch.float32), ("resnet152", 3, torch.float32), ("resnet152", 8, torch.float32),
             ("resnet152", 3, torch.bfloat16)]
    if args.quick:
        cases = cases[:2]
    for net, T, dtype in cases:
        inputs = stats_inputs(net, T, dtype, sets=2)
        nbytes = (T + 1) * numel(NETWORKS[net]()) * inputs[0][0][0].element_size()
        providers = {
            "cuda": lambda ws, gs: ops.filter_stats_many(ws, gs, backend="cuda"),
            "triton": lambda ws, gs: ops.filter_stats_many(ws, gs, backend="triton"),
            "reference": lambda ws, gs: ops.filter_stats_many(ws, gs, backend="reference"),
        }
        if not args.no_compile and not (net == "resnet152" and T == 8):
            flat = [(ws, [g for G in gs for g in G.unbind(0)]) for ws, gs in inputs]
            compiled = torch.compile(reference.filter_stats)
            t0 = time.time()
            compiled(*flat[0])
            print(f"  torch.compile(reference) {net} T={T}: compiled in {time.time() - t0:.0f} s", flush=True)
        case = {"op": "filter_stats_many", "net": net, "T": T, "dtype": str(dtype).replace("torch.", ""),
                "layers": len(inputs[0][0]), "filters": sum(w.shape[0] for w in inputs[0][0]),
                "weights": numel(NETWORKS[net]()), "bytes_read": nbytes, "providers": {}}
        for name, fn in providers.items():
            if name not in _backend.available_backends("cuda"):
                continue
            ms, iqr = time_ms(fn, inputs, reps=20 if name == "reference" else 50)
            case["providers"][name] = {"median_ms": ms, "iqr_ms": iqr, "GBps": nbytes / ms / 1e6}
        if not args.no_compile and not (net == "resnet152" and T == 8):
            ms, iqr = time_ms(lambda ws, gs: compiled(*flat[0 if ws is inputs[0][0] else 1]), inputs, reps=20)
            case["providers"]["torch.compile(reference)"] = {"median_ms": ms, "iqr_ms": iqr, "GBps": nbytes / ms / 1e6}
        base = case["providers"].get("cuda") or case["providers"].get("triton")
        for name, r in case["providers"].items():
            r["fraction_of_copy_bw"] = r["GBps"] / bw
            if base:
                r["time_vs_best_kernel"] = r["median_ms"] / base["median_ms"]
        rows.append(case)
        del inputs
        torch.cuda.empty_cache()

    # gather: one compaction step, half of every conv's channels kept, weights + 2 Adam moments
    for net in (["vgg16", "resnet152"] if not args.quick else ["vgg16"]):
        gen = torch.Generator(device="cuda").manual_seed(1)
        shapes = NETWORKS[net]()
        sets = []
        for _ in range(2):
            xs, oi, ii = [], [], []
            for s in shapes:
                keep_o = torch.randperm(s[0], device="cuda", generator=gen)[: s[0] // 2].sort().values
                keep_i = torch.randperm(s[1], device="cuda", generator=gen)[: max(1, s[1] // 2)].sort().values
                for _ in range(3):  # weight, exp_avg, exp_avg_sq
                    xs.append(torch.randn(*s, device="cuda", generator=gen))
                    oi.append(keep_o)
                    ii.append(keep_i)
            sets.append((xs, oi, ii))
        moved = sum(x.numel() // 4 * 4 * 2 for x in sets[0][0])  # ~a quarter kept: read + write
        case = {"op": "gather_many", "net": net, "tensors": len(sets[0][0]), "bytes_moved_approx": moved, "providers": {}}
        for name in ("cuda", "triton", "reference"):
            if name not in _backend.available_backends("cuda"):
                continue
            fn = lambda xs, oi, ii, name=name: ops.gather_many(xs, oi, ii, backend=name, check_indices=False)  # noqa: E731
            ms, iqr = time_ms(fn, sets, reps=30)
            case["providers"][name] = {"median_ms": ms, "iqr_ms": iqr}
        if "cuda" in case["providers"]:
            for r in case["providers"].values():
                r["time_vs_cuda"] = r["median_ms"] / case["providers"]["cuda"]["median_ms"]
        rows.append(case)
        del sets
        torch.cuda.empty_cache()

    result["cases"] = rows
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n{'op':18} {'net':10} {'T':>2} {'dtype':9} {'provider':26} {'median ms':>10} {'GB/s':>7} {'%copy':>6} {'x best':>7}")
    for c in rows:
        for name, r in c["providers"].items():
            print(f"{c['op']:18} {c['net']:10} {c.get('T', ''):>2} {c.get('dtype', ''):9} {name:26} "
                  f"{r['median_ms']:10.3f} {r.get('GBps', 0):7.0f} {100 * r.get('fraction_of_copy_bw', 0):6.1f} "
                  f"{r.get('time_vs_best_kernel', r.get('time_vs_cuda', 0)):7.2f}")


if __name__ == "__main__":
    main()
