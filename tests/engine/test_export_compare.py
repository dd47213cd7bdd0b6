"""The export check's summary never reports a box comparison it did not make."""

from __future__ import annotations

import torch

from segdet.engine.export.compare import compare_detections


def _detections(scores: list[float], shift: float = 0.0):
    boxes = torch.tensor([[10.0 * i, 5.0, 10.0 * i + 8, 20.0] for i in range(len(scores))]) + shift
    return boxes, torch.tensor(scores), torch.zeros(len(scores), dtype=torch.int64)


def test_all_tied_scores_say_no_box_was_checked():
    """An untrained SSDLite: 300 detections of one score. The summary said "the 0 of distinct score at
    their boxes within 0.0e+00 px", which reads as a pass of a check never made."""
    expected = _detections([0.5, 0.5, 0.5])
    check = compare_detections(expected, _detections([0.5, 0.5, 0.5]), "image 0")
    assert check.ok and "no box checked: every score ties with another" in check.summary
    assert "3 of the 3 tied ones at an exported box of their score" in check.summary
    moved = compare_detections(expected, _detections([0.5, 0.5, 0.5], shift=3.0), "image 0")
    assert moved.ok and "0 of the 3 tied ones" in moved.summary  # said, not failed: ties may swap


def test_distinct_scores_are_checked_at_their_boxes():
    expected = _detections([0.9, 0.5, 0.5])
    check = compare_detections(expected, _detections([0.9, 0.5, 0.5]), "image 0")
    assert check.ok and "the 1 of distinct score at their boxes within 0.0e+00 px" in check.summary
    assert not compare_detections(expected, _detections([0.9, 0.5, 0.5], shift=3.0), "image 0").ok
