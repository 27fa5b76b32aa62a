"""The 3D Cell Tracking Challenge data sets of the EfficientCellSeg paper (Sec. 3.1), registered
under their CTC names (lazy: nothing is read until a name is loaded, and a missing folder then
raises an error naming it).

For each of ``Fluo-C3DH-A549-SIM``, ``Fluo-N3DL-TRIC`` and ``Fluo-C3DL-MDA231`` (under
``$DEEPCENS_CTC_ROOT``, see :func:`deepcens.data.ctc.default_ctc_root`):

* ``<CTC name>_train`` / ``<CTC name>_val``: a seeded 90 / 10 split of the gold-truth frames
  of every sequence (slices of a volume stay together), for training and model selection
  (the paper scores on the challenge's hidden test data instead);
* ``<CTC name>_ablation_train`` / ``<CTC name>_ablation_test``: an 80 / 20 split, the shape of
  the paper's ablation (Sec. 3.2: 1488 training and 372 test slices of A549-SIM).
"""
from __future__ import annotations

from deepcens.data.ctc import default_ctc_root, register_ctc_split

PAPER_DATASETS = ("Fluo-C3DH-A549-SIM", "Fluo-N3DL-TRIC", "Fluo-C3DL-MDA231")


def register_efficientcellseg_datasets(ctc_root: str | None = None) -> list[str]:
    """Register the train / val and ablation splits of the paper's three CTC data sets."""
    ctc_root = ctc_root or default_ctc_root()
    names = []
    for dataset in PAPER_DATASETS:
        for suffix, split, fraction in (("train", "train", 0.1), ("val", "val", 0.1),
                                        ("ablation_train", "train", 0.2), ("ablation_test", "val", 0.2)):
            names.append(register_ctc_split(f"{dataset}_{suffix}", ctc_root, dataset, None, "GT", split, fraction))
    return names


register_efficientcellseg_datasets()
