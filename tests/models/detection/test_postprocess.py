import torch
from torch import nn

from segdet.models.detection.postprocess import first_rows


def test_first_rows_is_the_slice():
    x = torch.arange(12).reshape(6, 2)
    for n in (0, 1, 5, 6, 7, 100):
        assert torch.equal(first_rows(x, n), x[:n])
    assert first_rows(torch.empty(0, 4), 3).shape == (0, 4)


class _KeepPositive(nn.Module):
    """A data-dependent number of rows (as an NMS keeps), then the first 3."""

    def forward(self, scores):
        return first_rows(scores[scores > 0], 3)


def test_first_rows_of_a_data_dependent_length_exports():
    """torch.export traces it (a plain slice failed to on torch 2.8) and the program cuts at 3 whether
    fewer or more rows are kept; reference: the eager slice."""
    example = torch.tensor([0.5, -1.0, 0.2, 0.9, 0.3])
    program = torch.export.export(_KeepPositive(), (example,), dynamic_shapes=({0: torch.export.Dim("n")},))
    for scores in (
        example,
        torch.tensor([-1.0, 0.4, -2.0, -3.0]),
        torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
    ):
        assert torch.equal(program.module()(scores), scores[scores > 0][:3])
