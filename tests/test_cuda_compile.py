"""Every .cu kernel compiles with nvcc for the targets of setup.py (SASS sm_80 and sm_90, PTX
compute_90), without torch headers, and no kernel instance spills or keeps a stack frame.

Runs wherever nvcc is on the PATH (CI and developer machines have it even without a GPU). The ptxas
resource report (registers, spills, shared memory) of each kernel goes to build/ptxas/<name>.txt;
bench/results/ptxas_report.txt holds the committed copy (``python tests/test_cuda_compile.py``
refreshes it).
"""
import ast
import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU_FILES = sorted(glob.glob(os.path.join(ROOT, "csrc", "*", "cuda", "*.cu")))
NVCC = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None)


def _torch_nvcc_flags():
    """The flags torch.utils.cpp_extension gives nvcc in a real build (-D__CUDA_NO_HALF_OPERATORS__
    and friends), so a kernel relying on implicit half/bfloat16 conversions fails here, not on a GPU."""
    try:
        from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
    except ImportError:  # pragma: no cover - torch always has it; the script mode may lack torch
        return ["--expt-relaxed-constexpr"]
    return list(COMMON_NVCC_FLAGS)


def setup_arch_list():
    """setup.py's DEFAULT_CUDA_ARCH_LIST (read, not imported: importing setup.py runs setup())."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["DEFAULT_CUDA_ARCH_LIST"]:
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no DEFAULT_CUDA_ARCH_LIST")


def gencode_flags(arch_list):
    """The -gencode flags torch.utils.cpp_extension derives from TORCH_CUDA_ARCH_LIST in a build."""
    from torch.utils.cpp_extension import _get_cuda_arch_flags

    old = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    try:
        return _get_cuda_arch_flags()
    finally:
        if old is None:
            del os.environ["TORCH_CUDA_ARCH_LIST"]
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old


def test_default_targets_embed_ptx_for_the_newest():
    """SASS alone fails on every GPU outside the list ("no kernel image"); PTX of the newest target
    lets the driver compile the kernels for newer GPUs."""
    flags = gencode_flags(setup_arch_list())
    sass = sorted(int(f.split("code=sm_")[1]) for f in flags if "code=sm_" in f)
    ptx = [int(f.split("code=compute_")[1]) for f in flags if "code=compute_" in f]
    assert {80, 90} <= set(sass) and ptx == [max(sass)], flags


def compile_cu(path, out_dir):
    cmd = [NVCC, "-std=c++17", "-O3", *_torch_nvcc_flags(), "-lineinfo",
           "-I", os.path.join(ROOT, "csrc", "include"), *gencode_flags(setup_arch_list()),
           "-Xptxas", "-v", "-c", path, "-o", os.path.join(out_dir, os.path.basename(path) + ".o")]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_cu_files_found():
    assert len(CU_FILES) == 3, CU_FILES


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("path", CU_FILES, ids=[os.path.basename(p) for p in CU_FILES])
def test_nvcc_compiles(path, tmp_path):
    import re

    with open(path) as f:
        src = f.read()
    assert not re.search(r"#\s*include\s*[<\"](torch|ATen|c10)/", src), "kernels must not include torch headers"
    res = compile_cu(path, str(tmp_path))
    assert res.returncode == 0, res.stderr[-4000:]
    report_dir = os.path.join(ROOT, "build", "ptxas")
    os.makedirs(report_dir, exist_ok=True)
    with open(os.path.join(report_dir, os.path.basename(path) + ".txt"), "w") as f:
        f.write(res.stderr)
    # A spill puts the accumulators' FMAs through local memory, and a stack frame makes the driver
    # reserve stack x resident threads of local memory at the first launch (issue 11 item 2: ~1 GB
    # for the old T=16 path): no kernel instance may have either, on any target.
    functions = ptxas_functions(res.stderr)
    assert functions, "no ptxas function report parsed: did the -v output format change?"
    bad = [f for f in functions if f["stack"] or f["spill_stores"] or f["spill_loads"]]
    assert not bad, "kernels that spill or keep a stack frame:\n" + "\n".join(
        f"{f['arch']} {f['name']}: {f['stack']} B stack, {f['spill_stores']} B spill stores, "
        f"{f['spill_loads']} B spill loads" for f in bad)


def ptxas_functions(report: str):
    """Every function of a ``ptxas -v`` report: name, target, stack frame and spill bytes."""
    import re

    out, arch = [], None
    name = None
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(\w+)'", line)
        if m:
            arch = m.group(2)
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name is not None:
            out.append({"name": name, "arch": arch, "stack": int(m.group(1)),
                        "spill_stores": int(m.group(2)), "spill_loads": int(m.group(3))})
            name = None
    return out


def test_ptxas_parser_catches_a_spill():
    """The spill check reads what ptxas prints (the T=16 instance before the tile path, abridged)."""
    report = (
        "ptxas info    : Compiling entry function '_Z6kernelI6__halfEv' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z6kernelI6__halfEv\n"
        "    3744 bytes stack frame, 18092 bytes spill stores, 17620 bytes spill loads\n"
        "ptxas info    : Compiling entry function '_Z6kernelIfEv' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z6kernelIfEv\n"
        "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n")
    got = ptxas_functions(report)
    assert [(f["name"], f["arch"], f["stack"], f["spill_stores"]) for f in got] == [
        ("_Z6kernelI6__halfEv", "sm_90", 3744, 18092), ("_Z6kernelIfEv", "sm_90", 0, 0)]


BINDINGS = sorted(glob.glob(os.path.join(ROOT, "csrc", "*", "cuda", "*_cuda.cpp")))


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("path", BINDINGS, ids=[os.path.basename(p) for p in BINDINGS])
def test_cuda_bindings_parse(path, tmp_path):
    """The thin torch bindings of the CUDA kernels compile (syntax and types) against the installed
    torch's headers and the toolkit's cuda_runtime.h, even on a CPU-only torch: its wheel lacks one
    generated CMake header, stubbed here."""
    import sysconfig

    from torch.utils import cpp_extension

    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    candidates = [os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(NVCC))), "include")]
    candidates += [os.path.join(os.environ[v], "include") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates += sorted(glob.glob("/usr/local/cuda*/include"), reverse=True)
    found = [c for c in candidates if os.path.exists(os.path.join(c, "cuda_runtime.h"))]
    if not found:
        pytest.skip("no cuda_runtime.h found beside nvcc")
    cuda_inc = found[0]
    cmd = ["g++", "-std=c++20", "-fsyntax-only", "-DMTL_WITH_CUDA", f"-I{tmp_path}", f"-I{cuda_inc}",
           "-I", os.path.join(ROOT, "csrc", "include"), "-I", sysconfig.get_paths()["include"]]
    cmd += [f"-I{p}" for p in cpp_extension.include_paths()] + [path]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]


if __name__ == "__main__":  # refresh bench/results/ptxas_report.txt
    import tempfile

    if NVCC is None:
        sys.exit("nvcc not found")
    version = subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    lines = [f"# ptxas resource report ({version}); TORCH_CUDA_ARCH_LIST={setup_arch_list()}; regenerate: python tests/test_cuda_compile.py\n"]
    with tempfile.TemporaryDirectory() as d:
        for p in CU_FILES:
            r = compile_cu(p, d)
            lines.append(f"\n## {os.path.relpath(p, ROOT)}\n")
            lines += [ln + "\n" for ln in r.stderr.splitlines() if "ptxas" in ln or "spill" in ln or "Compiling" in ln]
    out = os.path.join(ROOT, "bench", "results", "ptxas_report.txt")
    with open(out, "w") as f:
        f.writelines(lines)
    print("wrote", out)
