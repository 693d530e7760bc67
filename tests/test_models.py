"""Models: output shapes, fx-traceability, configuration round trip, and the pruning driver on them."""
import pytest
import torch
import torch.fx

from mtlkernels.study.models import DEFAULT_TASKS, ASPPHead, ResNetMTL, VGG16MTL, build_model

TASKS = {"seg": 7, "depth": 1, "normal": 3}


def _check_outputs(out, n, size):
    assert set(out) == set(TASKS)
    assert out["seg"].shape == (n, 7, size, size)
    assert out["depth"].shape == (n, 1, size, size)
    assert out["normal"].shape == (n, 3, size, size)


@pytest.mark.parametrize("name,kw", [
    ("vgg16", dict(width=0.125, pools=4)),
    ("vgg16", dict(width=0.125, pools=3, bn=False, merge="concat")),
    ("resnet18", dict(width=0.125)),
    ("resnet34", dict(width=0.125, stem_pool=False)),
])
def test_forward_shapes_and_fx(name, kw):
    torch.manual_seed(0)
    m = build_model(name, tasks=TASKS, **kw).eval()
    x = torch.randn(2, 3, 32, 32)
    out = m(x)
    _check_outputs(out, 2, 32)
    gm = torch.fx.symbolic_trace(m)
    out2 = gm(x)
    for t in TASKS:
        torch.testing.assert_close(out[t], out2[t])
    # the config rebuilds the same architecture
    m2 = type(m)(**m.config)
    assert [p.shape for p in m2.parameters()] == [p.shape for p in m.parameters()]


def test_vgg16_layout_full_width():
    m = VGG16MTL(width=1.0, bn=True)
    convs = [c for c in m.backbone if isinstance(c, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert m.tasks == DEFAULT_TASKS
    assert len(m.backbone_convs()) == 13
    # DeepLab-LargeFOV default: 3 pools (output stride 8), conv5 dilated by 2
    assert sum(isinstance(c, torch.nn.MaxPool2d) for c in m.backbone) == 3
    assert convs[-1].dilation == (2, 2)
    assert m.head_output_layers() == ["heads.seg.out", "heads.depth.out", "heads.normal.out"]


def test_aspp_head_merge():
    h = ASPPHead(8, 3, 4, rates=(1, 2), merge="concat")
    assert h.out.in_channels == 8
    assert h(torch.randn(1, 8, 5, 5)).shape == (1, 3, 5, 5)
    with pytest.raises(ValueError):
        ASPPHead(8, 3, merge="max")
    with pytest.raises(ValueError):
        build_model("vgg19")
    with pytest.raises(ValueError):
        ResNetMTL(depth=50)


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_pruner_compacts_our_models(name):
    from mtlkernels.study.metrics import task_losses
    from mtlkernels.pruning import MultiTaskPruner

    torch.manual_seed(0)
    m = build_model(name, tasks=TASKS, width=0.125)
    x = torch.randn(2, 3, 32, 32)
    batch = {"seg": torch.randint(0, 7, (2, 32, 32)), "depth": torch.rand(2, 1, 32, 32) + 1,
             "normal": torch.nn.functional.normalize(torch.randn(2, 3, 32, 32), dim=1)}
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    heads = [n for n, mod in m.named_modules() if n.startswith("heads.") and isinstance(mod, torch.nn.Conv2d)]
    pr = MultiTaskPruner(m, list(TASKS), "cosine", example_inputs=x[:1], optimizer=opt, exclude=heads,
                         min_channels=2, warn_unsupported=False)
    before = pr.num_channels()
    opt.zero_grad()
    pr.accumulate(task_losses(m(x), batch))
    opt.step()
    pr.prune(10)
    assert pr.num_channels() < before
    # heads untouched, outputs keep their shapes, training continues
    assert all(m.heads[t].out.out_channels == c for t, c in TASKS.items())
    _check_outputs(m(x), 2, 32)
    opt.zero_grad()
    pr.accumulate(task_losses(m(x), batch))
    opt.step()


def test_authors_vgg16_layout():
    """The authors' MTLNet: 13 convs with biases, no BN, 5 stride-2 pools, per task 4 summed branches of
    3x3 (rate r) -> 1x1 -> 1x1, with dropout; output upsampled to the input."""
    from mtlkernels.study.models import DeepLabHead, authors_vgg16

    m = authors_vgg16(tasks=TASKS)
    convs = [c for c in m.backbone if isinstance(c, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert all(c.bias is not None and c.dilation == (1, 1) for c in convs)
    assert not any(isinstance(c, torch.nn.BatchNorm2d) for c in m.modules())
    pools = [c for c in m.backbone if isinstance(c, torch.nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.stride == 2 for p in pools)
    h = m.heads["seg"]
    assert isinstance(h, DeepLabHead) and len(h.branches) == 4
    for r, b in zip((1, 2, 4, 6), h.branches):
        c3, c1, co = [c for c in b if isinstance(c, torch.nn.Conv2d)]
        assert (c3.kernel_size, c3.dilation, c3.out_channels) == ((3, 3), (r, r), 1024)
        assert (c1.kernel_size, c1.out_channels, co.kernel_size, co.out_channels) == ((1, 1), 1024, (1, 1), 7)
        assert sum(isinstance(c, torch.nn.Dropout) for c in b) == 2
    assert m.head_output_layers()[:4] == [f"heads.seg.branches.{i}.6" for i in range(4)]
    # Kaiming (fan-out) backbone, zero biases
    assert all(float(c.bias.detach().abs().max()) == 0 for c in convs)
    w = convs[5].weight
    assert abs(float(w.std()) - (2 / (w.shape[0] * 9)) ** 0.5) < 0.1 * (2 / (w.shape[0] * 9)) ** 0.5


def test_authors_vgg16_narrow_traces_and_prunes():
    from mtlkernels.pruning import MultiTaskPruner
    from mtlkernels.study.metrics import task_losses
    from mtlkernels.study.models import authors_vgg16

    torch.manual_seed(0)
    m = authors_vgg16(tasks=TASKS, width=0.125)
    assert m.heads["seg"].branches[0][0].out_channels == 128
    x = torch.randn(2, 3, 64, 64)
    m.eval()
    out = m(x)
    _check_outputs(out, 2, 64)
    torch.testing.assert_close(torch.fx.symbolic_trace(m)(x)["seg"], out["seg"])
    m.train()
    m2 = type(m)(**m.config)
    assert [p.shape for p in m2.parameters()] == [p.shape for p in m.parameters()]
    heads = [n for n, mod in m.named_modules() if n.startswith("heads.") and isinstance(mod, torch.nn.Conv2d)]
    pr = MultiTaskPruner(m, list(TASKS), "taylor", example_inputs=x[:1], exclude=heads, min_channels=2,
                         warn_unsupported=False)
    batch = {"seg": torch.randint(0, 7, (2, 64, 64)), "depth": torch.rand(2, 1, 64, 64) + 1,
             "normal": torch.nn.functional.normalize(torch.randn(2, 3, 64, 64), dim=1)}
    pr.accumulate(task_losses(m(x), batch))
    before = pr.num_channels()
    pr.prune(20)
    assert pr.num_channels() == before - 20
    _check_outputs(m(x), 2, 64)
