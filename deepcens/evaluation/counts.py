"""Additive count records: per-image / per-frame counts pool by ``+`` (SEG/DET, TRA, F1)."""
from __future__ import annotations

import dataclasses


class AdditiveCounts:
    """Mixin for a dataclass of numbers: ``a + b`` is the record of the field-wise sums."""

    def __add__(self, other):
        return type(self)(*(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)))
