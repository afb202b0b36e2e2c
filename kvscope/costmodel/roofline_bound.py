"""The roofline bound of a piece of work: which roof limits it (memory bandwidth or compute) and, when
it was measured, whether it reached neither (overhead). One classifier for the TUI's per-step
readout and the one-shot per-operator report. Pure python.

attainable = min(peak FLOP/s, intensity x peak B/s). Left of the ridge point (peak FLOP/s / peak B/s)
work is memory-bound, right of it compute-bound. Measured work that reached less than
OVERHEAD_FRACTION of its attainable rate is overhead-bound (launches, Python, syncs dominate).
"""

from __future__ import annotations

from dataclasses import dataclass

MEMORY = "memory"
COMPUTE = "compute"
OVERHEAD = "overhead"
NO_DATA = "-"
OVERHEAD_FRACTION = 0.10


@dataclass(slots=True)
class Peaks:
    """A device's roofs, and the name they are shown under."""

    name: str
    flops: float        # FLOP/s
    bandwidth: float    # bytes/s

    @property
    def ridge(self) -> float:
        """The intensity (FLOP/B) where the two roofs meet."""
        return self.flops / self.bandwidth if self.bandwidth else 0.0


def classify(intensity: float, achieved_flops: float | None, peaks: Peaks) -> str:
    """MEMORY or COMPUTE for work of `intensity` FLOP/B on a device with `peaks`. With what it achieved
    (FLOP/s; None for an estimate, which has nothing measured): OVERHEAD under OVERHEAD_FRACTION of the
    attainable rate, NO_DATA when there is nothing to classify (no FLOPs, bytes or time)."""
    if achieved_flops is not None:
        if intensity <= 0 or achieved_flops <= 0 or peaks.flops <= 0:
            return NO_DATA
        attainable = min(peaks.flops, intensity * peaks.bandwidth)
        if achieved_flops < OVERHEAD_FRACTION * attainable:
            return OVERHEAD
    return MEMORY if intensity < peaks.ridge else COMPUTE
