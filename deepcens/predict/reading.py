"""Reading the pages of ``deepcens predict`` sources (all pixel decoding is in :mod:`deepcens.data.io`)."""
from __future__ import annotations

import numpy as np

from deepcens.data.io import intensity_range, read_image, read_stack
from deepcens.errors import DeepcensInputError
from deepcens.predict.inputs import Page, Source


class PageReader:
    """Reads pages as raw ``(H, W, C)`` arrays, keeping the last stack in memory."""

    def __init__(self) -> None:
        self._stack_path: str | None = None
        self._stack: np.ndarray | None = None

    def __call__(self, page: Page) -> np.ndarray:
        if page.index is None:
            return read_image(page.file_name)
        if self._stack_path != page.file_name:
            self._stack, self._stack_path = read_stack(page.file_name), page.file_name
        image = self._stack[page.index]
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] > 4:
            raise DeepcensInputError(page.file_name, f"stack page has unsupported shape {image.shape}")
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise DeepcensInputError(page.file_name, f"page {page.index} contains NaN or infinite pixels")
        return image


def source_intensity_range(source: Source, reader: PageReader,
                           bad_pages: dict[str, str] | None = None) -> tuple[float, float] | None:
    """(min, max) raw intensity over a stack's or sequence's pages (as CTC dataset dicts carry);
    None for a single image, which the mapper normalises on its own.

    With ``bad_pages`` (``--skip-bad``), unreadable pages are recorded there (page label ->
    error) and left out of the range instead of ending the run.
    """
    if source.kind not in ("sequence", "stack"):
        return None

    def readable():
        for page in source.pages:
            try:
                yield reader(page)
            except DeepcensInputError as error:
                if bad_pages is None:
                    raise
                bad_pages[page.label] = str(error)

    low, high = intensity_range(readable())
    return (low, high) if low <= high else None
