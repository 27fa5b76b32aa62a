"""``deepcens predict``: a trained model over microscopy images -> label images and results.

One module per job: :mod:`~deepcens.predict.inputs` (sources, pages, frames, naming),
:mod:`~deepcens.predict.reading`, :mod:`~deepcens.predict.predictor` (model, weights,
tiling), :mod:`~deepcens.predict.writers` (label images, CTC results, class maps, overlays,
summary, COCO json), :mod:`~deepcens.predict.run_folder` (lock, status, ownership of files),
:mod:`~deepcens.predict.runner` (the run) and :mod:`~deepcens.predict.cli` (options).
"""
from deepcens.predict.cli import add_arguments, main, run
from deepcens.predict.inputs import Page, Source, collect_inputs, parse_frames
from deepcens.predict.runner import predict

__all__ = ["Page", "Source", "add_arguments", "collect_inputs", "main", "parse_frames", "predict", "run"]
