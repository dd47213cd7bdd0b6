"""The R-CNN detector at test time (Girshick et al. 2014, sec. 2.2):

1. selective-search proposals (fast mode, ~2000 per image; looked up in the proposal cache);
2. each proposal warped with context (:mod:`.warp`) and run through the CNN (:mod:`.network`), in
   chunks of ``chunk`` regions;
3. every class's SVM scores every region on its ``fc7`` features (scaled so their mean norm on the
   training set is 20, the paper code's ``feat_norm_mean``);
4. every region's box is refined by each class's ridge regressor on its pool features (:mod:`.ridge`);
5. greedy NMS per class at IoU 0.3 (a region is dropped if it overlaps a higher-scoring selected region
   of the same class by more), then the 100 best per image.

The SVMs and regressors are buffers, so ``state_dict`` saves the whole detector; they are fitted by
:func:`.stages.train_rcnn`. ``model(images)`` follows the detectors' evaluation interface (float
``[0, 1]`` images in, per image ``boxes``, ``labels`` ``0 .. K-1``, ``scores`` out; the scores are SVM
margins, not probabilities), so :class:`segdet.engine.detection.DetectionTask` evaluates it and
``segdet eval`` / ``segdet predict`` read the ``rcnn.safetensors`` that ``segdet rcnn`` writes (the
model is built again by name, ``rcnn_resnet_c4`` of :data:`segdet.models.MODELS`, from the options the
file holds, then loaded with its weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segdet.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from segdet.errors import ConfigError
from segdet.models.detection.postprocess import select_detections
from segdet.models.detection.proposals import SelectiveSearchProposals
from segdet.models.detection.region_cnn.network import RegionNetwork
from segdet.models.detection.region_cnn.warp import CONTEXT, warp_regions
from segdet.ops.box_coder import BoxCoder


class RCNN(nn.Module):
    """R-CNN; see the module docstring.

    Args:
        network: the fine-tuned CNN.
        proposals: the selective-search proposal source.
        num_classes: ``K``.
        input_size: ``S``, the warped region's side.
        context: the dilation fraction (:data:`.warp.CONTEXT`).
        nms_thresh, detections_per_img, score_thresh: post-processing (SVM scores under
            ``score_thresh`` are dropped before NMS).
        chunk: regions per CNN call.
    """

    #: ``segdet predict``'s default thresholds ``(drawn, written)`` on the scores, which are SVM margins:
    #: 0 is each SVM's decision boundary; every detection the model returns (margin above
    #: ``score_thresh``) is written to ``predictions.json``, as ``segdet eval`` scores every one.
    predict_score_thresholds = (0.0, float("-inf"))

    def __init__(
        self,
        network: RegionNetwork,
        proposals: SelectiveSearchProposals,
        num_classes: int,
        input_size: int = 224,
        context: float = CONTEXT,
        nms_thresh: float = 0.3,
        detections_per_img: int = 100,
        score_thresh: float = -1.0,
        chunk: int = 256,
    ) -> None:
        super().__init__()
        self.network = network
        self.proposals = proposals
        self.num_classes = num_classes
        self.input_size = input_size
        self.context = context
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.score_thresh = score_thresh
        self.chunk = chunk
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        fc7 = network.head.out_channels
        pool = network.head.fc6.in_features
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1))
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(3, 1, 1))
        self.register_buffer("svm_weight", torch.zeros(num_classes, fc7))
        self.register_buffer("svm_bias", torch.zeros(num_classes))
        self.register_buffer("reg_weight", torch.zeros(num_classes, pool, 4))
        self.register_buffer("reg_bias", torch.zeros(num_classes, 4))
        self.register_buffer("feature_scale", torch.ones(2))  # (pool, fc7) multipliers

    def normalize(self, image: Tensor) -> Tensor:
        return (image - self.image_mean) / self.image_std

    def region_features(self, images: Sequence[Tensor], boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Scaled ``(pool, fc7)`` features of the regions ``boxes`` of the (unnormalised) ``images``, in
        chunks of :attr:`chunk` regions."""
        pools, fc7s = [], []
        for image, b in zip(images, boxes, strict=True):
            normalized = self.normalize(image)
            for part in b.split(self.chunk):
                crops = warp_regions([normalized], [part], self.input_size, self.context)
                pool, fc7 = self.network.features(crops)
                pools.append(pool)
                fc7s.append(fc7)
        if not pools:
            width = self.reg_weight.shape[1], self.svm_weight.shape[1]
            return self.reg_weight.new_zeros((0, width[0])), self.svm_weight.new_zeros((0, width[1]))
        return torch.cat(pools) * self.feature_scale[0], torch.cat(fc7s) * self.feature_scale[1]

    @torch.no_grad()
    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: None = None,
        *,
        proposals: Sequence[Tensor] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections per image (module docstring); ``proposals`` replaces selective search. The
        detectors' signature, but there are no ``targets``: no loss to return."""
        if self.training or targets is not None:
            raise ConfigError(
                "R-CNN (rcnn_resnet_c4) is trained stage by stage by `segdet rcnn`, not through its "
                "forward: segdet train cannot train it"
            )
        if isinstance(images, Tensor) and images.dim() == 3:
            images = [images]
        if proposals is None:
            proposals = self.proposals(images)
        device = self.svm_weight.device
        proposals = [p.to(device, torch.float32) for p in proposals]
        pool, fc7 = self.region_features(images, proposals)
        scores = fc7 @ self.svm_weight.T + self.svm_bias  # [R, K]
        deltas = torch.einsum("rp,kpc->rkc", pool, self.reg_weight) + self.reg_bias  # [R, K, 4]
        rois = torch.cat(proposals)
        boxes = self.box_coder.decode_single(deltas, rois[:, None, :].expand_as(deltas))
        counts = torch.as_tensor([len(p) for p in proposals], device=device)
        image_of = torch.repeat_interleave(torch.arange(len(proposals), device=device), counts)
        sizes = torch.as_tensor([im.shape[-2:] for im in images], device=device, dtype=boxes.dtype)
        upper = sizes[image_of].flip(-1).repeat(1, 2)[:, None, :]  # (w, h, w, h)
        boxes = torch.minimum(boxes.clamp(min=0), upper)
        k = self.num_classes
        labels = torch.arange(k, device=device).repeat(len(rois))
        images_of = image_of.repeat_interleave(k)
        boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
        keep = torch.nonzero(
            (scores > self.score_thresh) & (boxes[:, 2:] > boxes[:, :2] + 1e-2).all(dim=1)
        ).flatten()
        return select_detections(
            boxes[keep],
            scores[keep],
            labels[keep],
            images_of[keep],
            len(proposals),
            k,
            self.nms_thresh,
            self.detections_per_img,
        )


def rcnn_resnet_c4(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    backbone_weights: object = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    input_size: int = 224,
    pool_size: int = 7,
    representation_size: int = 1024,
    proposal_mode: str = "fast",
    proposal_cache: str | None = None,
    proposal_max_side: int = 500,
    proposal_min_side: int = 128,
    proposals_train: int = 2000,
    proposals_test: int = 2000,
    nms_thresh: float = 0.3,
    chunk: int = 256,
) -> RCNN:
    """R-CNN on a ResNet cut after ``layer3`` (the trunk of ``fastrcnn_resnet50_c4``), ``input_size``
    warped regions, the pooled map ``pool_size`` squared, ``fc6``/``fc7`` of ``representation_size``."""
    from segdet.models.detection.proposals import SelectiveSearchSettings
    from segdet.models.detection.rcnn.faster_rcnn import resnet_c4
    from segdet.models.detection.settings import check_num_classes

    check_num_classes(num_classes)
    body, _, _ = resnet_c4(backbone, backbone_weights, trainable_layers, frozen_bn)
    network = RegionNetwork(body, pool_size, representation_size, num_classes + 1)
    search = SelectiveSearchSettings(
        mode=proposal_mode, max_side=proposal_max_side, min_side=proposal_min_side
    )
    source = SelectiveSearchProposals(search, proposal_cache, num_proposals=(proposals_train, proposals_test))
    return RCNN(network, source, num_classes, input_size, nms_thresh=nms_thresh, chunk=chunk)
