"""Prediction at scale: many processes (detectron2 ``launch``) and runs that resume.

``deepcens predict --num-gpus N [--num-machines M --machine-rank R --dist-url URL]`` starts N
processes per machine (one per GPU, or CPU processes talking over gloo). Every process reads
the same inputs, and the sources (an image, a stack, a sequence: each written as a unit) are
split between them by :func:`partition`: balanced by page count, the same on every process.
Each process writes its sources' outputs into the one shared output folder and journals every
finished source (its files, summary rows and COCO entries) in
``.predict_shards/rank-RRR.jsonl``; after all processes have finished, process 0 merges the
journals into ``summary.csv`` (and ``coco_results.json``) in the order one process would have
written them, and marks the run complete.

The folder lock is held by process 0; the other processes join its run (they check the run id
process 0 wrote into ``predict_run.json``, which also catches a folder not shared between
machines), so a different run is still refused. ``--skip-existing`` keeps every source whose
files all exist and whose journal entry is there, and predicts only the rest: a long run
stopped half-way resumes where it stopped, with any number of processes.

Journals are append-only JSON lines (flushed and fsynced per entry); a line torn by a crash
is ignored, so its source is predicted again.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import heapq
import json
import logging
import os
import signal
import sys
import time
import uuid
from typing import Iterator, Sequence

from detectron2.config import CfgNode

from deepcens.errors import DeepcensInputError
from deepcens.predict.inputs import Source, collect_inputs
from deepcens.predict.predictor import Predictor
from deepcens.predict.run_folder import STATUS_FILE, RunFolder, command_line, run_folder
from deepcens.predict.runner import _run, check_options, plan_writers
from deepcens.predict.writers import SourceWriter, SummaryTable
from deepcens.utils.atomic import atomic_save_json

logger = logging.getLogger(__name__)

JOURNAL_DIR = ".predict_shards"  # per-process journals inside the output folder
POLL_SECONDS = 1.0  # how often a finished process looks whether the others are done


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of many processes and of resuming (part of ``deepcens predict``)."""
    group = parser.add_argument_group("many processes and resuming")
    group.add_argument("--num-gpus", type=int, default=1, metavar="N",
                       help="processes per machine: one per GPU, or CPU processes (gloo) on a machine without one")
    group.add_argument("--num-machines", type=int, default=1, metavar="M", help="machines of the run")
    group.add_argument("--machine-rank", type=int, default=0, metavar="R", help="this machine's rank (0 .. M-1)")
    group.add_argument("--dist-url", default="auto", metavar="URL",
                       help="tcp://HOST:PORT of machine 0 (auto: a free local port, one machine only)")
    group.add_argument("--skip-existing", action="store_true",
                       help="keep the sources an earlier run in this folder finished, predict only the rest")


# ---- partition -----------------------------------------------------------------------------
def partition(weights: Sequence[int], world_size: int) -> list[list[int]]:
    """Indices of ``weights`` split into ``world_size`` shards of nearly equal total weight.

    Largest first, each to the lightest shard (lowest rank on ties); every shard keeps the
    input order. Deterministic, so every process computes the same split.
    """
    shards: list[list[int]] = [[] for _ in range(world_size)]
    heap = [(0, rank) for rank in range(world_size)]
    for index in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, rank = heapq.heappop(heap)
        shards[rank].append(index)
        heapq.heappush(heap, (load + weights[index], rank))
    return [sorted(shard) for shard in shards]


# ---- journals ------------------------------------------------------------------------------
def journal_paths(output_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(output_dir, JOURNAL_DIR, "rank-*.jsonl")))


def read_journals(output_dir: str) -> Iterator[dict]:
    """Every complete entry of every journal in the folder (torn lines are skipped)."""
    for path in journal_paths(output_dir):
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.readlines()
        except FileNotFoundError:  # removed by process 0 as a new run starts
            continue
        for line in lines:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    yield entry


def files_in_journals(output_dir: str) -> set[str]:
    """Files (relative to the folder) that processes of sharded runs wrote or were writing here."""
    files: set[str] = set()
    for entry in read_journals(output_dir):
        if "file" in entry:
            files.add(str(entry["file"]))
        files.update(str(f) for f in entry.get("files", []))
    return files


class Journal:
    """The append-only journal of one process of a run."""

    def __init__(self, output_dir: str, rank: int):
        self.path = os.path.join(output_dir, JOURNAL_DIR, f"rank-{rank:03d}.jsonl")

    def append(self, entry: dict) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _source_key(source: Source) -> list:
    """What identifies a source between runs: its real path and the pages predicted."""
    return [os.path.realpath(source.path), [page.label for page in source.pages]]


def _latest_entries(output_dir: str, run_id: str | None = None) -> dict[str, dict]:
    """Source path -> its newest ``done`` entry (entries of ``run_id`` win over older runs)."""
    latest: dict[str, dict] = {}
    for entry in read_journals(output_dir):
        if "done" not in entry:
            continue
        key = json.dumps(entry["done"])
        rank = (entry.get("run") == run_id, float(entry.get("time", 0)))
        if key not in latest or rank >= latest[key]["_rank"]:
            latest[key] = dict(entry, _rank=rank)
    return latest


def finished_sources(writers: Sequence[SourceWriter], output_dir: str) -> set[int]:
    """Indices of the sources an earlier run finished: journalled, and every file still there."""
    entries = _latest_entries(output_dir)
    return {index for index, writer in enumerate(writers)
            if json.dumps(_source_key(writer.source)) in entries
            and all(os.path.isfile(path) for path in writer.planned_paths())}


# ---- the folder as seen by processes other than 0 ------------------------------------------
class RankFolder(RunFolder):
    """The run folder for a process other than 0: it joins the run process 0 locked and started,
    and records the files it writes in its journal (process 0 owns ``predict_run.json``)."""

    def __init__(self, output_dir: str, journal: Journal):
        super().__init__(output_dir)
        self.journal = journal

    def join(self, run_id: str) -> None:
        """Check that the folder is the one process 0 started ``run_id`` in."""
        status = _read_status(self.output_dir)
        if status.get("run_id") != run_id:
            raise DeepcensInputError(self.output_dir, "process 0 of this run did not start here: the output folder "
                                     "must be one folder that every machine of the run shares")
        self.status = status
        self._owned = self._files_of_earlier_runs()  # as process 0 recorded them when it started

    def save(self, path: str, write) -> str:
        if os.path.realpath(path) not in self._planned:
            raise RuntimeError(f"{path}: not a planned output of this process")
        relative = self._rel(path)
        if relative not in self._owned:  # owned before it is written: a crash leaves no foreign file
            self.journal.append({"file": relative})
            self._owned.add(relative)
        write(path)
        self.written.append(path)
        return path

    def _write_status(self) -> None:  # process 0 writes the status
        pass


def _read_status(output_dir: str) -> dict:
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(output_dir, STATUS_FILE), encoding="utf-8") as handle:
            status = json.load(handle)
            if isinstance(status, dict):
                return status
    return {}


# ---- the run -------------------------------------------------------------------------------
def predict_sharded(cfg: CfgNode, inputs: Sequence[str], output_dir: str, *, skip_existing: bool = False,
                    batch_size: int = 1, score_threshold: float = 0.5, overlays: bool = False,
                    coco_json: bool = False, ctc_format: bool = False, frames: str | None = None,
                    tile_size: int = 0, tile_overlap: float = 0.25, class_names: str = "",
                    dataset_name: str | None = None, progress: bool | None = None,
                    allow_random_weights: bool = False, skip_bad: bool = False, track: bool = False) -> dict:
    """:func:`deepcens.predict.predict` as one process of ``comm.get_world_size()`` (one is fine).

    Call it in every process (``launch`` does); each predicts its share of the sources, process
    0 merges the summary. Returns, in every process, the run's counts: ``images`` predicted by
    this run (all processes), ``kept`` pages left from an earlier run (``skip_existing``),
    ``instances`` over all pages, ``skipped`` unreadable inputs.
    """
    from detectron2.utils import comm
    from tqdm import tqdm

    rank, world_size = comm.get_rank(), comm.get_world_size()
    check_options(batch_size, score_threshold, tile_size, tile_overlap)
    skipped, sources, names, writers = plan_writers(cfg, inputs, output_dir, ctc_format=ctc_format, overlays=overlays,
                                                    frames=frames, class_names=class_names, dataset_name=dataset_name,
                                                    skip_bad=skip_bad, track=track)
    run_files = [os.path.join(output_dir, "summary.csv")]
    if coco_json:
        run_files.append(os.path.join(output_dir, "coco_results.json"))
    input_files = [page.file_name for s in sources for page in s.pages]
    journal = Journal(output_dir, rank) if rank == 0 else None
    folder_context = run_folder(output_dir) if rank == 0 else _rank_folder(output_dir, rank)
    with folder_context as folder:
        if rank == 0:  # every process's files are checked before any work
            folder.plan([path for w in writers for path in w.planned_paths()] + run_files, input_files)
        predictor = Predictor(cfg, tile_size, tile_overlap, dataset_name, allow_random_weights)
        shared = None
        if rank == 0:
            shared = {"run_id": uuid.uuid4().hex,
                      "done": sorted(finished_sources(writers, output_dir)) if skip_existing else []}
            folder.start(command_line(), run_id=shared["run_id"], processes=world_size)
            if not skip_existing:  # entries of earlier runs would describe files this run replaces
                for path in journal_paths(output_dir):
                    os.unlink(path)
        shared = comm.all_gather(shared)[0]
        run_id, done = shared["run_id"], set(shared["done"])
        if rank != 0:
            folder.join(run_id)
            journal = folder.journal
        remaining = [i for i in range(len(writers)) if i not in done]
        shard = [writers[remaining[j]] for j in
                 partition([len(writers[i].source.pages) for i in remaining], world_size)[rank]]
        if rank != 0:
            folder.plan([path for w in shard for path in w.planned_paths()], input_files)

        def journal_source(writer: SourceWriter, rows: list[dict], coco: list[dict], bad: list[str]) -> None:
            label_of = {(page.file_name, "" if page.frame is None else page.frame): page.label
                        for page in writer.source.pages}
            journal.append({"run": run_id, "time": time.time(), "done": _source_key(writer.source),
                            "files": [folder._rel(p) for p in writer.planned_paths() if os.path.isfile(p)],
                            "labels": [label_of[(row["input"], row["frame"])] for row in rows],
                            "rows": rows, "coco": coco, "bad": bad})

        own = _run(predictor, shard, folder, names, batch_size, score_threshold, overlays, coco_json,
                   float(cfg.TEST.MASK_THRESHOLD), None if skipped is None else [], progress if rank == 0 else False,
                   tqdm, on_source_done=journal_source, write_run_files=False)
        journal.append({"run": run_id, "finished": rank})
        if rank != 0:
            _wait_for_merge(output_dir, run_id)
            return _result_from_status(_read_status(output_dir), predictor, output_dir, len(sources))
        _wait_for_ranks(output_dir, run_id, world_size)
        result = _merge(folder, writers, done, run_id, names, coco_json, list(skipped or []))
        folder.finish("complete", images=result["images"], kept=result["kept"], instances=result["instances"],
                      skipped=result["skipped"], processes=world_size)
    logger.debug("process 0 predicted %d of the run's %d images", own["images"], result["images"])
    result.update(random_weights=predictor.random_weights, output_dir=output_dir, sources=len(sources))
    return result


@contextlib.contextmanager
def _rank_folder(output_dir: str, rank: int):
    yield RankFolder(output_dir, Journal(output_dir, rank))


def _finished_ranks(output_dir: str, run_id: str) -> set[int]:
    return {int(e["finished"]) for e in read_journals(output_dir) if e.get("run") == run_id and "finished" in e}


def _wait_for_ranks(output_dir: str, run_id: str, world_size: int) -> None:
    """Process 0 waits (without a collective's timeout: shards may end far apart) for the others."""
    while len(_finished_ranks(output_dir, run_id)) < world_size:
        time.sleep(POLL_SECONDS)


def _wait_for_merge(output_dir: str, run_id: str) -> None:
    """Other processes wait until process 0 has ended the run (complete, or incomplete on an error)."""
    while True:
        status = _read_status(output_dir)
        if status.get("run_id") != run_id or status.get("state") != "running":
            return
        time.sleep(POLL_SECONDS)


def _merge(folder: RunFolder, writers: list[SourceWriter], kept: set[int], run_id: str, names: list[str],
           coco_json: bool, skipped: list[str]) -> dict:
    """Process 0: summary rows and COCO entries of every source, in one process's order."""
    entries = _latest_entries(folder.output_dir, run_id)
    table = SummaryTable(names)
    coco: list[dict] = []
    images = kept_pages = 0
    for index, writer in enumerate(writers):
        entry = entries.get(json.dumps(_source_key(writer.source)))
        if entry is None:
            raise RuntimeError(f"{writer.source.path}: no process journalled this source")
        first_id = len(table.rows)
        ids = {}
        for label, row in zip(entry["labels"], entry["rows"]):
            ids[label] = len(table.rows)
            table.rows.append(row)
        for result in entry["coco"]:  # image ids count the predicted pages of the whole run
            coco.append(dict(result, image_id=ids.get(result["file_name"], first_id)))
        skipped.extend(entry.get("bad", []))
        if index in kept:
            kept_pages += len(entry["rows"])
        else:
            images += len(entry["rows"])
    folder._owned.update(files_in_journals(folder.output_dir))
    folder.save(os.path.join(folder.output_dir, "summary.csv"), table.write)
    if coco_json:
        folder.save(os.path.join(folder.output_dir, "coco_results.json"),
                    lambda path: atomic_save_json(path, coco, indent=None))
    return {"images": images, "kept": kept_pages, "instances": int(sum(int(r["instances"]) for r in table.rows)),
            "skipped": skipped, "outputs": list(folder.written)}


def _result_from_status(status: dict, predictor: Predictor, output_dir: str, sources: int) -> dict:
    return {"images": int(status.get("images", 0)), "kept": int(status.get("kept", 0)),
            "instances": int(status.get("instances", 0)), "skipped": list(status.get("skipped", [])),
            "outputs": [], "random_weights": predictor.random_weights, "output_dir": output_dir, "sources": sources}


# ---- launching -----------------------------------------------------------------------------
def check_launch_options(args: argparse.Namespace) -> None:
    """Refuse impossible process layouts before anything starts."""
    if args.num_gpus < 1 or args.num_machines < 1:
        raise DeepcensInputError(None, "--num-gpus and --num-machines must be >= 1")
    if not 0 <= args.machine_rank < args.num_machines:
        raise DeepcensInputError(None, f"--machine-rank must be in 0 .. {args.num_machines - 1}")
    if args.num_machines > 1 and args.dist_url == "auto":
        raise DeepcensInputError(None, "--num-machines > 1 needs --dist-url tcp://HOST:PORT of machine 0")
    if args.num_gpus > 1 and args.device and args.device.startswith("cuda:"):
        raise DeepcensInputError(None, f"--device {args.device} would put every process on one GPU; give --device "
                                 "cuda (process N uses GPU N)")
    if args.num_gpus * args.num_machines > 1:
        import torch

        if torch.cuda.is_available() and args.num_gpus > torch.cuda.device_count():
            raise DeepcensInputError(None, f"--num-gpus {args.num_gpus} but this machine has "
                                     f"{torch.cuda.device_count()} GPU(s)")


def predict_worker(args: argparse.Namespace, local_processes: int) -> None:
    """One process of ``deepcens predict --num-gpus N``: predict its shard; process 0 prints the result."""
    import torch
    from detectron2.utils import comm

    from deepcens.predict.cli import print_result, run_predict

    def stop(signum, frame):
        raise SystemExit(f"stopped (signal {signum}): another process of the run failed or was stopped")

    if comm.is_main_process():  # launch ends the others when one fails: process 0 marks the run incomplete
        signal.signal(signal.SIGTERM, stop)
    if not torch.cuda.is_available():  # CPU processes share the cores
        torch.set_num_threads(max(1, torch.get_num_threads() // local_processes))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        result = run_predict(args)
    except KeyboardInterrupt:  # Ctrl-C reaches every process; the launching one says "interrupted"
        raise SystemExit(130) from None
    if comm.is_main_process():
        print_result(result)
        sys.stdout.flush()


def launch_predict(args: argparse.Namespace) -> int:
    """Run ``deepcens predict`` in ``--num-gpus`` x ``--num-machines`` processes (one: here)."""
    check_launch_options(args)
    if args.num_gpus * args.num_machines == 1:
        from deepcens.predict.cli import print_result, run_predict

        print_result(run_predict(args))
        return 0
    from deepcens.engine.launch_utils import dist_timeout, launch_reporting_errors
    from deepcens.engine.setup import load_config
    from deepcens.predict.cli import config_options

    # what every process would refuse is said once, before any process starts
    check_options(args.batch_size, args.score_threshold, args.tile_size, args.tile_overlap)
    collect_inputs(args.input, args.frames or None, [] if args.skip_bad else None)
    probe = RunFolder(args.output)
    probe.lock()
    probe.unlock()
    timeout = dist_timeout(load_config(args.config_file, config_options(args.opts)))
    return launch_reporting_errors(predict_worker, args.num_gpus, num_machines=args.num_machines,
                                   machine_rank=args.machine_rank, dist_url=args.dist_url,
                                   args=(args, args.num_gpus), timeout=timeout)
