"""``--logger csv``: ``RUN/metrics.csv``, one row per logged iteration, for a spreadsheet."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO

from fpncli.atomic import atomic_write
from fpncli.training.config import COCO_METRICS
from fpncli.training.loggers.base import ExperimentLogger
from fpncli.training.trainer import LOSS_KEYS

CSV_FILE = "metrics.csv"
_TIMES = ("lr", "grad_norm", "time_per_iter", "iter_time", "iter_cpu_time", "data_time", "images_per_s")
_TAIL = (*_TIMES, "memory_mb", *COCO_METRICS)


def columns(extra_losses: list[str]) -> list[str]:
    """The header: ``iter, epoch, loss``, torchvision's four losses, the model's other losses
    (e.g. AugFPN's auxiliary ones), lr, grad norm, times, memory, then the 12 COCO numbers."""
    return ["iter", "epoch", "loss", *LOSS_KEYS, *extra_losses, *_TAIL]


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """``(header, rows)`` of a metrics.csv (``([], [])`` when absent or empty)."""
    if not path.is_file():
        return [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


class CsvLogger(ExperimentLogger):
    """A row per iteration that logged anything: the train record's values (the same names
    as ``metrics.jsonl``) and, at an evaluation, its metrics; what an iteration did not log is
    left empty. The columns are fixed by the first row (a resumed run keeps its file's); a
    resumed run drops the rows after its checkpoint (they are redone)."""

    name = "csv"

    def start(self, start_iter: int, resumed: bool) -> None:
        self.path = self.run / CSV_FILE
        self.header: list[str] | None = None
        if resumed:
            header, rows = read_rows(self.path)
            if header:
                self.header = header
                kept = [r for r in rows if _int(r.get("iter")) <= start_iter]
                atomic_write(self.path, lambda f: _write(f, header, kept, with_header=True))
                return
        self.path.unlink(missing_ok=True)

    def log(self, scalars: dict[str, float], step: int) -> None:  # rows come from after_iteration
        pass

    def after_iteration(self) -> None:
        t = self.trainer
        if not self.active:
            return
        row: dict[str, object] = {}
        if t.train_record is not None and t.record_iter == t.iteration:
            row.update(t.train_record)
        if t.last_metrics is not None and t.metrics_iter == t.iteration:
            row.update({k: t.last_metrics[k] for k in COCO_METRICS if k in t.last_metrics})
        if not row:
            return
        row["iter"], row["epoch"] = t.iteration, t.iteration / t.per_epoch
        try:
            new = self.header is None
            if self.header is None:
                known = set(columns([]))
                self.header = columns(sorted(k for k in row if k.startswith("loss_") and k not in known))
            with open(self.path, "a", newline="", encoding="utf-8") as f:
                _write(f, self.header, [row], with_header=new)
        except OSError as exc:
            self._failed(exc)

    def finish(self, status: str) -> None:
        pass


def _write(f: IO[str], header: list[str], rows: list, with_header: bool) -> None:
    writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore", restval="")
    if with_header:
        writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def _int(text: str | None) -> int:
    try:
        return int(float(text or 0))
    except ValueError:
        return 0
