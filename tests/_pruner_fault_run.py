"""A tiny pruning run that checkpoints with ``MultiTaskPruner.save`` after steps 1 and 3, shared by
the fault-injection test (tests/test_pruning_io.py) and the child process it kills mid-save:
``python tests/_pruner_fault_run.py <checkpoint>`` runs it from scratch."""
from __future__ import annotations

import sys

import torch

from _models_for_pruning import MODELS, TASKS, make_data, task_losses
from mtlkernels.pruning import MultiTaskPruner

STEPS, PRUNE_AT, SAVE_AT = 5, (1, 3), (1, 3)


def _opt(params):
    return torch.optim.SGD(params, lr=0.02, momentum=0.9)


def run(ckpt=None, resume_from=None):
    """Returns the pruner after the last step, started fresh or from ``resume_from``."""
    torch.set_num_threads(1)  # the child and the test process must reduce in the same order
    data = make_data("vgg", n_batches=STEPS)
    kw = dict(example_inputs=data[0][0])
    if resume_from is None:
        torch.manual_seed(0)
        model = MODELS["vgg"]()
        pr = MultiTaskPruner(model, TASKS, "cosine", optimizer=_opt(model.parameters()), min_channels=2,
                             score_accumulation=("ema", 0.5), seed=3, **kw)
        start = 0
    else:
        pr = MultiTaskPruner.resume(resume_from, MODELS["vgg"], optimizer_fn=_opt, **kw)
        start = pr.extra["step"] + 1
    for i in range(start, STEPS):
        x, y = data[i]
        pr.optimizer.zero_grad(set_to_none=True)
        pr.accumulate(task_losses(pr.model(x), y))
        pr.optimizer.step()
        if i in PRUNE_AT:
            pr.prune(4)
        if ckpt is not None and i in SAVE_AT:
            pr.save(ckpt, extra={"step": i})
    return pr


if __name__ == "__main__":
    run(ckpt=sys.argv[1])
