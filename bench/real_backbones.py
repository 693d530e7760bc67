"""Coverage and analysis time on real torchvision / timm backbones with three task heads:
prunable channels found by mtlkernels' analysis vs Torch-Pruning's ``DependencyGraph``.

Each backbone's feature map feeds three 1x1 task heads (the multi-task setting); the heads' convs
are the outputs (never pruned by either). "Channels" are prunable channel positions: for us the
channels of each channel group's largest member layer (coupled channels counted once; a grouped
conv's group holds one position of every conv group), for Torch-Pruning the summed channel count
of its prunable groups rooted at convs/linears. Also the time to build each analysis, and a compact
prune of 30% of the groups (by l1) after which the model must still run with unchanged task-output
shapes.

torchvision and timm are NOT dependencies: install them apart, without their dependencies, e.g.
``pip install --no-deps --target /tmp/realmodels torchvision==0.28.0 timm`` and run with
``PYTHONPATH=/tmp/realmodels``. The registry's torchvision wheel is a CUDA build whose
``torchvision::nms``/``qnms`` fake registrations fail against CPU torch: they are skipped at import.

Run: ``PYTHONPATH=/tmp/realmodels python bench/real_backbones.py [--models resnet18 ...] [--out F]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    import mtlkernels
    from mtlkernels.pruning.graph import analyse
from benchutil import cpu_name, emit  # noqa: E402

TASKS = {"seg": 7, "depth": 1, "normal": 3}
TV = ["resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
      "regnet_y_400mf", "densenet121", "convnext_tiny", "shufflenet_v2_x1_0"]
TIMM = ["timm:efficientnet_b0", "timm:mobilenetv3_large_100", "timm:resnet50d", "timm:regnety_008"]


def import_torchvision():
    import torch.library as L

    orig = L.register_fake

    def skip(name, *a, **k):  # the CUDA wheel's nms fakes do not register against CPU torch
        if isinstance(name, str) and name in ("torchvision::nms", "torchvision::qnms"):
            return (lambda f: f) if not a else a[0]
        return orig(name, *a, **k)

    L.register_fake = skip
    try:
        import torchvision
    finally:
        L.register_fake = orig
    return torchvision


class MultiTask(nn.Module):
    def __init__(self, body: nn.Module, channels: int, timm_model: bool):
        super().__init__()
        self.body = body
        self.timm_model = timm_model
        self.heads = nn.ModuleDict({t: nn.Conv2d(channels, c, 1) for t, c in TASKS.items()})

    def forward(self, x):
        f = self.body.forward_features(x) if self.timm_model else self.body(x)
        return {t: h(f) for t, h in self.heads.items()}


def torchvision_body(tv, name: str) -> nn.Module:
    m = getattr(tv.models, name)()
    if name.startswith(("resnet", "resnext")):
        return nn.Sequential(*list(m.children())[:-2])
    if name.startswith("regnet"):
        return nn.Sequential(m.stem, m.trunk_output)
    if name.startswith("shufflenet"):
        return nn.Sequential(m.conv1, m.maxpool, m.stage2, m.stage3, m.stage4, m.conv5)
    return m.features


def build(name: str, x: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("timm:"):
        try:
            import_torchvision()   # timm imports it when present: with the nms fakes skipped
        except ImportError:
            pass
        import timm

        body, is_timm = timm.create_model(name[5:], pretrained=False), True
    else:
        body, is_timm = torchvision_body(import_torchvision(), name), False
    body.eval()
    with torch.no_grad():
        c = (body.forward_features(x) if is_timm else body(x)).shape[1]
    return MultiTask(body, c, is_timm).eval()


def ours(model, x):
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        an = analyse(model, x)
    # a grouped conv's channel group holds one position of every conv group: count its channels
    channels = sum(max(c for _, c in mem) for mem in an.group_members)
    return {"channels": channels, "groups": an.num_groups, "seconds": time.perf_counter() - t0,
            "unsupported": an.unsupported[:12], "unsupported_count": len(an.unsupported)}


def prune_check(model, x, fraction: float):
    """Compact-prune a fraction of the groups by l1, then run the model: it must still work, with
    the task outputs' shapes unchanged."""
    from mtlkernels.pruning import MultiTaskPruner

    with torch.no_grad():
        want = {t: o.shape for t, o in model(x).items()}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pr = MultiTaskPruner(model, list(TASKS), "l1", example_inputs=x, min_channels=1)
        n = int(pr.prunable_channels() * fraction)
        rep = pr.prune(n)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        got = {t: o.shape for t, o in model(x).items()}
    params = sum(p.numel() for p in model.parameters())
    return {"groups_pruned": rep.pruned, "requested": n, "seconds": seconds, "params_after": params,
            "outputs_unchanged_shape": got == want}


def theirs(model, x):
    import torch_pruning as tp

    t0 = time.perf_counter()
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        heads = list(model.heads.values())
        groups = list(dg.get_all_groups(ignored_layers=heads, root_module_types=[nn.Conv2d, nn.Linear]))
        n = sum(len(g[0].idxs) for g in groups)
        return {"channels": n, "seconds": time.perf_counter() - t0}
    except Exception as exc:  # Torch-Pruning crashes on some models (shufflenet)
        return {"channels": None, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=TV + TIMM)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--prune-fraction", type=float, default=0.3)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    x = torch.randn(1, 3, a.size, a.size)
    rows = []
    for name in a.models:
        try:
            model = build(name, x)
        except Exception as exc:
            rows.append({"model": name, "error": f"build: {type(exc).__name__}: {exc}"[:200]})
            continue
        row = {"model": name, "ours": ours(model, x), "torch_pruning": theirs(model, x)}
        model.eval()                       # Torch-Pruning's build leaves it so anyway
        row["params_before"] = sum(p.numel() for p in model.parameters())
        try:
            row["prune"] = prune_check(model, x, a.prune_fraction)
        except Exception as exc:
            row["prune"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        tpc = row["torch_pruning"].get("channels")
        if tpc:
            row["coverage"] = row["ours"]["channels"] / tpc
            row["analysis_time_ratio"] = row["ours"]["seconds"] / row["torch_pruning"]["seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    import torch_pruning as tp

    res = {"machine": cpu_name(), "torch": torch.__version__, "mtlkernels": mtlkernels.__version__,
           "torch_pruning": tp.__version__, "input": [1, 3, a.size, a.size], "models": rows}
    return emit(res, a.out, quiet=True)


if __name__ == "__main__":
    main()
