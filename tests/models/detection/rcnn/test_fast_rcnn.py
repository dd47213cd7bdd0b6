"""Fast R-CNN (Girshick 2015): the truncated SVD against torch.linalg.svd (Eckart-Young), the paper's
RoI sampling, the proposals scaled with the image, the smooth L1 of beta = 1, and the model through
``segdet train | eval | predict``. Convergence on shapes: tests/engine/test_detection_convergence.py."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from segdet.losses import smooth_l1_loss
from segdet.models import MODELS, build
from segdet.models.detection.rcnn.box_head import fastrcnn_loss
from segdet.models.detection.rcnn.truncated_svd import truncated_svd
from segdet.ops.boxes import box_iou

TINY = {"backbone": "resnet18", "representation_size": 64, "min_size": 64, "max_size": 64}


def test_truncated_svd_is_the_best_rank_t_layer():
    """Full rank reproduces the layer (1e-5); rank t leaves exactly the spectral-norm error
    sigma_{t+1} (Eckart-Young; torch.linalg.svd in float64 as the reference, 1e-6)."""
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    x = torch.randn(8, 40)
    full = truncated_svd(layer, 100)
    assert full[0].weight.shape == (30, 40) and full[0].bias is None
    torch.testing.assert_close(full(x), layer(x), atol=1e-5, rtol=0)
    low = truncated_svd(layer, 5)
    assert low[0].weight.shape == (5, 40) and low[1].weight.shape == (30, 5)
    approx = (low[1].weight @ low[0].weight).double()
    sigma = torch.linalg.svdvals(layer.weight.double())
    assert torch.linalg.matrix_norm(layer.weight.double() - approx, ord=2).item() == pytest.approx(
        sigma[5].item(), abs=1e-6
    )
    torch.testing.assert_close(low[1].bias, layer.bias)
    with pytest.raises(ValueError, match="at least 1"):
        truncated_svd(layer, 0)


def test_smooth_l1_beta_one():
    """The paper's eq. 3 (beta = 1): 0.5 x^2 below 1, |x| - 0.5 above, on the true class's deltas only,
    summed and divided by all sampled RoIs."""
    logits = torch.zeros(3, 3)
    regression = torch.zeros(3, 12)
    regression[1, 8:12] = torch.tensor([2.0, 0.5, 0.0, -3.0])  # RoI 1, class 2
    labels = torch.tensor([0, 2, 0])
    _, box = fastrcnn_loss(logits, regression, labels, torch.zeros(3, 4), beta=1.0)
    expected = (1.5 + 0.125 + 0.0 + 2.5) / 3
    assert box.item() == pytest.approx(expected)
    ref = smooth_l1_loss(regression[1, 8:12], torch.zeros(4), beta=1.0, reduction="sum") / 3
    assert box.item() == pytest.approx(ref.item())


def test_sampling_is_the_papers():
    """64 RoIs per image, at most 25% with IoU >= 0.5 (foreground) and background only in [0.1, 0.5):
    proposals overlapping nothing (IoU < 0.1) are never sampled."""
    model = build("fastrcnn_resnet50_c4", 2, **TINY)
    heads = model.roi_heads
    gt = torch.tensor([[10.0, 10.0, 40.0, 40.0]])
    g = torch.Generator().manual_seed(0)
    shifts = torch.rand(300, 4, generator=g) * 40 - 20
    proposals = (gt + shifts).clamp(0, 64)
    proposals = proposals[(proposals[:, 2:] - proposals[:, :2] > 1).all(dim=1)]
    far = torch.tensor([[50.0, 50.0, 63.0, 63.0]]).repeat(50, 1)  # IoU 0 with the object
    targets = [{"boxes": gt, "labels": torch.tensor([1])}]
    rois, _, labels, _ = heads.select_training_samples([torch.cat([proposals, far])], targets, g)
    rois, labels = rois[0], labels[0]
    iou = box_iou(rois, gt)[:, 0]
    assert len(rois) == 64
    assert (labels > 0).sum() <= 16 and (iou[labels > 0] >= 0.5).all()
    background = iou[labels == 0]
    assert len(background) >= 48 and (background >= 0.1).all() and (background < 0.5).all()


def test_proposals_follow_the_resize(monkeypatch):
    """Proposals given in the image's pixels reach the RoI heads in the resized image's (x2 here), and
    the losses are finite; in eval, detections come back in the original pixels."""
    model = build("fastrcnn_resnet50_c4", 2, **{**TINY, "min_size": 64, "max_size": 64})
    seen = []
    forward = model.roi_heads.forward

    def spy(features, proposals, image_sizes, *args):
        seen.append([p.clone() for p in proposals])
        return forward(features, proposals, image_sizes, *args)

    monkeypatch.setattr(model.roi_heads, "forward", spy)
    image = torch.rand(3, 32, 32)
    props = torch.tensor([[2.0, 2.0, 20.0, 20.0], [5.0, 8.0, 30.0, 31.0]])
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]), "labels": torch.tensor([1])}]
    losses = model([image], targets, proposals=[props])
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    torch.testing.assert_close(seen[0][0], props * 2)
    model.eval()
    with torch.no_grad():
        out = model([image], proposals=[props])[0]
    assert out["boxes"].numel() == 0 or out["boxes"].max() <= 32
    with pytest.raises(ValueError, match="proposal lists"):
        model([image], proposals=[props, props])


def test_svd_in_fuse_for_inference():
    """``svd_ranks`` replaces fc6 / fc7 by their truncated SVDs in ``fuse_for_inference`` (what ``segdet
    eval | predict`` call); at full rank the class scores are unchanged (1e-4)."""
    torch.manual_seed(0)
    model = build("fastrcnn_resnet50_c4", 2, **TINY, svd_ranks=(64, 64)).eval()
    image = torch.rand(3, 48, 64)
    props = torch.tensor([[2.0, 2.0, 30.0, 20.0], [5.0, 8.0, 60.0, 40.0], [0.0, 0.0, 64.0, 48.0]])
    features = {"0": torch.rand(1, model.backbone.out_channels, 4, 4)}
    heads = model.roi_heads
    before = heads.box_predictor(heads.box_head(heads.box_pooler(features, [props], [(64, 64)])))
    model.fuse_for_inference(fold=False, nnpack=False, channels_last=False)
    assert isinstance(heads.box_head.fc6, nn.Sequential) and model.compressed
    after = heads.box_predictor(heads.box_head(heads.box_pooler(features, [props], [(64, 64)])))
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    with torch.no_grad():
        assert len(model([image])) == 1


def test_in_the_table():
    assert "fastrcnn_resnet50_c4" in MODELS
    model = build("fastrcnn_resnet50_c4", 3, backbone="resnet18")
    assert model.roi_heads.box_pooler.mode == "pool" and model.roi_heads.box_pooler.output_size == (7, 7)
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert model.transform.min_size == (600,) and model.transform.max_size == 1000


@pytest.mark.opencv_contrib
@pytest.mark.slow
def test_train_eval_predict_commands(tmp_path, capsys):
    """``segdet train`` (one epoch of 4 tiny images, proposals cached in the run's cache folder),
    ``segdet eval`` with the truncated SVD and ``segdet predict`` all run and write their outputs."""
    from segdet.cli.main import main

    cache = tmp_path / "cache"
    overrides = [
        f"output_dir={tmp_path / 'runs'}",
        "data.synthetic=4",
        "data.synthetic_size=64",
        "train.epochs=1",
        "model.min_size=64",
        "model.max_size=64",
        "model.representation_size=32",
        "model.svd_ranks=[16,8]",
        f"model.proposal_cache={cache}",
    ]
    assert main(["train", "configs/shapes_fastrcnn.yaml", *overrides]) == 0, capsys.readouterr()
    ckpt = next((tmp_path / "runs").rglob("last.safetensors"))
    assert list(cache.rglob("*.safetensors"))
    out = tmp_path / "m.json"
    assert main(["eval", str(ckpt), "--device", "cpu", "--out", str(out)]) == 0, capsys.readouterr()
    assert 0.0 <= json.loads(out.read_text())["AP50"] <= 1.0
    image = next((tmp_path / "runs").rglob("*.png"), None) or next(tmp_path.rglob("shapes_*.png"))
    assert main(["predict", str(ckpt), str(image), "--device", "cpu", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "predictions.json").is_file()


def test_background_only_image_trains():
    """An image without objects gives background samples (bg_iou_low does not apply: there is nothing
    to be near) and finite losses, the box loss 0."""
    model = build("fastrcnn_resnet50_c4", 2, **TINY)
    props = torch.tensor([[2.0, 2.0, 30.0, 30.0], [10.0, 10.0, 50.0, 60.0]])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([torch.rand(3, 64, 64)], [empty], proposals=[props])
    assert torch.isfinite(losses["loss_classifier"]) and float(losses["loss_box_reg"].detach()) == 0.0


def test_faster_rcnn_c4_2fc_shares_fast_rcnn_network():
    """``fasterrcnn_resnet50_c4(box_head="2fc", pool="pool")`` has Fast R-CNN's trunk and head (same
    parameter names and shapes), so the history benchmark compares the same network."""
    fast = build("fastrcnn_resnet50_c4", 2, **TINY)
    faster = build(
        "fasterrcnn_resnet50_c4", 2, backbone="resnet18", box_head="2fc", pool="pool", representation_size=64
    )
    ours = {k: v.shape for k, v in fast.state_dict().items() if k.startswith(("backbone.", "roi_heads."))}
    theirs = {k: v.shape for k, v in faster.state_dict().items() if k.startswith(("backbone.", "roi_heads."))}
    assert ours == theirs
    assert faster.roi_heads.box_pooler.mode == "pool" and faster.roi_heads.box_pooler.output_size == (7, 7)
    with pytest.raises(ValueError, match="box_head"):
        build("fasterrcnn_resnet50_c4", 2, backbone="resnet18", box_head="3fc")
