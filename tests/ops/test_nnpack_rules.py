"""segdet.ops.nnpack_rules: which measured thresholds a CPU gets, from torch's capability and
``/proc/cpuinfo`` (the fields of real machines: an AMD EPYC Zen 4 and Zen 3, an Intel Xeon)."""

from __future__ import annotations

import pytest

from segdet.ops.nnpack_rules import AVX2, ZEN4, rules_for

ZEN4_INFO = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
)
ZEN3_INFO = ZEN4_INFO.replace("model\t\t: 17", "model\t\t: 1")
ZEN5_INFO = ZEN4_INFO.replace("cpu family\t: 25", "cpu family\t: 26")
XEON_INFO = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"


@pytest.mark.parametrize(
    ("capability", "cpuinfo", "expected"),
    [
        ("AVX2", ZEN3_INFO, AVX2),  # any AVX2 CPU: where the AVX2 tables were measured
        ("AVX2", XEON_INFO, AVX2),
        ("AVX512", ZEN4_INFO, ZEN4),  # AVX-512 executed as two 256-bit halves
        ("AVX512", ZEN5_INFO, None),  # full-width AVX-512: unmeasured
        ("AVX512", XEON_INFO, None),
        ("AVX512", "", None),  # no /proc/cpuinfo
        ("DEFAULT", ZEN4_INFO, None),  # ARM or an old x86: NNPACK's kernels unmeasured
    ],
)
def test_rules_for(capability, cpuinfo, expected):
    assert rules_for(capability, cpuinfo) is expected


def test_zen4_needs_more_work_per_call_than_avx2():
    """oneDNN is faster on Zen 4 (AVX-512), so NNPACK needs larger maps, batches and channels to win."""
    for field in ("min_pixels", "min_batch", "min_train_pixels", "min_tiles", "min_grad_channels"):
        assert getattr(ZEN4, field) > getattr(AVX2, field), field
