"""The prediction run: sources -> model -> writers, with the run folder handled as a unit."""
from __future__ import annotations

import logging
import os
from typing import Callable, Iterator, Sequence

from detectron2.config import CfgNode
from detectron2.structures import Instances

from deepcens.errors import DeepcensInputError
from deepcens.postprocess.instances import instances_to_label_image
from deepcens.predict.inputs import Page, Source, collect_inputs
from deepcens.predict.predictor import Predictor, check_tiling
from deepcens.predict import volumes
from deepcens.predict.reading import PageReader, source_intensity_range
from deepcens.predict.run_folder import command_line, run_folder
from deepcens.predict.writers import SourceWriter, SummaryTable, class_names_for, coco_results
from deepcens.utils.atomic import atomic_save_json

logger = logging.getLogger(__name__)


def _threshold(instances: Instances, score_threshold: float) -> Instances:
    if len(instances) == 0 or not instances.has("scores"):
        return instances
    return instances[instances.scores >= score_threshold]


def _batched_pages(sources: list[Source], batch_size: int) -> Iterator[list[tuple[Source, Page]]]:
    batch: list[tuple[Source, Page]] = []
    for source in sources:
        for page in source.pages:
            batch.append((source, page))
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def check_options(batch_size: int, score_threshold: float, tile_size: int, tile_overlap: float) -> None:
    """Refuse out-of-range options before anything runs."""
    if batch_size < 1:
        raise DeepcensInputError(None, f"--batch-size must be >= 1, got {batch_size}")
    if not 0.0 <= score_threshold <= 1.0:
        raise DeepcensInputError(None, f"--score-threshold must be in [0, 1], got {score_threshold}")
    check_tiling(tile_size, tile_overlap)


def plan_writers(cfg: CfgNode, inputs: Sequence[str], output_dir: str, *, ctc_format: bool, overlays: bool,
                 frames: str | None, class_names: str, dataset_name: str | None, skip_bad: bool, track: bool):
    """The inputs of a run as sources, their class names and one writer per source (with a tracker
    for ``track``); returns ``(skipped, sources, names, writers)``, ``skipped`` a list with ``skip_bad``."""
    if track and not ctc_format:
        raise DeepcensInputError(None, "--track needs --ctc-format (tracks are written as CTC result folders)")
    tracker = None
    if track:  # a sequence stays whole in one process, so its tracks are linked there
        from deepcens.tracking import build_tracker

        tracker = build_tracker(cfg)
    skipped: list[str] | None = [] if skip_bad else None
    sources = collect_inputs(inputs, frames, skipped)
    names = class_names_for(cfg, class_names, dataset_name)
    writers = [SourceWriter(s, output_dir, ctc_format=ctc_format, overlays=overlays, class_names=names,
                            tracker=tracker) for s in sources]
    return skipped, sources, names, writers


def predict(cfg: CfgNode, inputs: Sequence[str], output_dir: str, *, batch_size: int = 1,
            score_threshold: float = 0.5, overlays: bool = False, coco_json: bool = False, ctc_format: bool = False,
            frames: str | None = None, tile_size: int = 0, tile_overlap: float = 0.25, class_names: str = "",
            dataset_name: str | None = None, progress: bool | None = None, allow_random_weights: bool = False,
            skip_bad: bool = False, track: bool = False) -> dict:
    """Predict every input and write labels / overlays / COCO json / summary CSV under ``output_dir``.

    ``score_threshold`` applies to label images, overlays and the CSV; the COCO json keeps every
    detection (AP needs the low-score ones). Inputs, options, the output folder and the weights
    are checked before the first image is predicted. With ``skip_bad`` unreadable images are
    skipped and listed (``skipped`` in the result) instead of ending the run. Returns counts
    and the paths written. ``track`` (with ``ctc_format``) links every sequence's objects into
    tracks with ``cfg.TRACKING`` (persistent ids, ``res_track.txt``, ``<seq>_tracks.csv``,
    overlays with track ids; ``docs/tracking.md``).
    """
    from tqdm import tqdm

    check_options(batch_size, score_threshold, tile_size, tile_overlap)
    skipped, sources, names, writers = plan_writers(cfg, inputs, output_dir, ctc_format=ctc_format, overlays=overlays,
                                                    frames=frames, class_names=class_names, dataset_name=dataset_name,
                                                    skip_bad=skip_bad, track=track)
    planned = [path for w in writers for path in w.planned_paths()] + [os.path.join(output_dir, "summary.csv")]
    if coco_json:
        planned.append(os.path.join(output_dir, "coco_results.json"))
    input_files = [page.file_name for s in sources for page in s.pages]
    with run_folder(output_dir) as folder:
        folder.plan(planned, input_files)
        predictor = Predictor(cfg, tile_size, tile_overlap, dataset_name, allow_random_weights)
        folder.start(command_line())
        result = _run(predictor, writers, folder, names, batch_size, score_threshold, overlays, coco_json,
                      float(cfg.TEST.MASK_THRESHOLD), skipped, progress, tqdm)
        folder.finish("complete", images=result["images"], instances=result["instances"],
                      skipped=result["skipped"])
    result.update(random_weights=predictor.random_weights, output_dir=output_dir, sources=len(sources))
    return result


def _run(predictor: Predictor, writers: list[SourceWriter], folder, names: list[str], batch_size: int,
         score_threshold: float, overlays: bool, coco_json: bool, mask_threshold: float,
         skipped: list[str] | None, progress: bool | None, tqdm,
         on_source_done: Callable[[SourceWriter, list[dict], list[dict], list[str]], None] | None = None,
         write_run_files: bool = True) -> dict:
    """Predict the pages of ``writers``' sources in order.

    ``on_source_done(writer, rows, coco, bad)`` is called after each source's last page with its
    summary rows, COCO entries and unreadable pages (a sharded run journals them); without
    ``write_run_files`` the caller writes summary.csv / coco_results.json itself.
    """
    reader = PageReader()
    summary = SummaryTable(names)
    coco: list[dict] = []
    bad_pages: dict[str, str] | None = {} if skipped is not None else None
    done = 0
    if volumes.decodes_volumes(predictor):  # 3D stacks: one 3D label TIFF per volume
        volume_writers = [w for w in writers if volumes.is_volume_source(w.source)]
        for writer in volume_writers:
            first_row = len(summary.rows)
            done += volumes.predict_volume_source(predictor, writer, folder.save, summary, mask_threshold)
            writer.finish(folder.save, reader)
            if on_source_done is not None:
                on_source_done(writer, summary.rows[first_row:], [], [])
        writers = [w for w in writers if all(w is not v for v in volume_writers)]
    with_context = volumes.needs_context(predictor)
    ranges = {id(w.source): source_intensity_range(w.source, reader, bad_pages) for w in writers}
    by_source = {id(w.source): w for w in writers}
    total = sum(len(w.source.pages) for w in writers)
    image_id = 0
    spans: dict[int, list[int]] = {}  # id(source) -> its [first row, end row, first COCO entry, end entry]
    with tqdm(total=total, desc="predict", unit="img", disable=(None if progress is None else not progress)) as bar:
        for batch in _batched_pages([w.source for w in writers], batch_size):
            readable = []
            for source, page in batch:
                if bad_pages is not None and page.label in bad_pages:
                    continue
                try:
                    readable.append((source, page, reader(page)))
                except DeepcensInputError as error:
                    if bad_pages is None:
                        raise
                    bad_pages[page.label] = str(error)
            # one model call per run of pages from the same source (intensity ranges differ per source)
            start = 0
            while start < len(readable):
                stop = start
                while stop < len(readable) and readable[stop][0] is readable[start][0]:
                    stop += 1
                source = readable[start][0]
                extra = {"intensity_range": ranges[id(source)]} if ranges[id(source)] else None
                chunk = readable[start:stop]
                if with_context:  # neighbouring pages of the same source, one image at a time
                    results = []
                    for _, page, image in chunk:
                        context = volumes.page_context(source.pages, source.pages.index(page), reader)
                        results.extend(predictor([image], [page.label], 1, dict(extra or {}, context_images=context)))
                else:
                    results = predictor([image for _, _, image in chunk], [page.label for _, page, _ in chunk],
                                        batch_size, extra)
                for (source, page, image), all_instances in zip(chunk, results):
                    writer = by_source[id(source)]
                    span = spans.setdefault(id(source), [len(summary.rows), 0, len(coco), 0])
                    if coco_json:
                        coco.extend(coco_results(all_instances, image_id, page.label, page.frame, names, mask_threshold))
                    instances = _threshold(all_instances, score_threshold)
                    labels = instances_to_label_image(instances, mask_threshold=mask_threshold)
                    output = writer.write_page(page, labels, instances, mask_threshold, folder.save)
                    summary.add(page, output, instances, mask_threshold)
                    if overlays:
                        writer.write_overlay(page, image, instances, folder.save)
                    span[1], span[3] = len(summary.rows), len(coco)
                    image_id += 1
                    done += 1
                start = stop
            for source, page in batch:
                if page is source.pages[-1]:
                    by_source[id(source)].finish(folder.save, reader)
                    if on_source_done is not None:
                        rows_from, rows_to, coco_from, coco_to = spans.pop(id(source), [0, 0, 0, 0])
                        bad = [bad_pages[p.label] for p in source.pages if bad_pages and p.label in bad_pages]
                        on_source_done(by_source[id(source)], summary.rows[rows_from:rows_to],
                                       coco[coco_from:coco_to], bad)
            bar.update(len(batch))
    if write_run_files:
        folder.save(os.path.join(folder.output_dir, "summary.csv"), summary.write)
    if coco_json and write_run_files:
        folder.save(os.path.join(folder.output_dir, "coco_results.json"),
                    lambda path: atomic_save_json(path, coco, indent=None))
    all_skipped = list(skipped or []) + [error for error in (bad_pages or {}).values()]
    return {"images": done, "instances": int(sum(r["instances"] for r in summary.rows)),
            "skipped": all_skipped, "outputs": list(folder.written)}
