"""Metrics against hand computations; delta_m; trivial predictors."""
import math

import pytest
import torch

from mtlkernels.study import metrics as M


def test_seg_metrics_by_hand():
    # 1 image 2x2, 3 classes; gt [[0,1],[2,255]]; pred argmax [[0,1],[1,0]]
    gt = torch.tensor([[[0, 1], [2, 255]]])
    pred = torch.zeros(1, 3, 2, 2)
    pred[0, 0, 0, 0] = pred[0, 1, 0, 1] = pred[0, 1, 1, 0] = pred[0, 0, 1, 1] = 5.0
    ev = M.Evaluator(["seg"], 3)
    ev.update({"seg": pred}, {"seg": gt})
    r = ev.compute()["seg"]
    # valid pixels: (0->0), (1->1), (2->1): acc 2/3; IoU: c0 1/1, c1 1/2, c2 0/1
    assert r["pixel_acc"] == pytest.approx(100 * 2 / 3)
    assert r["miou"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert r["loss"] == pytest.approx(M.seg_loss(pred, gt).item())


def test_depth_metrics_ignore_invalid():
    gt = torch.tensor([[[[1.0, 2.0], [4.0, 0.0]]]])
    p = torch.tensor([[[[1.5, 2.0], [3.0, 9.0]]]])
    ev = M.Evaluator(["depth"], 2)
    ev.update({"depth": p}, {"depth": gt})
    r = ev.compute()["depth"]
    assert r["abs_err"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert r["rel_err"] == pytest.approx((0.5 / 1 + 0 + 1 / 4) / 3)
    assert M.depth_loss(p, gt).item() == pytest.approx(0.5)


def test_normal_metrics_angles():
    # three valid pixels at 0, 10 and 45 degrees from the gt, one invalid
    ang = torch.tensor([0.0, 10.0, 45.0, 0.0]) * math.pi / 180
    gt = torch.zeros(1, 3, 1, 4)
    gt[0, 2, 0, :3] = 1.0
    p = torch.stack([torch.sin(ang), torch.zeros(4), torch.cos(ang)]).view(1, 3, 1, 4) * 3.0  # unnormalised
    ev = M.Evaluator(["normal"], 2)
    ev.update({"normal": p}, {"normal": gt})
    r = ev.compute()["normal"]
    assert r["mean_angle"] == pytest.approx(55 / 3, abs=1e-3)
    assert r["median_angle"] == pytest.approx(10.0, abs=0.02)
    assert r["within_11.25"] == pytest.approx(200 / 3)
    assert r["within_30"] == pytest.approx(200 / 3)
    assert M.normal_loss(p, gt).item() == pytest.approx((1 - math.cos(ang[1]) + 1 - math.cos(ang[2])) / 3, abs=1e-5)


def test_delta_m_sign_corrected():
    base = {"seg": {"miou": 50.0, "pixel_acc": 80.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2}}
    same = M.delta_m(base, base)
    assert same["all"] == pytest.approx(0.0)
    better = {"seg": {"miou": 55.0, "pixel_acc": 88.0}, "depth": {"abs_err": 0.45, "rel_err": 0.18}}
    d = M.delta_m(better, base)
    assert d["seg"] == pytest.approx(10.0)
    assert d["depth"] == pytest.approx(10.0)  # lower error counts as an improvement
    assert d["all"] == pytest.approx(10.0)


def test_trivial_predictors():
    from mtlkernels.study.data import ProceduralScenes

    ds = ProceduralScenes("train", 8, 32, seed=0, cache_dir=False)
    st = M.trivial_predictions(ds, ds.num_classes)
    b = ds.get(slice(0, 4))
    out = M.trivial_outputs(st, b, ds.num_classes)
    assert out["seg"].argmax(1).unique().tolist() == [int(st["seg"])]
    assert torch.allclose(out["normal"].norm(dim=1), torch.ones(1))
    ev = M.Evaluator(["seg", "depth", "normal"], ds.num_classes)
    ev.update(out, b)
    r = ev.compute()
    assert 0 < r["seg"]["pixel_acc"] < 100
    assert r["depth"]["abs_err"] > 0
    assert "mIoU" in M.format_metrics(r)
