"""Which channel groups a prune removes: pure functions of the analysis, the alive mask, the group
scores and the per-layer channel counts (no model, no tensors changed).

Groups are ranked within *units*: the groups that remove channels from exactly the same layers
(one conv with its norm; all coupled convs of a residual stage; one producer of a concatenation).
Rounding (``round_to=k``) is kept per unit, so every producer's channel count stays a multiple of
``k`` even when several producers feed one concatenation whose norm is shared by all of them.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .graph import Analysis
from .kinds import by_name

__all__ = ["units", "chunks", "select"]


def units(an: Analysis, alive: torch.Tensor) -> List[List[int]]:
    """Alive groups by the set of layers they remove channels from, in first-group order."""
    by_sig: Dict[tuple, List[int]] = {}
    for g, mem in enumerate(an.group_members):
        if alive[g]:
            by_sig.setdefault(tuple(sorted(name for name, _ in mem)), []).append(g)
    return list(by_sig.values())


def _round_sizes(an: Analysis, unit: List[int], counts: Dict[str, int], k: int) -> Optional[List[int]]:
    """(first chunk, later chunks) sizes in groups that keep the unit's producer a multiple of k;
    None when no number of its groups can (the unit is then left alone)."""
    mem = an.group_members[unit[0]]
    ref, per = next(((n, c) for n, c in mem if by_name(an.layers[n].kind).flow == "produce"), mem[0])
    step = k // math.gcd(k, per)
    first = next((i for i in range(1, step + 1) if (counts[ref] - per * i) % k == 0), None)
    return None if first is None else [first, step]


def chunks(an: Analysis, unit: List[int], gscore: Sequence[float], counts: Dict[str, int],
           round_to: Optional[int]) -> List[List[int]]:
    """The unit's finite-score groups, lowest first, cut into chunks that keep its counts rounded."""
    order = [g for g in sorted(unit, key=lambda g: (gscore[g], g)) if math.isfinite(gscore[g])]
    sizes = [1, 1] if not round_to else _round_sizes(an, unit, counts, round_to)
    if sizes is None:
        return []
    out, i, size = [], 0, sizes[0]
    while i + size <= len(order):
        out.append(order[i:i + size])
        i += size
        size = sizes[1]
    return out


def _fits(an: Analysis, chunk: List[int], counts: Dict[str, int], removed: Dict[str, int],
          min_of: Callable[[str], int]) -> Optional[Dict[str, int]]:
    need: Dict[str, int] = {}
    for g in chunk:
        for name, c in an.group_members[g]:
            need[name] = need.get(name, 0) + c
    if any(counts[n] - removed.get(n, 0) - c < min_of(n) for n, c in need.items()):
        return None
    return need


def _take(need: Dict[str, int], removed: Dict[str, int]) -> None:
    for name, c in need.items():
        removed[name] = removed.get(name, 0) + c


def select(an: Analysis, gscore: torch.Tensor, alive: torch.Tensor, counts: Dict[str, int], n: int,
           ranking: str, round_to: Optional[int], min_of: Callable[[str], int]) -> List[int]:
    """Group ids to remove: ``n`` of them (with ``round_to=k``, between ``n`` and ``n + k - 1``),
    fewer only where the minimum-channel rules stop it."""
    us = units(an, alive)
    gl = gscore.tolist()
    chunk_lists = [chunks(an, u, gl, counts, round_to) for u in us]
    if ranking == "global":
        return _select_global(an, chunk_lists, gl, counts, n, round_to, min_of)
    return _select_uniform(an, us, chunk_lists, counts, n, min_of)


def _select_global(an, chunk_lists, gl, counts, n, round_to, min_of) -> List[int]:
    cands = [(math.fsum(gl[g] for g in ch) / len(ch), ui, k, ch)
             for ui, chs in enumerate(chunk_lists) for k, ch in enumerate(chs)]
    cands.sort(key=lambda c: (c[0], c[1], c[2]))
    removed: Dict[str, int] = {}
    picked: List[int] = []
    blocked = set()
    for _, ui, _, ch in cands:
        if len(picked) >= n:
            break
        if ui in blocked:
            continue
        need = _fits(an, ch, counts, removed, min_of)
        if need is None:
            if round_to:  # the unit's later chunks assume this one was taken
                blocked.add(ui)
            continue
        _take(need, removed)
        picked.extend(ch)
    return picked


def _select_uniform(an, us, chunk_lists, counts, n, min_of) -> List[int]:
    """Every unit loses the same fraction of its groups (largest remainder), in whole chunks:
    floors first, then one more chunk for the units furthest below their share until n is met."""
    total = sum(len(u) for u in us)
    if total == 0:
        return []
    removed: Dict[str, int] = {}
    taken = [0] * len(us)        # chunks taken per unit
    got = [0] * len(us)          # groups taken per unit
    picked: List[int] = []

    def take(i: int) -> bool:
        if taken[i] >= len(chunk_lists[i]):
            return False
        ch = chunk_lists[i][taken[i]]
        need = _fits(an, ch, counts, removed, min_of)
        if need is None:
            taken[i] = len(chunk_lists[i])   # later chunks would break the rules too
            return False
        _take(need, removed)
        picked.extend(ch)
        taken[i] += 1
        got[i] += len(ch)
        return True

    want = [n * len(u) / total for u in us]
    for i in range(len(us)):
        while taken[i] < len(chunk_lists[i]) and got[i] + len(chunk_lists[i][taken[i]]) <= want[i]:
            if not take(i):
                break
    while len(picked) < n:
        order = sorted(range(len(us)), key=lambda i: (got[i] - want[i], i))
        if not any(take(i) for i in order):
            break
    return picked
