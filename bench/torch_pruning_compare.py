"""mtlkernels' pruning driver next to Torch-Pruning 1.6 on small multi-task CNNs built from torch.nn.

Per model (three task heads; the layers producing the outputs are left unpruned by both):

* **what is prunable**: mtlkernels' analysis (``mtlkernels.pruning.analyse``: channel groups = single
  prunable channels, and the number of distinct coupled layer sets) vs Torch-Pruning's
  ``DependencyGraph`` (``get_all_groups``: groups = coupled layer sets, channels = their root
  channels). Equal channel counts mean both found the same prunable channels;
* **analysis time**: ``analyse`` (fx trace + shape propagation under FakeTensorMode) vs
  ``DependencyGraph().build_dependency`` (a real forward with autograd hooks) and its
  ``get_all_groups``;
* **one prune** of about 10% of the channels by ``l1`` (global ranking): ``MultiTaskPruner.prune(n)``
  (ranking, one gather, re-analysis) vs ``MetaPruner.step()`` with Torch-Pruning's group L1, and with
  mtlkernels' ``l1`` through :class:`mtlkernels.integrations.torch_pruning.MultiTaskImportance`;
* **statistics + score** of every channel from given gradients (T=3, no backward): the driver's
  group scoring, the interop importance over Torch-Pruning's groups (``cosine``), and
  Torch-Pruning's ``GroupTaylorImportance`` over all its groups (one summed gradient).

Times are medians over ``--rounds`` (1 intra-op thread), in ms. torchvision / timm backbones are
added when importable (they are not installed here: the registry's torchvision wheel does not
import against the CPU torch).

Run: ``python bench/torch_pruning_compare.py [--rounds 5] [--out bench/results/<name>.json]``;
``--smoke`` runs two tiny models once (the tests run it).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    import mtlkernels
    import torch_pruning as tp
    from _models_for_pruning import MODELS
    from mtlkernels.integrations.torch_pruning import MultiTaskImportance
    from mtlkernels.study.models import ResNetMTL, VGG16MTL
    from mtlkernels.pruning import MultiTaskPruner, analyse
    from benchutil import cpu_name, emit, timing_args

T = 3
TASKS = {"seg": 7, "depth": 1, "normal": 3}


def model_specs(smoke: bool):
    """``(name, constructor, input shape)``: the tests' four nets, then the study's two."""
    specs = [(f"tests.{k}", MODELS[k], (2, 3, 16, 16)) for k in (("vgg", "resnet") if smoke else MODELS)]
    if smoke:
        return specs
    specs += [
        ("VGG16MTL(width=0.25)", lambda: VGG16MTL(tasks=TASKS, width=0.25), (1, 3, 64, 64)),
        ("VGG16MTL(width=1.0)", lambda: VGG16MTL(tasks=TASKS, width=1.0), (1, 3, 64, 64)),
        ("ResNetMTL(18, width=0.5)", lambda: ResNetMTL(tasks=TASKS, depth=18, width=0.5), (1, 3, 64, 64)),
        ("ResNetMTL(34, width=1.0)", lambda: ResNetMTL(tasks=TASKS, depth=34, width=1.0), (1, 3, 64, 64)),
    ]
    return specs + real_backbones()


class _ThreeHeads(nn.Module):
    """A classification backbone's features with three 1x1-conv task heads."""

    def __init__(self, features: nn.Module, channels: int):
        super().__init__()
        self.features = features
        self.heads = nn.ModuleDict({t: nn.Conv2d(channels, c, 1) for t, c in TASKS.items()})

    def forward(self, x):
        f = self.features(x)
        return {t: h(f) for t, h in self.heads.items()}


def real_backbones():
    out = []
    try:
        tv = importlib.import_module("torchvision.models")
        out.append(("torchvision resnet18 + 3 heads", lambda: _ThreeHeads(
            nn.Sequential(*list(tv.resnet18().children())[:-2]), 512), (1, 3, 128, 128)))
        out.append(("torchvision mobilenet_v2 + 3 heads",
                    lambda: _ThreeHeads(tv.mobilenet_v2().features, 1280), (1, 3, 128, 128)))
    except Exception:  # noqa: BLE001 - any import failure means: not available here
        pass
    return out


_PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear)


def output_layers(model: nn.Module):
    """Names of the conv / linear layers whose output channels reach a model output (kept whole)."""
    gm = torch.fx.symbolic_trace(model)
    found, seen = [], set()
    stack = [n for n in gm.graph.nodes if n.op == "output"]
    while stack:
        for a in stack.pop().all_input_nodes:
            if a in seen:
                continue
            seen.add(a)
            if a.op == "call_module" and isinstance(model.get_submodule(a.target), _PRODUCERS):
                found.append(a.target)
            else:
                stack.append(a)
    return sorted(found)


def timed(fn, rounds, setup=None):
    """Median and min ms of ``fn(setup())`` over rounds (setup untimed); the last result."""
    times, res = [], None
    for _ in range(rounds):
        arg = setup() if setup else None
        t0 = time.perf_counter()
        res = fn(arg) if setup else fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return {"median_ms": statistics.median(times), "min_ms": min(times)}, res


def outputs_list(out):
    return list(out.values()) if isinstance(out, dict) else list(out)


def random_grads(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(T)]
    index = {id(p): j for j, p in enumerate(params)}
    return params, grads, lambda w: [gt[index[id(w)]] if id(w) in index else torch.zeros_like(w)
                                     for gt in grads]


def ours(make, x, rounds):
    """Analysis, one l1 prune of a tenth of the channels and group statistics + score of the
    mtlkernels driver."""
    model = make().train()
    an_t, an = timed(lambda: analyse(model, x), rounds)
    sets = {frozenset(n for n, _ in mem) for mem in an.group_members if mem}
    n_prune = max(1, an.num_groups // 10)

    def fresh(_=None):
        m = make().train()
        return MultiTaskPruner(m, list(TASKS), "l1", example_inputs=x, min_channels=1, warn_unsupported=False)
    prune_t, rep = timed(lambda pr: pr.prune(n_prune), max(1, rounds // 2), setup=fresh)
    pr = MultiTaskPruner(model, list(TASKS), "cosine", example_inputs=x, warn_unsupported=False)
    _, _, grad_of = random_grads(model)
    stats_t, _ = timed(lambda: pr._scorer.batch_scores(grad_of), rounds)
    return {"prunable_channels": an.num_groups, "coupled_sets": len(sets), "unsupported": len(an.unsupported),
            "analysis": an_t, "prune_n": n_prune, "prune": prune_t, "pruned": int(rep.pruned),
            "stats_score": stats_t}


def theirs(make, x, outs, rounds, n_prune):
    """Dependency graph, groups, one global group-L1 prune and GroupTaylor over every group."""
    model = make()
    ignored = [model.get_submodule(n) for n in outs]
    build_t, dg = timed(lambda: tp.DependencyGraph().build_dependency(model, example_inputs=x), rounds)
    roots = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
    groups_t, groups = timed(lambda: list(dg.get_all_groups(ignored_layers=ignored, root_module_types=roots)),
                             rounds)
    channels = sum(len(g[0].idxs) for g in groups)
    ratio = n_prune / channels

    def step_with(importance):
        def setup(_=None):
            m = make()
            pr = tp.pruner.MetaPruner(m, x, importance=importance(), pruning_ratio=ratio, global_pruning=True,
                                      ignored_layers=[m.get_submodule(n) for n in outs])
            m.train()
            if isinstance(pr.importance, MultiTaskImportance):
                pr.importance.accumulate(pr, [o.pow(2).mean() for o in outputs_list(m(x))], set_grad=False)
            return pr
        t, pr = timed(lambda p: (p.step(), p)[1], max(1, rounds // 2), setup=setup)
        left = sum(len(g[0].idxs) for g in pr.DG.get_all_groups(ignored_layers=pr.ignored_layers,
                                                                  root_module_types=roots))
        return t, channels - left
    # both normalise each group's scores by their mean (Torch-Pruning's default), so that a
    # global ranking does not remove whole low-magnitude layers (which Torch-Pruning then skips)
    tp_prune_t, tp_removed = step_with(lambda: tp.importance.GroupMagnitudeImportance(p=1, normalizer="mean",
                                                                                      group_reduction="sum"))
    mk_prune_t, mk_removed = step_with(lambda: MultiTaskImportance("l1", normalizer="mean"))
    params, grads, _ = random_grads(model)
    for p, g in zip(params, grads[0]):
        p.grad = g
    taylor = tp.importance.GroupTaylorImportance()
    stats_t, _ = timed(lambda: [taylor(g) for g in groups], rounds)
    return {"prunable_channels": channels, "groups": len(groups), "build_dependency": build_t,
            "get_all_groups": groups_t, "prune": tp_prune_t, "pruned": tp_removed,
            "stats_score_group_taylor": stats_t}, {"prune_l1": mk_prune_t, "pruned": mk_removed}


def interop_stats(make, x, outs, rounds):
    """MultiTaskImportance('cosine'): statistics + score over Torch-Pruning's groups."""
    model = make()
    pr = tp.pruner.MetaPruner(model, x, importance=MultiTaskImportance("cosine"),
                              ignored_layers=[model.get_submodule(n) for n in outs])
    model.train()
    imp = pr.importance
    imp.accumulate(pr, [o.pow(2).mean() for o in outputs_list(model(x))], set_grad=False)
    _, _, grad_of = random_grads(model)
    t, _ = timed(lambda: imp._scores(imp._layout, grad_of, [1.0] * T), rounds)
    return t


def compare(name, make, shape, rounds):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    probe = make()
    outs = output_layers(probe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ours(make, x, rounds)
        b, via = theirs(make, x, outs, rounds, a["prune_n"])
        via["stats_score_cosine"] = interop_stats(make, x, outs, rounds)
    return {"model": name, "input": list(shape), "params": sum(p.numel() for p in probe.parameters()),
            "output_layers": outs, "same_prunable_channels":
            a["prunable_channels"] == b["prunable_channels"], "mtlkernels": a, "torch_pruning": b,
            "torch_pruning_with_mtlkernels_importance": via}


def main(argv=None):
    a = timing_args(__doc__, rounds=5).parse_args(argv)
    torch.set_num_threads(a.threads)
    rounds = 1 if a.smoke else a.rounds
    specs = model_specs(a.smoke)
    load_before = os.getloadavg()
    rows = [compare(name, make, shape, rounds) for name, make, shape in specs]
    res = {
        # the machine is shared: the load says how much the medians were disturbed
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "machine": cpu_name(), "cores": len(os.sched_getaffinity(0)), "threads": a.threads,
        "torch": torch.__version__, "torch_pruning": importlib.metadata.version("torch-pruning"),
        "mtlkernels": mtlkernels.__version__,
        "backends": mtlkernels.available_backends("cpu"), "rounds": rounds,
        "real_backbones": [n for n, _, _ in real_backbones()] or "torchvision / timm not importable",
        "models": rows,
    }
    return emit(res, a.out)


if __name__ == "__main__":
    main()
