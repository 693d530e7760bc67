"""Parameter / FLOP counting per task path, the iterative pruning schedule, a fine-tuning loop."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params_flops", "total_params_flops", "PruningSchedule", "fine_tune"]


def _outputs_by_task(out, tasks: Optional[Sequence[str]] = None) -> Dict[str, Tensor]:
    if isinstance(out, Mapping):
        return {str(k): v for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        names = list(tasks) if tasks is not None else [str(i) for i in range(len(out))]
        return dict(zip(names, out))
    return {"0" if tasks is None else tasks[0]: out}


def _as_args(example_inputs, model: Optional[nn.Module] = None):
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    dev = next((p.device for p in model.parameters()), None) if model is not None else None
    if dev is not None:
        args = tuple(a.to(dev) if isinstance(a, Tensor) and a.device != dev else a for a in args)
    return args


def count_params_flops(model: nn.Module, example_inputs, tasks: Optional[Sequence[str]] = None
                       ) -> Dict[str, Dict[str, int]]:
    """Per task: ``{"params": ..., "flops": ...}`` of its path (backbone + that task's head).

    A parameter belongs to a task's path when the task's output depends on it (autograd
    reachability). FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` on one forward
    of ``example_inputs`` (so they scale with its batch size): a leaf module's FLOPs count for a
    task when the module has a parameter on the task's path; FLOPs of parameter-free code (rare in
    CNNs: the counter counts matmuls and convolutions) count for every task. Outputs given as a
    tuple / list are named ``tasks`` (default ``"0"``, ``"1"``, ...). The model is run in eval mode
    (BN statistics untouched) and its training flags are restored.
    """
    args = _as_args(example_inputs, model)
    flags = {m: m.training for m in model.modules()}
    params = [p for p in model.parameters()]
    req = [p.requires_grad for p in params]
    root = type(model).__name__
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        with FlopCounterMode(display=False) as fc:
            out = model(*args)
        counts = fc.get_flop_counts()
        outs = _outputs_by_task(out, tasks)
        leaf_flops: Dict[str, int] = {}
        leaf_params: Dict[str, List[nn.Parameter]] = {}
        for name, m in model.named_modules():
            own = list(m.parameters(recurse=False))
            if not own:
                continue
            key = f"{root}.{name}" if name else root
            leaf_flops[name] = int(sum(counts.get(key, {}).values())) if name else 0
            leaf_params[name] = own
        total_flops = int(sum(counts.get("Global", {}).values()))
        rest = max(0, total_flops - sum(leaf_flops.values()))
        result: Dict[str, Dict[str, int]] = {}
        for t, y in outs.items():
            gs = torch.autograd.grad(y.float().sum(), params, retain_graph=True, allow_unused=True)
            on = {id(p) for p, g in zip(params, gs) if g is not None}
            nparams = sum(p.numel() for p in params if id(p) in on)
            flops = rest + sum(f for n, f in leaf_flops.items() if any(id(p) in on for p in leaf_params[n]))
            result[t] = {"params": int(nparams), "flops": int(flops)}
        return result
    finally:
        for m, f in flags.items():
            m.training = f
        for p, r in zip(params, req):
            p.requires_grad_(r)


def total_params_flops(model: nn.Module, example_inputs) -> Dict[str, int]:
    """``{"params", "flops"}`` of the whole model (every parameter, one forward)."""
    args = _as_args(example_inputs, model)
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(*args)
    finally:
        for m, f in flags.items():
            m.training = f
    return {"params": int(sum(p.numel() for p in model.parameters())), "flops": int(fc.get_total_flops())}


class PruningSchedule:
    """Prune ``amount`` channel groups every ``every`` calls of :meth:`step` until a target is met.

    Exactly one target: ``target_channels`` (compared with ``pruner.num_channels()``, the filters
    of all conv / linear layers), ``target_params`` or ``target_flops`` (whole model, counted with
    :func:`total_params_flops` on ``pruner.example_inputs``). A float in ``(0, 1]`` is a fraction of
    the value when the schedule first runs; an int is absolute. With ``target_channels`` the last
    step prunes no more than needed (one group removes >= 1 filter, so it may overshoot by the size
    of the last groups); the other targets stop at the first step that reaches them. Use inside
    your loop after ``optimizer.step()``::

        for step, batch in enumerate(loader):
            losses = task_losses(model(x), y)
            optimizer.zero_grad(); pruner.accumulate(losses); optimizer.step()
            report = sched.step(pruner)      # None, or the prune report
    """

    def __init__(self, every: int, amount: int, *, target_channels=None, target_params=None,
                 target_flops=None, warmup: int = 0) -> None:
        targets = {k: v for k, v in (("channels", target_channels), ("params", target_params),
                                     ("flops", target_flops)) if v is not None}
        if len(targets) != 1:
            raise ValueError("give exactly one of target_channels, target_params, target_flops")
        if every < 1 or amount < 1:
            raise ValueError("every and amount must be >= 1")
        (self.kind, self.target), = targets.items()
        self.every, self.amount, self.warmup = int(every), int(amount), int(warmup)
        self.steps = 0
        self.initial: Optional[float] = None
        self.done = False

    def measure(self, pruner) -> int:
        if self.kind == "channels":
            return pruner.num_channels()
        tot = total_params_flops(pruner.model, pruner.example_inputs)
        return tot[self.kind]

    def goal(self, pruner) -> float:
        if self.initial is None:
            self.initial = float(self.measure(pruner))
        t = self.target
        return t * self.initial if isinstance(t, float) and t <= 1.0 else float(t)

    def step(self, pruner):
        """Call once per training step; prunes on every ``every``-th call. Returns the report."""
        self.steps += 1
        if self.done or self.steps <= self.warmup or (self.steps - self.warmup) % self.every:
            return None
        goal = self.goal(pruner)
        now = self.measure(pruner)
        if now <= goal:
            self.done = True
            return None
        n = self.amount
        if self.kind == "channels":
            n = max(1, min(n, int(math.ceil(now - goal))))
        report = pruner.prune(n)
        if report.pruned == 0 or self.measure(pruner) <= goal:
            self.done = True
        return report

    def state_dict(self) -> Dict[str, Any]:
        return {"steps": self.steps, "initial": self.initial, "done": self.done}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        self.steps, self.initial, self.done = int(sd["steps"]), sd["initial"], bool(sd["done"])


def fine_tune(model: nn.Module, loader: Iterable, loss_fn: Callable, optimizer: torch.optim.Optimizer,
              steps: int, *, pruner=None, schedule: Optional[PruningSchedule] = None,
              task_weights: Optional[Mapping[str, float]] = None, device=None,
              log_every: int = 0, log: Callable[[str], None] = print) -> List[float]:
    """A ready training loop: ``steps`` optimizer steps over ``loader`` (cycled).

    ``loader`` yields ``(inputs, targets)``; ``loss_fn(outputs, targets)`` returns ``{task: loss}``
    (or one loss tensor). With a ``pruner``, gradients come from ``pruner.accumulate`` (which also
    scores filters) and ``schedule.step(pruner)`` runs after each optimizer step; a compaction
    swaps the parameters inside ``optimizer`` so the loop continues unchanged. Returns the total
    loss of every step.
    """
    model.train()
    history: List[float] = []
    it = iter(loader)
    for step in range(steps):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        x, y = batch[0], batch[1]
        if device is not None:
            x = x.to(device)
            y = {k: v.to(device) for k, v in y.items()} if isinstance(y, Mapping) else y.to(device)
        out = model(x)
        losses = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        if isinstance(losses, Mapping):
            total = sum((task_weights or {}).get(k, 1.0) * v for k, v in losses.items())
            if pruner is not None:
                pruner.accumulate(losses)
            else:
                total.backward()
        else:
            total = losses
            total.backward()
        optimizer.step()
        history.append(float(total.detach()))
        if pruner is not None and schedule is not None:
            rep = schedule.step(pruner)
            if rep is not None and log_every:
                log(f"step {step}: pruned {rep.pruned} groups, {rep.channels_after} channels left")
        if log_every and (step + 1) % log_every == 0:
            log(f"step {step + 1}/{steps}: loss {history[-1]:.4f}")
    return history
