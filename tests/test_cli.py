"""The study command line at tiny settings: outputs, resume, report rebuild, clear errors."""
import csv
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtlkernels import cli
from mtlkernels.study import Study, make_config
from mtlkernels.study.config import StudyInputError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--seed", "0", "--image-size", "32", "--n-train", "8", "--n-test", "2", "--steps", "2", "--batch-size", "2",
        "--targets", "0.5", "0.9", "--prune-every", "1", "--prune-amount", "300", "--ft-steps", "1",
        "--latency-repeats", "1", "--no-progress", "--threads", "1"]  # 1 thread: far faster for tiny models
TINY_CFG = dict(image_size=32, n_train=8, n_test=2, train_steps=3, batch_size=2, levels=[0.5], prune_every=1,
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


def _usage_error(capsys, argv) -> str:
    """Run the CLI, expecting a one-line usage error (exit status 2, no traceback); its text."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_rerun_resumes_and_report_rebuilds(study_dir, capsys):
    mtime = (study_dir / "baseline" / "result.json").stat().st_mtime
    assert cli.main(["study", "--out", str(study_dir)] + TINY) == 0  # everything done: nothing retrained
    assert (study_dir / "baseline" / "result.json").stat().st_mtime == mtime
    (study_dir / "report.md").unlink()
    assert cli.main(["report", "--out", str(study_dir)]) == 0
    assert (study_dir / "report.md").exists()


@pytest.mark.parametrize("change, flag", [(["--steps", "5"], "--steps"), (["--n-test", "3"], "--n-test"),
                                          (["--threads", "2"], "--threads"), (["--seed", "1"], "--seed")])
def test_rerun_with_other_results_settings_is_refused(study_dir, capsys, change, flag):
    """Every setting that changes a result is a checkpoint key: a re-run that differs is refused, and
    config.json is left as it was."""
    config = (study_dir / "config.json").read_bytes()
    err = _usage_error(capsys, ["train", "--out", str(study_dir)] + TINY + change)
    assert "other settings" in err and flag in err
    assert (study_dir / "config.json").read_bytes() == config


def test_rerun_with_harmless_settings_keeps_config(study_dir):
    config = (study_dir / "config.json").read_bytes()
    # --criterion only picks stage folders; the baseline is done, so nothing runs
    assert cli.main(["train", "--out", str(study_dir)] + TINY + ["--criterion", "random"]) == 0
    assert (study_dir / "config.json").read_bytes() == config
    assert "differs from config.json in criteria" in (study_dir / "log.txt").read_text()


def test_checkpoint_keys_cover_every_setting():
    from mtlkernels.study.config import CHECKPOINT_KEYS, NOT_CHECKPOINT_KEYS, StudyConfig

    names = {f.name for f in dataclasses.fields(StudyConfig)}
    assert set(CHECKPOINT_KEYS) | NOT_CHECKPOINT_KEYS == names
    assert {"n_test", "eval_batch", "latency_repeats", "device", "threads", "data_root"} <= set(CHECKPOINT_KEYS)


def test_errors(tmp_path, capsys):
    assert "--data-root" in _usage_error(capsys, ["train", "--preset", "paper", "--out", str(tmp_path / "p")])
    assert "unknown nope" in _usage_error(capsys, ["prune", "--out", str(tmp_path / "c"), "--criterion", "nope"] + TINY)
    assert "no study" in _usage_error(capsys, ["report", "--out", str(tmp_path / "empty")])
    assert not any(tmp_path.iterdir())  # refused before anything was written


BAD = [(["--steps", "-5"], "--steps", ">= 1"), (["--steps", "0"], "--steps", ">= 1"),
       (["--width", "0"], "--width", "> 0"), (["--batch-size", "0"], "--batch-size", ">= 2"),
       (["--prune-amount", "0"], "--prune-amount", ">= 1"), (["--ft-steps", "-1"], "--ft-steps", ">= 0"),
       (["--targets", "0.5", "0.5"], "--targets", "strictly increasing"), (["--targets", "1.5"], "--targets", "(0, 1)"),
       (["--threads", "0"], "--threads", ">= 1"), (["--image-size", "3"], "--image-size", ">= 32"),
       (["--n-train", "0"], "--n-train", "at least 1"), (["--n-test", "0"], "--n-test", "at least 1"),
       (["--prune-every", "0"], "--prune-every", ">= 1"), (["--device", "foo"], "--device", "cpu, cuda"),
       (["--lr", "nan"], "--lr", "> 0"), (["--lr", "1e-3x"], "--lr", "> 0"), (["--seed", "-1"], "--seed", ">= 0"),
       (["--criterion", "taylor", "taylor"], "--criterion", "duplicates"),
       (["--data-root", "/nonexistent/nyu"], "--data-root", "existing folder"),
       (["--latency-repeats", "0"], "--latency-repeats", ">= 1"), (["--width", "inf"], "--width", "> 0"),
       (["--step-weights", "1", "nan", "2"], "--step-weights", "3 finite numbers >= 0"),
       (["--step-weights", "1", "-1", "2"], "--step-weights", "3 finite numbers >= 0"),
       (["--prune-weight-decay", "-1"], "--prune-weight-decay", ">= 0")]


def test_bad_criterion_settings():
    from mtlkernels.study.config import StudyInputError, check_config

    for bad in ({"nope": {}}, {"taylor": {"scope": "layer"}}, {"cosine": {"min_channels": 0}},
                {"taylor": {"carry_scores": 1}}, {"taylor": {"sideways": True}}, {"taylor": 3}):
        with pytest.raises(StudyInputError, match="criterion_settings"):
            check_config(make_config("demo", criterion_settings=bad))


@pytest.mark.parametrize("bad, flag, why", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_value_is_a_usage_error(tmp_path, capsys, bad, flag, why):
    out = tmp_path / "o"
    err = _usage_error(capsys, ["train", "--out", str(out)] + TINY + bad)
    assert flag in err and why in err, err
    assert not out.exists()  # refused before anything ran


def test_bad_out_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert "--out" in _usage_error(capsys, ["train", "--out", str(f)] + TINY)
    assert "--out" in _usage_error(capsys, ["train", "--out", str(f / "below")] + TINY)
    err = _usage_error(capsys, ["train", "--out", "/proc/self/mtlkernels-out"] + TINY)
    assert "--out" in err and "cannot create" in err
    nyu = tmp_path / "nyu"
    nyu.mkdir()  # no train/ val/ inside
    err = _usage_error(capsys, ["train", "--out", str(tmp_path / "n"), "--data", "nyuv2", "--data-root", str(nyu)]
                       + TINY)
    assert "--data-root" in err and "train" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_out_is_a_usage_error(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert "not writable" in _usage_error(capsys, ["train", "--out", str(ro)] + TINY)
    finally:
        ro.chmod(0o755)


_FULL_DISK = """
import resource, signal, sys
from mtlkernels import cli
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
sys.exit(cli.main(sys.argv[1:]))
"""


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_full_disk_is_one_line_and_resumable(tmp_path):
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-c", _FULL_DISK, "train", "--out", str(out)] + TINY, capture_output=True,
                       text=True, env=_env(), cwd=ROOT, timeout=300)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and len(err) == 1 and "cannot write" in err[0] and "--out" in err[0]
    assert not list(out.rglob(".tmp-*"))
    assert cli.main(["train", "--out", str(out)] + TINY) == 0  # with room again, the run resumes


_HOLD = ("import os, signal, sys; from pathlib import Path; from mtlkernels.study.outdir import OutLock; "
         "l = OutLock(Path(sys.argv[1])); print('locked', flush=True); "
         "sys.stdin.read() if sys.argv[2] == 'wait' else os.kill(os.getpid(), signal.SIGKILL)")


def test_second_run_on_one_out_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out), "wait"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = _usage_error(capsys, ["train", "--out", str(out)] + TINY)
        assert "another run" in err and f"pid {holder.pid}" in err
        assert not (out / "config.json").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # killed with the lock held: the kernel drops a dead process's flock, so nothing stale blocks
    killed = subprocess.run([sys.executable, "-c", _HOLD, str(out), "die"], capture_output=True, env=_env(),
                            cwd=ROOT, timeout=120)
    assert killed.returncode == -9 and (out / ".lock").exists()
    assert cli.main(["train", "--out", str(out)] + TINY) == 0


def test_two_studies_in_one_process_on_one_out(tmp_path):
    cfg = make_config("demo", **TINY_CFG, criteria=["taylor"], threads=1)
    with Study(cfg, tmp_path / "o", progress=False, log=lambda m: None):
        with pytest.raises(StudyInputError, match="another run"):
            Study(cfg, tmp_path / "o", progress=False, log=lambda m: None)
    Study(cfg, tmp_path / "o", progress=False, log=lambda m: None).close()  # released on leaving the with


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


TIMING = {"train_seconds", "latency_ms", "seconds"}


def _untimed(x):
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [_untimed(v) for v in x]
    return x


def _json(path):
    return _untimed(json.loads(Path(path).read_text()))


def _tiny_study(tmp_path, name):
    torch.set_num_threads(1)
    cfg = make_config("demo", **TINY_CFG, criteria=["taylor"], data_cache=str(tmp_path / "data"), threads=1)
    return Study(cfg, tmp_path / name, progress=False, log=lambda m: None)


def test_resume_is_exact(tmp_path, monkeypatch):
    """A stopped baseline / pruning run resumed from its checkpoints ends exactly where an
    uninterrupted one does (same batches, same weights, same pruning decisions, same results)."""
    import mtlkernels.study.engine as engine
    import mtlkernels.study.runner as runner

    ref = _tiny_study(tmp_path, "ref")
    ref.run(["train", "prune"])
    out = tmp_path / "stopped"
    st = _tiny_study(tmp_path, "stopped")
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
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    # train_losses averages the last steps of the whole run, not of the resumed process only
    assert _json(tmp_path / "ref" / "baseline" / "result.json") == _json(out / "baseline" / "result.json")
    assert _json(tmp_path / "ref" / "prune-taylor" / "state.json")["results"] == \
        _json(out / "prune-taylor" / "state.json")["results"]


def test_stop_between_model_and_result_of_the_baseline(tmp_path, monkeypatch):
    import mtlkernels.study.runner as runner

    ref = _tiny_study(tmp_path, "ref")
    ref.train()
    st = _tiny_study(tmp_path, "stopped")
    with monkeypatch.context() as mp:
        mp.setattr(runner, "evaluate", lambda *a, **k: (_ for _ in ()).throw(_Stop()))  # after model.pt
        with pytest.raises(_Stop):
            st.train()
    assert (tmp_path / "stopped" / "baseline" / "model.pt").exists()
    assert not (tmp_path / "stopped" / "baseline" / "result.json").exists()
    res = st.train()
    assert res["train_losses"] and _untimed(res) == _json(tmp_path / "ref" / "baseline" / "result.json")


def test_retrained_level_is_committed_whole(tmp_path, monkeypatch):
    """level<i>.json marks a retrained level done: it is written after the level's model, so a stop
    between the two redoes the level instead of skipping it without its model."""
    import mtlkernels.study.runner as runner

    st = _tiny_study(tmp_path, "o")
    st.prune("taylor")
    orig = runner.save_pruned

    def failing(model, path, extra=None):
        if Path(path).parent.name == "retrain-taylor" and Path(path).name == "level0.pt":
            raise _Stop()
        return orig(model, path, extra)

    with monkeypatch.context() as mp:
        mp.setattr(runner, "save_pruned", failing)
        with pytest.raises(_Stop):
            st.retrain("taylor")
    st.retrain("taylor")
    d = tmp_path / "o" / "retrain-taylor"
    assert (d / "level0.json").exists() and (d / "level0.pt").exists() and not (d / "level0-ckpt.pt").exists()


def test_python_m_help():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "mtlkernels", "--help"], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0
    for c in ("train", "prune", "retrain", "study", "report"):
        assert c in r.stdout


def test_train_on_nyuv2_layout(tmp_path):
    from test_data import _write_nyu

    _write_nyu(tmp_path / "nyu", "train", 3, h=32, w=32)
    _write_nyu(tmp_path / "nyu", "val", 2, h=32, w=32)
    out = tmp_path / "o"
    assert cli.main(["train", "--out", str(out), "--data", "nyuv2", "--data-root", str(tmp_path / "nyu"), "--steps", "1",
                     "--batch-size", "2", "--latency-repeats", "1", "--no-progress", "--threads", "1", "--seed", "0"]) == 0
    res = json.loads((out / "baseline" / "result.json").read_text())
    assert set(res["metrics"]) == {"seg", "depth", "normal"}
    assert json.loads((out / "trivial.json").read_text())["class_names"][0] == "class0"


def test_corrupted_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["train", "--out", str(out)] + TINY) == 0
    (out / "baseline" / "result.json").unlink()  # as if killed before the commit: the checkpoint is read
    ckpt = out / "baseline" / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    capsys.readouterr()
    assert cli.main(["train", "--out", str(out)] + TINY) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ckpt) in err[0] and "delete that file" in err[0]


def test_several_seeds(tmp_path, capsys):
    """--seeds: one one-seed study folder per seed (run 2 at a time), the results over seeds in --out
    (summary with intervals, the findings' tests, the control); a re-run asking other seeds is refused."""
    out = tmp_path / "ms"
    args = [a for a in TINY if a not in ("--seed",)][1:] + ["--criterion", "taylor", "cosine", "--targets", "0.5"]
    assert cli.main(["study", "--out", str(out), "--seeds", "0", "1", "--jobs", "2"] + args) == 0
    res = json.loads((out / "results.json").read_text())
    assert [s["config"]["seed"] for s in res["seeds"]] == [0, 1]
    assert all((out / f"seed{k}" / "baseline" / "result.json").exists() for k in (0, 1))
    assert all(s["control"]["strategy"] == "control" for s in res["seeds"])
    row = res["summary"]["levels"][0]
    assert row["n"] == 2 and math.isfinite(row["delta_m"]["all"]["lo"])
    assert res["findings"]["f1"]["points"] and "TOST" in (out / "report.md").read_text()
    # distinct re-init seeds per criterion: the two re-initialised nets differ even in one architecture
    w = [torch.load(out / "seed0" / f"retrain-{c}" / "level0.pt", weights_only=False) for c in ("taylor", "cosine")]
    assert w[0]["state_dict"]["backbone.0.bias"].shape != w[1]["state_dict"]["backbone.0.bias"].shape or not \
        torch.equal(w[0]["state_dict"]["backbone.0.weight"], w[1]["state_dict"]["backbone.0.weight"])
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["seed"] for r in rows} == {"0", "1"}
    assert "other --out" in _usage_error(capsys, ["study", "--out", str(out), "--seeds", "0", "2"] + args)
    assert "give one" in _usage_error(capsys, ["study", "--out", str(out), "--seeds", "0", "--seed", "1"] + args)
    (out / "report.md").unlink()
    assert cli.main(["report", "--out", str(out)]) == 0 and (out / "report.md").exists()


def test_protocol_authors(tmp_path):
    """--protocol authors: the feasible parts of the authors' protocol reach each criterion's pruner
    (Taylor: group scope, scores carried across prunes, floor 1; cosine: per weight filter, reset at
    each prune, floor 5; both plain means) and the optimizer between prunes (AdamW lr 5e-5, decay
    0.01, stepping on 2 3 2 x the task gradients); an explicit flag still wins over the protocol."""
    from mtlkernels.study.config import PROTOCOLS

    c = make_config("demo", "authors", min_channels=3)
    assert (c.score_momentum, c.prune_optimizer, c.prune_lr, c.min_channels) == (None, "adamw", 5e-5, 3)
    assert all("min_channels" not in kw for kw in c.criterion_settings.values())  # the flag wins everywhere
    assert c.criterion_settings["cosine"]["scope"] == "filter"
    assert make_config("paper", "authors").min_channels == PROTOCOLS["authors"]["min_channels"] == 1
    out = tmp_path / "a"
    assert cli.main(["prune", "--out", str(out), "--protocol", "authors", "--criterion", "taylor", "cosine"]
                    + TINY) == 0
    want = {"taylor": ("group", True, 1), "cosine": ("filter", False, 5)}
    for crit, (scope, carry, floor) in want.items():
        state = json.loads((out / f"prune-{crit}" / "state.json").read_text())
        ck = torch.load(out / f"prune-{crit}" / state["ckpt"], weights_only=False)
        pc = ck["pruner"]["config"]
        assert (pc["scope"], pc["carry_scores"], pc["min_channels"]) == (scope, carry, floor), crit
        assert pc["score_accumulation"] == "mean" and pc["step_weights"] == [2.0, 3.0, 2.0]
        group = ck["optimizer"]["param_groups"][0]
        assert group["lr"] == 5e-5 and group["decoupled_weight_decay"] and group["weight_decay"] == 0.01  # AdamW
    assert json.loads((out / "config.json").read_text())["protocol"] == "authors"


def test_settings_added_later_resume_older_runs(tmp_path):
    """A folder written before step_weights, prune_weight_decay and criterion_settings existed ran
    with their defaults: it still resumes (and one that recorded another value does not)."""
    out = tmp_path / "old"
    assert cli.main(["train", "--out", str(out)] + TINY) == 0
    cfg = json.loads((out / "config.json").read_text())
    for k in ("step_weights", "prune_weight_decay", "criterion_settings"):
        del cfg[k]
    (out / "config.json").write_text(json.dumps(cfg))
    assert cli.main(["train", "--out", str(out)] + TINY) == 0
    cfg["step_weights"] = [2.0, 3.0, 2.0]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit):
        cli.main(["train", "--out", str(out)] + TINY)


def test_publish_a_second_study(study_dir, tmp_path, monkeypatch):
    """`report --publish long` copies the run's results and figure to docs/ under that name and fills
    the README's study-results-long block; the main job's block and the pilots stay as they were."""
    from mtlkernels.study.report import results_markers

    root = Path(__file__).resolve().parents[1]
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    for f in ("study_results.json", "study_pilots.json"):
        shutil.copyfile(root / "docs" / f, repo / "docs" / f)
    begin, end = results_markers("long")
    readme = (root / "README.md").read_text() + f"\n{begin}\nstale\n{end}\n"
    (repo / "README.md").write_text(readme)
    monkeypatch.chdir(repo)
    assert cli.main(["report", "--out", str(study_dir), "--publish", "long"]) == 0
    assert (repo / "docs" / "study_results_long.json").exists() and (repo / "docs" / "study_delta_m_long.png").exists()
    text = (repo / "README.md").read_text()
    block = text[text.index(begin):text.index(end)]
    assert "Generated from `docs/study_results_long.json`" in block and "stale" not in block
    assert text[:text.index(begin)] == readme[:readme.index(begin)]   # the rest is untouched
    assert cli.main(["report", "--readme", "--check"]) == 0
