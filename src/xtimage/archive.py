"""Prediction over an archive of files: sharded over processes and nodes, resumable, indexed.

Each process of a `torchrun` run (any number of nodes) takes every W-th input (`shard`)
and predicts it with `Predictor.predict_file`, whose outputs appear under their final
names only when complete (`xtimage.io.atomic`). As soon as a file is finished the process
appends one record to its own part file, ``OUT/.xt_index/part-RANK.jsonl`` (flushed and
fsync'd), so the part files always say what is on disk. Then:

- an input whose outputs all exist is skipped: a rerun after a killed node or a crashed
  job redoes only what is missing (``overwrite`` redoes everything);
- an input that fails (unreadable, wrong band count, out of memory...) is recorded with
  its error and the others go on;
- at the end every process's records are all-gathered (the barrier), and rank 0 merges
  them with every part file it can read (earlier runs', whatever their number of
  processes) into one index, ``OUT/xt_index.csv`` and ``OUT/xt_index.json``: one row
  per input of this run, in input order, its latest record; a skip keeps the record of
  the run that wrote the outputs (and its time). On nodes without a shared disk the
  gathered records still make this run's index complete; earlier runs' timings come
  from the part files rank 0 sees.

Record fields: ``input`` (as given), ``outputs`` (the files; joined by ``;`` in the CSV),
``status`` (``done``, ``skipped``: outputs found and no record of writing them,
``failed``, ``missing``: no record, e.g. a process died before the barrier), ``error``,
``seconds``, ``rank``, ``finished`` (UTC, ISO 8601).
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from xtimage.distributed import World, all_gather, current_world, shard
from xtimage.io.atomic import atomic_path, output_dir

log = logging.getLogger(__name__)

PARTS = ".xt_index"
INDEX = "xt_index"
FIELDS = ["input", "outputs", "status", "error", "seconds", "rank", "finished"]


@dataclass
class ArchiveResult:
    """What `predict_archive` did.

    Attributes:
        counts: this process's ``done``, ``skipped`` and ``failed`` inputs.
        rows: the merged index (rank 0; empty on the others).
        index: the index files written (rank 0).
    """

    counts: dict[str, int]
    rows: list[dict[str, Any]] = field(default_factory=list)
    index: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The merged index's rows that did not succeed (rank 0)."""
        return [r for r in self.rows if r["status"] in ("failed", "missing")]


def predict_archive(
    predictor: Any,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    heatmap: bool = False,
    progress: bool = True,
    world: World | None = None,
) -> ArchiveResult:
    """Predict every input into ``out_dir``, this process's share of them.

    Args:
        predictor: a `xtimage.predict.Predictor` (anything with ``predict_file`` and
            ``outputs``).
        inputs: the whole run's inputs, the same list on every process.
        out_dir: where outputs, part files and the index go.
        overwrite: redo inputs whose outputs exist.
        heatmap: segmentation: also write the probability map.
        progress: a progress bar on rank 0.
        world: this process's place; None: from the initialised process group.
    """
    world = world or current_world()
    out_dir = output_dir(out_dir)
    parts = out_dir / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    part = parts / f"part-{world.rank}.jsonl"
    counts = {"done": 0, "skipped": 0, "failed": 0}
    mine = shard(list(inputs), world)
    records = []
    bar = tqdm(mine, desc="predict", unit="file", disable=not (progress and world.main))
    for path in bar:
        record = _predict_one(predictor, Path(path), out_dir, overwrite, heatmap, progress)
        record.update(input=str(path), rank=world.rank, finished=_now())
        _append(part, record)
        records.append(record)
        counts[record["status"]] += 1
    records = all_gather(records)  # also the barrier; the index without a shared disk
    if not world.main:
        return ArchiveResult(counts)
    rows = merge_index(out_dir, inputs, records)
    return ArchiveResult(counts, rows, write_index(out_dir, rows))


def _predict_one(predictor, path: Path, out_dir: Path, overwrite, heatmap, progress) -> dict:
    start = time.perf_counter()
    try:
        result = predictor.predict_file(
            path, out_dir, overwrite=overwrite, heatmap=heatmap, progress=progress
        )
    except Exception as error:  # recorded; the other inputs go on
        log.warning("%s: failed (%s: %s)", path, type(error).__name__, error)
        log.debug("%s: failure", path, exc_info=True)
        return {
            "outputs": [],
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "seconds": round(time.perf_counter() - start, 3),
        }
    files = predictor.outputs(path, out_dir, heatmap) if result is None else result.files
    return {
        "outputs": [str(f) for f in files],
        "status": "skipped" if result is None else "done",
        "error": None,
        "seconds": 0.0 if result is None else round(time.perf_counter() - start, 3),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def _append(part: Path, record: dict) -> None:
    """One JSON line, on disk before the next input starts."""
    with open(part, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_parts(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of every part file under ``out_dir``; a torn last line (a process
    killed while writing it) is left out."""
    records = []
    for part in sorted((Path(out_dir) / PARTS).glob("part-*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: an incomplete record left out", part)
    return records


def merge_index(
    out_dir: str | Path, inputs: Sequence[str | Path], records: Sequence[dict] = ()
) -> list[dict[str, Any]]:
    """One row per input, in input order: its latest record among the part files and
    ``records`` (this run's, gathered from every process: complete even when the part
    files of other nodes are not on this one's disk); a skip keeps the record of the
    run that wrote the outputs."""
    latest: dict[str, dict[str, Any]] = {}
    everything = [*read_parts(out_dir), *records]
    for record in sorted(everything, key=lambda r: r["finished"]):
        before = latest.get(record["input"])
        if record["status"] == "skipped" and before is not None and before["status"] == "done":
            continue
        latest[record["input"]] = record
    missing = {"outputs": [], "status": "missing", "error": "no record", "seconds": None}
    rows = []
    for path in map(str, inputs):
        row = latest.get(path) or {**missing, "input": path, "rank": None, "finished": None}
        rows.append({k: row.get(k) for k in FIELDS})
    return rows


def write_index(out_dir: str | Path, rows: list[dict[str, Any]]) -> list[Path]:
    """``xt_index.json`` and ``xt_index.csv`` in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    json_path, csv_path = out_dir / f"{INDEX}.json", out_dir / f"{INDEX}.csv"
    with atomic_path(json_path) as temp:
        temp.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    with atomic_path(csv_path) as temp, open(temp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "outputs": ";".join(row["outputs"])})
    return [csv_path, json_path]
