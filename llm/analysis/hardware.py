"""Peak dense bf16 throughput of accelerators, for model FLOPs utilisation (MFU) and planning.

Vendors sell the same chip in several form factors (SXM, PCIe, NVL) with different clocks and
power limits, and drivers report names such as "NVIDIA H100 80GB HBM3" or "NVIDIA H100 PCIe".
We therefore match lower-cased substrings, most specific rule first: every substring of a rule
must occur in the name, and the first matching rule wins. The numbers are dense (no 2:4
sparsity) bf16 tensor-core peaks from the vendors' datasheets.
"""

import warnings
from typing import NamedTuple


class PeakRule(NamedTuple):
    label: str
    required_substrings: tuple[str, ...]
    flops: float


# Order matters: "gb200" contains "b200", "l40s" contains "l4", "mi250x" contains "mi250",
# so the longer names come first.
PEAK_BF16_FLOPS: tuple[PeakRule, ...] = (
    # NVIDIA Blackwell
    PeakRule("GB200", ("gb200",), 2.5e15),
    PeakRule("GB200", ("grace blackwell",), 2.5e15),
    PeakRule("B200", ("b200",), 2.25e15),
    PeakRule("B100", ("b100",), 1.8e15),
    # NVIDIA Hopper
    PeakRule("H200 NVL", ("h200", "nvl"), 836e12),
    PeakRule("H200 PCIe", ("h200", "pcie"), 836e12),
    PeakRule("H200 SXM", ("h200",), 989e12),
    PeakRule("H100 NVL", ("h100", "nvl"), 835e12),
    PeakRule("H100 PCIe", ("h100", "pcie"), 756e12),
    PeakRule("H100 SXM", ("h100",), 989e12),
    PeakRule("H800 NVL", ("h800", "nvl"), 989e12),
    PeakRule("H800 PCIe", ("h800",), 756e12),
    # NVIDIA Ampere data centre
    PeakRule("A100", ("a100",), 312e12),
    PeakRule("A800", ("a800",), 312e12),
    PeakRule("A40", ("a40",), 149.7e12),
    PeakRule("A30", ("a30",), 165e12),
    # NVIDIA Ada data centre
    PeakRule("L40S", ("l40s",), 362e12),
    PeakRule("L40S", ("l40-s",), 362e12),
    PeakRule("L40S", ("l40 s",), 362e12),
    PeakRule("L4", ("l4",), 121e12),
    # AMD CDNA
    PeakRule("MI355", ("mi355",), 2.5e15),
    PeakRule("MI325", ("mi325",), 1.3074e15),
    PeakRule("MI300X", ("mi300x",), 1.3074e15),
    PeakRule("MI300A", ("mi300a",), 980.6e12),
    PeakRule("MI250X", ("mi250x",), 383e12),
    PeakRule("MI250", ("mi250",), 362.1e12),
    # Intel Data Center GPU Max 1550: 512 bf16 FLOPs per clock per compute unit at 1.3 GHz. The
    # full two-tile card has 1024 units; a tile exposed as its own device has half of that.
    PeakRule("Intel Max 1550", ("data center gpu max 1550",), 512 * 1024 * 1.3e9),
    # Consumer cards, for hobbyists
    PeakRule("RTX 5090", ("5090",), 209.5e12),
    PeakRule("RTX 4090", ("4090",), 165.2e12),
    PeakRule("RTX 3090", ("3090",), 71e12),
)


def match_peak_rule(device_name: str) -> PeakRule | None:
    """The first rule whose substrings all occur in the lower-cased name, or None."""
    name = device_name.lower()
    for rule in PEAK_BF16_FLOPS:
        if all(part in name for part in rule.required_substrings):
            return rule
    return None


def peak_flops(device_name: str) -> float:
    """Peak dense bf16 FLOP/s of one device, from its driver-reported name.

    An unknown device gives float('inf') with a warning rather than a guess: MFU, which divides
    by this number, then reads 0 %, which is visibly wrong, instead of a plausible false value.
    """
    rule = match_peak_rule(device_name)
    if rule is None:
        warnings.warn(
            f"no peak FLOPs known for device {device_name!r}; MFU will read 0% "
            "(add a rule to llm.analysis.hardware.PEAK_BF16_FLOPS)",
            stacklevel=2,
        )
        return float("inf")
    return rule.flops
