"""Every example in python/ runs (tiny settings, as a subprocess) so none can rot."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script, *args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)  # the Triton interpreter on CPU takes minutes on a whole network
    r = subprocess.run([sys.executable, str(ROOT / "python" / script), *map(str, args)], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=timeout)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_prune_own_model(tmp_path):
    out = _run("prune_own_model.py", "--steps", 4, "--every", 2, "--amount", 20, "--n-train", 8, "--size", 16,
               "--batch-size", 2, "--out", tmp_path)
    assert "pruned 20 filters" in out
    assert "same outputs: True" in out
    assert (tmp_path / "pruned.pt").exists()


def test_score_large_network():
    out = _run("score_large_network.py", "--width", 0.125, "--size", 16, "--repeats", 1, "--batch-size", 1)
    assert "backends available here: reference" in out
    assert "filter_stats_many" in out and "reference" in out


def test_paper_study(tmp_path):
    out = _run("paper_study.py", "--out", tmp_path / "s", "--steps", 2, "--targets", 0.5, 0.9, "--criteria", "taylor",
               "--n-train", 8, "--n-test", 2, "--size", 32, "--prune-amount", 300, "--prune-every", 1,
               "--ft-steps", 1, "--quiet")
    assert "findings:" in out
    for f in ("report.md", "results.json", "results.csv", "fig_seg.png"):
        assert (tmp_path / "s" / f).exists()


@pytest.mark.parametrize("script", ["prune_own_model.py", "score_large_network.py", "paper_study.py"])
def test_uses_public_api_only(script):
    text = (ROOT / "python" / script).read_text()
    assert "mtlkernels._" not in text and "from mtlkernels.study.runner" not in text
