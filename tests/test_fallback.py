"""Without the compiled extension, `import mtlkernels` still works, warns once with the reason, and
every op falls back to the reference."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import sys, warnings
sys.modules["mtlkernels._C"] = None          # makes `from . import _C` raise ImportError
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import torch, mtlkernels
    from mtlkernels import _backend
msgs = [str(x.message) for x in w if "mtlkernels._C" in str(x.message)]
assert len(msgs) == 1, msgs
assert "falls back" in msgs[0] or "fall back" in msgs[0], msgs[0]
assert not mtlkernels.has_compiled_ops()
assert _backend.resolve("auto", torch.device("cpu")) == "reference"
s = mtlkernels.filter_stats(torch.randn(4, 3), torch.randn(2, 4, 3))
assert s.dot.shape == (4, 2)
try:
    mtlkernels.filter_stats(torch.randn(4, 3), torch.randn(2, 4, 3), backend="cpu")
except RuntimeError as e:
    assert "mtlkernels._C is not loaded" in str(e), e
else:
    raise AssertionError("backend='cpu' must fail without _C")
print("ok")
"""


def test_import_without_extension_falls_back():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
