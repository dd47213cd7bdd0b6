"""Detections are validated as strictly as ground truth before evaluation, and every RLE is checked to
cover its image before pycocotools decodes it (issue 11, item 9)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from segdet.data.formats.coco_checks import decode_rle_string, rle_totals
from segdet.errors import DataError
from segdet.metrics.coco_eval import evaluate_coco

H, W = 12, 10


def ground_truth() -> dict:
    bitmap = np.zeros((H, W), np.uint8)
    bitmap[2:8, 3:7] = 1
    rle = mask_utils.encode(np.asfortranarray(bitmap))
    return {
        "images": [{"id": 1, "width": W, "height": H}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [3, 2, 4, 6],
                "area": 24,
                "iscrowd": 0,
                "segmentation": {"size": [H, W], "counts": rle["counts"].decode()},
            }
        ],
    }


def detection(**changes) -> dict:
    gt = ground_truth()["annotations"][0]
    return {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": gt["segmentation"], **changes}


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (detection(segmentation={"size": [H, W], "counts": "0" * 7 + "\x7f"}), "not a valid compressed RLE"),
        (detection(segmentation={"size": [H, W], "counts": "P"}), "not a valid compressed RLE"),  # cut off
        (
            detection(segmentation={"size": [H, W], "counts": "52"}),
            "RLE runs cover 7 pixels, the image has 120",
        ),
        (detection(segmentation={"size": [H, W], "counts": [5, 2]}), "RLE runs cover 7 pixels"),
        (detection(segmentation={"size": [H, W], "counts": [200, -80]}), "RLE"),
        (detection(bbox=[3, 2, -4, 6]), "negative width or height"),
    ],
)
def test_bad_results_are_refused_with_their_record(result, message):
    """Before the fix the first three evaluated to AP 0.5 (exit 0), the uncompressed ones hung."""
    iou_type = "bbox" if "bbox" in result else "segm"
    with pytest.raises(DataError, match=message) as e:
        evaluate_coco(ground_truth(), [result], iou_type)
    assert "results[0]" in str(e.value)


def test_ground_truth_rle_is_checked_too():
    gt = ground_truth()
    gt["annotations"][0]["segmentation"] = {"size": [H, W], "counts": [100, 30]}
    with pytest.raises(DataError, match=r"annotations\[0\]: RLE runs cover 130 pixels"):
        evaluate_coco(gt, [detection()], "segm")


def test_inconsistent_uncompressed_rle_does_not_hang_the_cli(tmp_path):
    """The reported hang: uncompressed counts that do not add up to h * w sent pycocotools' ``mask.iou``
    into an endless loop. Run in a subprocess with a timeout so that a regression fails instead of hanging
    the suite."""
    (tmp_path / "gt.json").write_text(json.dumps(ground_truth()))
    (tmp_path / "dt.json").write_text(
        json.dumps([detection(segmentation={"size": [H, W], "counts": [5, 2]})])
    )
    argv = ["metrics", "coco", "--gt", str(tmp_path / "gt.json"), "--dt", str(tmp_path / "dt.json")]
    done = subprocess.run(
        [sys.executable, "-m", "segdet", *argv, "--iou-type", "segm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"segdet: error: {tmp_path / 'dt.json'}: results[0]: RLE runs cover 7 pixels, the image has 120"
    ]


def _encodings() -> st.SearchStrategy[str]:
    """Compressed RLE strings of random masks, sometimes damaged, or random printable text."""
    masks = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1)).map(
        lambda t: mask_utils.encode(
            np.asfortranarray((np.random.default_rng(t[2]).random((t[0], t[1])) < 0.4).astype(np.uint8))
        )["counts"].decode()
    )
    damaged = st.tuples(masks, st.integers(0, 30), st.characters(min_codepoint=32, max_codepoint=130)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]
    )
    return st.one_of(masks, damaged, st.text(st.characters(min_codepoint=32, max_codepoint=130), max_size=12))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(_encodings(), max_size=12), st.integers(4, 64))
def test_vectorised_rle_check_equals_the_reference_decoder(strings, chunk):
    """Reference: :func:`decode_rle_string` (pycocotools' ``rleFrString`` in Python), string by string;
    exact agreement on validity and covered pixels, whatever the chunking."""
    valid, total = rle_totals(strings, chunk=chunk)
    for s, ok, covered in zip(strings, valid, total, strict=True):
        runs = decode_rle_string(s)
        expected = runs is not None and all(0 <= r < 2**32 for r in runs)
        assert ok == expected, s
        assert covered == (sum(runs) if expected else 0), s
