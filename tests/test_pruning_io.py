"""Checkpoint files of mtlkernels.pruning: integrity checks, errors that name the file and the
cause, the architecture fingerprint, atomic writes, stale temporaries and a writer killed at each
boundary of ``MultiTaskPruner.save``."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

from mtlkernels.pruning import (CheckpointError, MultiTaskPruner, atomic_save,  # noqa: E402
                                atomic_write_text, load_pruned, read_checkpoint, remove_stale_temps,
                                save_pruned)

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """Two-task net whose non-channel hyperparameters the tests vary one at a time."""

    def __init__(self, k=3, stride=1, dilation=1, groups=1, bias=False, eps=1e-5, act=nn.ReLU):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, k, stride, padding=dilation * (k // 2), dilation=dilation,
                                            bias=bias), nn.BatchNorm2d(8, eps=eps), act())
        self.mid = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        self.heads = nn.ModuleDict({t: nn.Conv2d(8, 2, 1) for t in ("a", "b")})

    def forward(self, x):
        f = torch.relu(self.mid(self.stem(x)))
        return {t: h(f) for t, h in self.heads.items()}


def _at(path):
    return re.escape(str(path))


def _x():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _saved(tmp_path, name="m.pt"):
    torch.manual_seed(0)
    m = Tiny()
    path = tmp_path / name
    save_pruned(m, path)
    return m, path


def _flip_weight_bytes(path, weight):
    data = bytearray(path.read_bytes())
    off = data.find(weight.detach().numpy().tobytes()[:64])
    assert off > 0
    data[off:off + 32] = bytes(b ^ 0xFF for b in data[off:off + 32])
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_weight_record_are_refused(tmp_path):
    m, path = _saved(tmp_path)
    _flip_weight_bytes(path, m.mid.weight)
    with pytest.raises(CheckpointError, match=rf"{_at(path)}: corrupted: SHA-256 checksum mismatch"):
        load_pruned(Tiny, path)


def test_legacy_file_without_checksum_loads_and_its_crc_is_checked(tmp_path):
    m, path = _saved(tmp_path)
    ckpt = read_checkpoint(path)
    del ckpt["fingerprint"]  # as the previous format wrote it: plain torch.save, no fingerprint
    torch.save(ckpt, path)
    x = _x()
    torch.testing.assert_close(load_pruned(Tiny, path).eval()(x), m.eval()(x), rtol=0, atol=0)
    _flip_weight_bytes(path, m.mid.weight)
    with pytest.raises(CheckpointError, match=rf"{_at(path)}: corrupted: CRC-32 mismatch"):
        load_pruned(Tiny, path)


def test_new_files_stay_readable_by_plain_torch_load(tmp_path):
    m, path = _saved(tmp_path)
    assert torch.equal(torch.load(path, weights_only=False)["state_dict"]["mid.weight"], m.mid.weight)


@pytest.mark.parametrize("cut, cause", [(0, "empty"), (100, "truncated"), (-40, "truncated"),
                                        (-1, "truncated")])
def test_empty_or_truncated(tmp_path, cut, cause):
    _, path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut else b"")
    with pytest.raises(CheckpointError, match=rf"{_at(path)}: {cause}"):
        load_pruned(Tiny, path)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.pt"
    atomic_write_text(path, '{"not": "a checkpoint"}')
    with pytest.raises(CheckpointError, match=rf"{_at(path)}: not a checkpoint"):
        load_pruned(Tiny, path)


def test_wrong_kind_of_file(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(CheckpointError, match=rf"{_at(path)}: wrong kind of file: .* it is a "
                                              r"pruned-model file \(save_pruned\); read it with load_pruned"):
        MultiTaskPruner.resume(path, Tiny, example_inputs=_x())
    other = tmp_path / "other.pt"
    atomic_save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match=rf"{_at(other)}: wrong kind of file: .*another program"):
        load_pruned(Tiny, other)
    pr = MultiTaskPruner(Tiny(), ["a", "b"], "l1", example_inputs=_x())
    pr.save(tmp_path / "state.pt", include_model=False)
    with pytest.raises(CheckpointError, match="holds no model"):
        load_pruned(Tiny, tmp_path / "state.pt")


@pytest.mark.parametrize("kw, module, what", [
    (dict(dilation=2), "stem.0", "dilation"), (dict(k=5), "stem.0", "kernel_size"),
    (dict(stride=2), "stem.0", "stride"), (dict(bias=True), "stem.0", "parameters"),
    (dict(eps=1e-3), "stem.1", "eps"), (dict(act=nn.GELU), "stem.2", "type"),
    (dict(groups=2), "mid", "groups"),
])
def test_a_constructor_with_other_hyperparameters_is_refused(tmp_path, kw, module, what):
    _, path = _saved(tmp_path)
    with pytest.raises(CheckpointError, match=rf"{_at(path)}: .*module '{module}' .*{what}"):
        load_pruned(lambda: Tiny(**kw), path)


def test_resume_refuses_another_dilation_and_accepts_the_right_one(tmp_path):
    torch.manual_seed(0)
    x = _x()
    pr = MultiTaskPruner(Tiny(), ["a", "b"], "l1", example_inputs=x, min_channels=2)
    pr.prune(3)
    path = tmp_path / "pruner.pt"
    pr.save(path)
    with pytest.raises(CheckpointError, match=rf"{_at(path)}: .*module 'stem.0' \(Conv2d\): "
                                              r"dilation \[1, 1\] in the file, \[2, 2\] here"):
        MultiTaskPruner.resume(path, lambda: Tiny(dilation=2), example_inputs=x)
    with pytest.raises(CheckpointError, match=rf"{_at(path)}: .*'stem.0'.*dilation"):
        MultiTaskPruner.load(path, Tiny(dilation=2), example_inputs=x)
    back = MultiTaskPruner.resume(path, Tiny, example_inputs=x)
    assert back.history == pr.history
    torch.testing.assert_close(back.model.eval()(x), pr.model.eval()(x), rtol=0, atol=0)


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temps_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        dead = [tmp_path / f".tmp-a.pt.{_dead_pid()}.0123abcd", sub / f".tmp-b.json.{_dead_pid()}.89abcdef"]
        keep = [tmp_path / f".tmp-a.pt.{live.pid}.0123abcd", tmp_path / f".tmp-a.pt.{os.getpid()}.0123abcd",
                tmp_path / ".tmp-a.ptxyz123", tmp_path / "a.pt"]
        for p in dead + keep:
            p.write_bytes(b"x")
        assert sorted(remove_stale_temps(tmp_path)) == sorted(map(str, dead))
        assert all(p.exists() for p in keep)
    finally:
        live.communicate(b"")


def test_a_write_removes_the_stale_temps_of_its_target(tmp_path):
    stale = tmp_path / f".tmp-r.txt.{_dead_pid()}.0123abcd"
    other = tmp_path / f".tmp-s.txt.{_dead_pid()}.0123abcd"
    stale.write_bytes(b"x")
    other.write_bytes(b"x")
    atomic_write_text(tmp_path / "r.txt", "héllo\n")
    assert (tmp_path / "r.txt").read_text(encoding="utf-8") == "héllo\n"
    assert not stale.exists() and other.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["r.txt", other.name])


# ------------------------------------------------------------------ a writer killed inside pruner.save
from _pruner_fault_run import run as _fault_run  # noqa: E402


@pytest.fixture(scope="module")
def uninterrupted():
    return _fault_run()


@pytest.mark.parametrize("point, step_on_disk, temp_left", [
    ("before-temp-write", 1, False), ("mid-temp-write", 1, True), ("after-temp-write", 1, True),
    ("after-replace", 3, False),
])
def test_pruner_save_killed_at_each_boundary_resumes_exactly(tmp_path, uninterrupted, point, step_on_disk,
                                                            temp_left):
    ckpt = tmp_path / "pruner.pt"
    child = os.path.join(os.path.dirname(__file__), "_pruner_fault_run.py")
    env = dict(os.environ, MTLKERNELS_FAULT=f"{point}@2")  # the second save, after step 3
    p = subprocess.Popen([sys.executable, child, str(ckpt)], env=env, stderr=subprocess.PIPE)
    err = p.communicate(timeout=300)[1]
    assert p.returncode == -9, err.decode()[-2000:]
    temps = [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    assert bool(temps) == temp_left and all(f.startswith(f".tmp-pruner.pt.{p.pid}.") for f in temps)
    assert remove_stale_temps(tmp_path) == [str(tmp_path / f) for f in temps]
    pr = _fault_run(resume_from=ckpt)
    assert read_checkpoint(ckpt)["extra"]["step"] == step_on_disk
    assert pr.history == uninterrupted.history and len(pr.history) == 2
    a, b = pr.model.state_dict(), uninterrupted.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
