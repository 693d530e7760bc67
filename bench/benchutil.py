"""Helpers shared by the CPU benchmark scripts: the machine's name and how results are written."""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Optional


def cpu_name() -> str:
    """The CPU model (results are only comparable on one machine)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def emit(res: dict, out: Optional[Path], quiet: bool = False) -> dict:
    """Print the result as JSON and write it to ``out`` (when given)."""
    text = json.dumps(res, indent=1)
    if not quiet:
        print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return res


def timing_args(doc: str, rounds: int) -> argparse.ArgumentParser:
    """The common flags of the CPU timing scripts: ``--rounds`` (default ``rounds``), ``--threads``
    (intra-op threads, default 1), ``--smoke`` (tiny settings: checks the script, not speed), ``--out``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path)
    return ap
