"""The GPU benchmark script runs end to end (on the CPU, tiny networks), so the first session with a
GPU does not spend its device time on a broken script. Checks the structure of what it writes, not
speed."""
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load_gpu_bench():
    return _load("gpu_bench")


def test_gpu_bench_smoke_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    _load_gpu_bench().main(["--device", "cpu", "--smoke", "--backends", "cpu", "--reps", "2",
                                "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["copy_bandwidth_GBps"] > 0 and res["backends"] == ["cpu"]
    stats = [c for c in res["cases"] if c["op"] == "filter_stats_many"]
    gathers = [c for c in res["cases"] if c["op"] == "gather_many"]
    assert [(c["T"], c["dtype"]) for c in stats] == [(3, "float32"), (2, "bfloat16")]
    for c in stats:
        assert set(c["providers"]) == {"cpu", "cpu (op only)", "reference"}
        for r in c["providers"].values():
            assert r["median_ms"] > 0 and r["GBps"] > 0 and r["fraction_of_copy_bw"] > 0
        assert c["providers"]["cpu"]["time_vs_best_kernel"] == 1.0
        assert c["bytes_read"] == (c["T"] + 1) * c["weights"] * (4 if c["dtype"] == "float32" else 2)
    assert len(gathers) == 1 and set(gathers[0]["providers"]) == {"cpu", "reference"}


def test_pruner_step_bench_smoke(tmp_path):
    out = tmp_path / "step.json"
    res = _load("pruner_step_bench").main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    assert set(res["step"]) == {"plain", "filter", "group"} and set(res["statistics"]) == {"filter", "group"}
    assert all(v["median_ms"] > 0 for v in res["step"].values())
    assert res["ratios"]["step_group_over_filter"] > 0
