"""The study command line at tiny settings: outputs, resume, report rebuild, clear errors."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtlkernels import cli
from mtlkernels.study import Study, make_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "16", "--n-train", "8", "--n-test", "2", "--steps", "2", "--batch-size", "2",
        "--targets", "0.5", "0.9", "--prune-every", "1", "--prune-amount", "300", "--ft-steps", "1",
        "--latency-repeats", "1", "--no-progress", "--threads", "1"]  # 1 thread: far faster for tiny models
TINY_CFG = dict(image_size=16, n_train=8, n_test=2, train_steps=3, batch_size=2, levels=[0.5], prune_every=1,
                prune_amount=150, level_ft_steps=1, latency_repeats=1, ckpt_every=1)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert cli.main(["study", "--out", str(out)] + TINY) == 0
    return out


def test_study_outputs(study_dir):
    out = study_dir
    for f in ("results.json", "results.csv", "report.md", "fig_seg.png", "fig_depth.png", "fig_normal.png",
              "fig_delta_m.png", "trivial.json", "baseline/result.json", "log.txt"):
        assert (out / f).exists(), f
    res = json.loads((out / "results.json").read_text())
    assert res["baseline"]["backbone_filters"] == 528
    runs = res["runs"]
    # criterion x strategy x level
    assert sorted({(r["criterion"], r["strategy"], r["level"]) for r in runs}) == sorted(
        (c, s, l) for c in ("taylor", "cosine") for s in ("iterative", "reinit") for l in (0.5, 0.9))
    for r in runs:
        assert r["filters_removed_frac"] >= r["level"] - 1e-9
        assert r["params"]["seg"] < res["baseline"]["params"]["seg"]
        assert r["latency_ms"] > 0 and set(r["metrics"]) == {"seg", "depth", "normal"}
    last = [r for r in runs if r["level"] == 0.9]
    assert all(r["filters_removed_frac"] >= 0.9 for r in last)
    rows = list(csv.DictReader((out / "results.csv").open()))
    keys = {(r["criterion"], r["strategy"], r["level"], r["task"], r["metric"]) for r in rows}
    assert ("taylor", "reinit", "0.9", "normal", "median_angle") in keys
    assert ("cosine", "iterative", "0.5", "all", "delta_m") in keys
    assert len(keys) == len(rows)
    text = (out / "report.md").read_text()
    for s in ("Criteria perform alike", "Extreme iterative pruning", "Re-initialised retraining", "trivial"):
        assert s in text
    assert set(res["findings"]) == {"f1", "f2", "f3"}


def test_rerun_resumes_and_report_rebuilds(study_dir, capsys):
    mtime = (study_dir / "baseline" / "result.json").stat().st_mtime
    assert cli.main(["study", "--out", str(study_dir)] + TINY) == 0  # everything done: nothing retrained
    assert (study_dir / "baseline" / "result.json").stat().st_mtime == mtime
    (study_dir / "report.md").unlink()
    assert cli.main(["report", "--out", str(study_dir)]) == 0
    assert (study_dir / "report.md").exists()
    # other checkpoint-defining settings in the same folder: a clear error
    with pytest.raises(SystemExit, match="other settings"):
        cli.main(["train", "--out", str(study_dir)] + TINY + ["--steps", "5"])


def test_errors(tmp_path):
    with pytest.raises(SystemExit, match="data-root"):
        cli.main(["train", "--preset", "paper", "--out", str(tmp_path / "p")])
    with pytest.raises(SystemExit, match="unknown criterion"):
        cli.main(["prune", "--out", str(tmp_path / "c"), "--criterion", "nope"] + TINY)
    with pytest.raises(SystemExit, match="no study"):
        cli.main(["report", "--out", str(tmp_path / "empty")])


class _Stop(Exception):
    pass


def _interrupt_after(monkeypatch, module, n):
    orig = module.batch_at
    calls = {"n": 0}

    def patched(*a, **k):
        calls["n"] += 1
        if calls["n"] > n:
            raise _Stop()
        return orig(*a, **k)

    monkeypatch.setattr(module, "batch_at", patched)


def test_resume_is_exact(tmp_path, monkeypatch):
    """A stopped baseline / pruning run resumed from its checkpoints ends exactly where an
    uninterrupted one does (same batches, same weights, same pruning decisions)."""
    import mtlkernels.study.engine as engine
    import mtlkernels.study.runner as runner

    torch.set_num_threads(1)
    cfg = make_config("demo", **TINY_CFG, criteria=["taylor"], data_cache=str(tmp_path / "data"))
    ref = Study(cfg, tmp_path / "ref", progress=False, log=lambda m: None)
    ref.run(["train", "prune"])
    out = tmp_path / "stopped"
    st = Study(cfg, out, progress=False, log=lambda m: None)
    with monkeypatch.context() as mp:
        _interrupt_after(mp, engine, 2)  # stop inside the baseline, after its checkpoint at step 2
        with pytest.raises(_Stop):
            st.train()
    assert torch.load(out / "baseline" / "ckpt.pt", weights_only=False)["step"] == 2
    with monkeypatch.context() as mp:
        _interrupt_after(mp, runner, 1)  # stop inside the pruning stage, after its first prune event
        with pytest.raises(_Stop):
            st.prune("taylor")
    state = json.loads((out / "prune-taylor" / "state.json").read_text())
    assert state["events"] == 1 and not state["done"]
    st.run(["train", "prune"])
    a = torch.load(tmp_path / "ref" / "prune-taylor" / "level0.pt", weights_only=False)
    b = torch.load(out / "prune-taylor" / "level0.pt", weights_only=False)
    assert a["architecture"] == b["architecture"]
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-4, atol=1e-5)
    ra = json.loads((tmp_path / "ref" / "prune-taylor" / "state.json").read_text())["results"]
    rb = json.loads((out / "prune-taylor" / "state.json").read_text())["results"]
    assert [r["backbone_filters"] for r in ra] == [r["backbone_filters"] for r in rb]


def test_python_m_help():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "mtlkernels", "--help"], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0
    for c in ("train", "prune", "retrain", "study", "report"):
        assert c in r.stdout


def _fake_run(c, s, li, level, params, dm):
    return {"criterion": c, "strategy": s, "level": level, "level_index": li, "filters_removed_frac": level,
            "params_total": params, "params": {t: params for t in ("seg", "depth", "normal")},
            "flops": {t: 10 * params for t in ("seg", "depth", "normal")}, "backbone_filters": 100,
            "latency_ms": 1.0, "metrics": {}, "delta_m": {"seg": dm, "depth": dm, "normal": dm, "all": dm}}


def test_findings_from_numbers():
    from mtlkernels.study.report import findings

    levels, params = [0.5, 0.75, 0.95], [5000, 2000, 400]
    it = {"taylor": [-1.0, -2.0, -30.0], "cosine": [-1.5, -2.5, -29.0]}
    re_ = {"taylor": [-0.5, -1.5, -12.0], "cosine": [-0.8, -1.0, -11.0]}
    runs = [_fake_run(c, "iterative", i, l, p, d) for c in it for i, (l, p, d) in enumerate(zip(levels, params, it[c]))]
    runs += [_fake_run(c, "reinit", i, l, p, d) for c in re_ for i, (l, p, d) in enumerate(zip(levels, params, re_[c]))]
    res = {"tasks": ["seg", "depth", "normal"], "runs": runs, "config": {"criteria": ["taylor", "cosine"]}}
    f = findings(res)
    assert f["f1"]["criteria"] == ["taylor", "cosine"] and f["f1"]["supported"]
    assert f["f2"]["supported"] and f["f3"]["supported"]
    # criteria far apart, no sharp final drop, reinit worse: every verdict flips
    it2 = {"taylor": [-1.0, -10.0, -12.0], "cosine": [-20.0, -40.0, -60.0]}
    runs = [_fake_run(c, "iterative", i, l, p, d) for c in it2 for i, (l, p, d) in enumerate(zip(levels, params, it2[c]))]
    runs += [_fake_run(c, "reinit", i, l, p, d - 50) for c in it2 for i, (l, p, d) in enumerate(zip(levels, params, it2[c]))]
    f = findings({"tasks": ["seg", "depth", "normal"], "runs": runs, "config": {"criteria": ["taylor", "cosine"]}})
    assert not f["f1"]["supported"] and not f["f2"]["supported"] and not f["f3"]["supported"]


def test_train_on_nyuv2_layout(tmp_path):
    from test_data import _write_nyu

    _write_nyu(tmp_path / "nyu", "train", 3, h=32, w=32)
    _write_nyu(tmp_path / "nyu", "val", 2, h=32, w=32)
    out = tmp_path / "o"
    assert cli.main(["train", "--out", str(out), "--data", "nyuv2", "--data-root", str(tmp_path / "nyu"), "--steps", "1",
                     "--batch-size", "2", "--latency-repeats", "1", "--no-progress", "--threads", "1"]) == 0
    res = json.loads((out / "baseline" / "result.json").read_text())
    assert set(res["metrics"]) == {"seg", "depth", "normal"}
    assert json.loads((out / "trivial.json").read_text())["class_names"][0] == "class0"
