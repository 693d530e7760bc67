"""Score every filter of a large multi-task network with the fused kernels, on every backend.

One minibatch -> per-task gradients of all conv weights (one autograd pass per task) -> one
``mtlkernels.ops.filter_stats_many`` call over all layers -> ``mtlkernels.criteria.score`` for the
paper's criteria. Each backend of ``mtlkernels.available_backends()`` is timed and checked against
the reference.

    python python/score_large_network.py                 # full-width VGG16 + ASPP heads, 64x64 inputs
    python python/score_large_network.py --width 0.25 --repeats 2
"""
import argparse
import time

import torch

import mtlkernels
from mtlkernels.criteria import score
from mtlkernels.study.metrics import task_losses
from mtlkernels.study.models import VGG16MTL
from mtlkernels.ops import filter_stats_many


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--criteria", nargs="+", default=["taylor", "cosine", "taylor_task_sum", "l2"])
    ap.add_argument("--backends", nargs="+", default=None, help="subset of the available backends [all]")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)

    torch.manual_seed(0)
    model = VGG16MTL(width=args.width).to(dev)
    tasks = list(model.tasks)
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=dev)
    batch = {"seg": torch.randint(0, model.tasks["seg"], (args.batch_size, args.size, args.size), device=dev),
             "depth": torch.rand(args.batch_size, 1, args.size, args.size, device=dev) + 0.5,
             "normal": torch.nn.functional.normalize(torch.randn(args.batch_size, 3, args.size, args.size,
                                                                 device=dev), dim=1)}
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    weights = [m.weight for _, m in convs]
    losses = task_losses(model(x), batch)
    grads = []  # grads[t][l]
    for i, t in enumerate(tasks):
        g = torch.autograd.grad(losses[t], weights, retain_graph=i < len(tasks) - 1, allow_unused=True)
        grads.append([torch.zeros_like(w) if gi is None else gi for gi, w in zip(g, weights)])
    per_layer = [torch.stack([grads[t][l] for t in range(len(tasks))]) for l in range(len(weights))]
    ws = [w.detach() for w in weights]
    n_filters = sum(w.shape[0] for w in ws)
    n_weights = sum(w.numel() for w in ws)
    print(f"VGG16 x{args.width} multi-task: {len(ws)} conv layers, {n_filters:,} filters, {n_weights:,} weights, "
          f"{len(tasks)} tasks, device {dev}")
    backends = mtlkernels.available_backends(dev)
    print(f"backends available here: {', '.join(backends)}")
    if args.backends:
        backends = [b for b in backends if b in args.backends]
    ref = None
    for b in backends:
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
        stats = filter_stats_many(ws, per_layer, backend=b, names=[n for n, _ in convs])  # warm-up
        sync()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            stats = filter_stats_many(ws, per_layer, backend=b, names=[n for n, _ in convs])
        sync()
        t_stats = (time.perf_counter() - t0) / args.repeats
        t0 = time.perf_counter()
        scores = {c: score(stats, c, generator=torch.Generator().manual_seed(0)) for c in args.criteria}
        sync()
        t_score = time.perf_counter() - t0
        if ref is None:
            ref = scores
            err = 0.0
        else:
            err = max(float(((scores[c] - ref[c]).abs() / (ref[c].abs() + 1e-6)).max()) for c in args.criteria)
        low = {c: int(scores[c].argmin()) for c in args.criteria}
        print(f"  {b:9s} filter_stats_many {1000 * t_stats:8.2f} ms | {len(args.criteria)} criteria "
              f"{1000 * t_score:6.2f} ms | max rel. diff vs {backends[0]} {err:.1e} | lowest filter per criterion {low}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
