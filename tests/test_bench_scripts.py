"""The GPU benchmark script runs end to end (on the CPU, tiny networks), so the first session with a
GPU does not spend its device time on a broken script. Checks the structure of what it writes, not
speed."""
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_gpu_bench():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    spec = importlib.util.spec_from_file_location("gpu_bench", os.path.join(ROOT, "bench", "gpu_bench.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
