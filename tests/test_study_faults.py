"""Fault injection on the study runner: a run SIGKILLed at every boundary between two writes of its
stages (``MTLKERNELS_STUDY_FAULT``), resumed each time, ends with the results of an uninterrupted run
and leaves no stale file behind."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtlkernels.study import collect_results

pytestmark = pytest.mark.slow  # ~15 forked runs of a tiny study: tens of seconds on a busy 2-core machine

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--seed", "0", "--image-size", "32", "--n-train", "8", "--n-test", "2", "--steps", "2", "--batch-size", "2",
        "--targets", "0.5", "0.9", "--prune-every", "1", "--prune-amount", "300", "--ft-steps", "1",
        "--latency-repeats", "1", "--no-progress", "--threads", "1", "--ckpt-every", "1", "--criterion", "taylor"]
# In the order a run meets them; each entry is one run, killed there, that resumes the previous one.
# "io:" points are inside one atomic write (mtlkernels.pruning.io, n-th write of the process: in the
# first run config.json, in the third the first baseline checkpoint); the others are the study's.
# A pid above any pid_max names the planted temporary file: its writer is surely dead.
# (The prune.pruner after prune.level is the checkpoint of a finished level, which once overwrote
# the file state.json still named.)
CHAIN = ["io:after-temp-write@1", "trivial.written", "io:mid-temp-write@1", "baseline.ckpt", "baseline.model",
         "baseline.done", "prune.pruner", "prune.state", "prune.level", "prune.pruner", "prune.done", "retrain.ckpt",
         "retrain.model", "retrain.json"]
STALE = ".tmp-ckpt.pt.4194305.deadbeef"
TIMING = {"train_seconds", "latency_ms", "seconds"}

# One interpreter imports torch once and forks a child per run: the parent computes nothing, so the
# children start from a clean torch (no thread pools to inherit) without paying the import each time.
DRIVER = r"""
import json, os, sys
from mtlkernels import cli
from mtlkernels.study import Study
out, ref, args, chain, stale = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]

def run(folder, fault):
    pid = os.fork()
    if pid == 0:
        os.environ.pop("MTLKERNELS_FAULT", None)
        if fault and fault.startswith("io:"):
            os.environ["MTLKERNELS_FAULT"] = fault[3:]
        elif fault:
            os.environ["MTLKERNELS_STUDY_FAULT"] = fault
        cfg = cli._config(cli.build_parser().parse_args(["retrain", "--out", folder] + args))
        with Study(cfg, folder, progress=False, log=lambda m: None) as s:  # the CLI less its report
            s.run(cli.STAGES["retrain"])
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

codes = [run(out, f) for f in chain]
os.makedirs(os.path.join(out, "baseline"), exist_ok=True)
open(os.path.join(out, "baseline", stale), "w").write("torn")
codes.append(run(out, None))
codes.append(run(ref, None))
print(json.dumps(codes))
"""


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _results_json(out: Path) -> str:
    return json.dumps(_strip(collect_results(out)), indent=1, default=float)


def _weights(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def faulted(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    out, ref = base / "killed", base / "ref"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", DRIVER, str(out), str(ref), json.dumps(ARGS), json.dumps(CHAIN), STALE],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    codes = json.loads(r.stdout.strip().splitlines()[-1])
    return out, ref, codes


def test_every_fault_point_was_hit(faulted):
    _, _, codes = faulted
    # -9: the run died at its fault point (a point it never met would let it finish with 0)
    assert codes[:len(CHAIN)] == [-9] * len(CHAIN), list(zip(CHAIN, codes))
    assert codes[len(CHAIN):] == [0, 0]


def test_resumed_results_equal_uninterrupted(faulted):
    out, ref, _ = faulted
    assert _results_json(out) == _results_json(ref)
    for rel in ("baseline/model.pt", "prune-taylor/level0.pt", "prune-taylor/level1.pt", "retrain-taylor/level0.pt",
                "retrain-taylor/level1.pt"):
        a, b = _weights(ref / rel), _weights(out / rel)
        assert a.keys() == b.keys(), rel
        for k in a:
            assert torch.equal(a[k], b[k]), (rel, k)


def test_nothing_stale_left(faulted):
    out, ref, _ = faulted
    for folder in (out, ref):
        assert not list(folder.rglob(".tmp-*"))
        assert not list(folder.rglob("level*-ckpt.pt"))
        state = json.loads((folder / "prune-taylor" / "state.json").read_text())
        assert state["done"] and [p.name for p in (folder / "prune-taylor").glob("pruner-*.pt")] == [state["ckpt"]]
        for j in (folder / "retrain-taylor").glob("level*.json"):
            assert j.with_suffix(".pt").exists()
