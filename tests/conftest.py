"""Shared test set-up: small CPU budgets and the path of the real data sets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# the product's CTC root defaults to datasets/ctc; the tests read the shared real data instead
# (set before deepcens is imported: the default CTC names are registered at import)
os.environ.setdefault("DEEPCENS_CTC_ROOT", str(SHARED_DATA / "ctc"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real annotated microscopy sets); skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is not present")
    return SHARED_DATA
