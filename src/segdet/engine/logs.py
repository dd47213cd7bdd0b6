"""Run logs: every metric as JSONL and CSV, as TensorBoard scalars, and as PNG curves at the end."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path

from segdet.engine.atomic import write_text_atomic
from segdet.engine.tensorboard import EventWriter


class MetricLog:
    """Appends ``{"step", "epoch", "split", <metric>: value}`` records to ``metrics.jsonl`` and
    ``metrics.csv`` and to TensorBoard under ``<split>/<metric>``. Reopening a run appends."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.run_dir / "metrics.jsonl"
        self.csv = self.run_dir / "metrics.csv"
        self.events = EventWriter(self.run_dir / "tensorboard") if tensorboard else None

    def log(self, split: str, step: int, epoch: float, values: dict[str, float]) -> None:
        record = {"split": split, "step": step, "epoch": round(epoch, 4), **values}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        new = not self.csv.exists() or self.csv.stat().st_size == 0  # empty: a kill before any row
        with open(self.csv, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["split", "step", "epoch", "metric", "value"])
            for k, v in values.items():
                writer.writerow([split, step, record["epoch"], k, v])
        if self.events is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.events.add_scalar(f"{split}/{k}", v, step)
            self.events.flush()

    def truncate(self, step: int) -> None:
        """Drop the records logged after optimiser step ``step`` (a resumed run restarts from the
        checkpoint of that step: the steps a killed run logged after it would otherwise appear twice).
        A torn last line (a kill mid-write: no newline after it) is dropped too.
        Files are rewritten atomically; TensorBoard keeps its events (it shows the latest per step)."""
        if self.jsonl.exists():
            text, torn = _complete(self.jsonl.read_text())
            lines = [x for x in text.splitlines() if x.strip()]
            kept = [x for x in lines if _step_of_json(x) <= step]
            if torn or len(kept) < len(lines):
                write_text_atomic(self.jsonl, "".join(x + "\n" for x in kept))
        if self.csv.exists():
            with open(self.csv, newline="") as f:
                text, torn = _complete(f.read())
            rows = list(csv.reader(io.StringIO(text, newline="")))
            kept_rows = rows[:1] + [r for r in rows[1:] if _step_of_csv(r) <= step]
            if torn or len(kept_rows) < len(rows):
                write_text_atomic(self.csv, _csv_text(kept_rows))

    def records(self) -> list[dict]:
        if not self.jsonl.exists():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


def _step_of_json(line: str) -> float:
    """The step of a JSONL record; a torn last line (a kill mid-write) counts as after every step."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def _step_of_csv(row: list[str]) -> float:
    if len(row) != 5:  # split, step, epoch, metric, value
        return math.inf
    try:
        return float(row[1])
    except ValueError:
        return math.inf


def _complete(text: str) -> tuple[str, bool]:
    """``text`` up to its last newline, and whether a torn last line (no newline) was cut off."""
    end = text.rfind("\n") + 1
    return text[:end], end < len(text)


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def plot_curves(records: list[dict], out_dir: str | Path) -> list[Path]:
    """One PNG per metric (``loss.png``, ``mIoU.png``...), train and val series on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series: dict[str, dict[str, tuple[list, list]]] = {}
    for r in records:
        for k, v in r.items():
            if k in ("split", "step", "epoch") or not isinstance(v, int | float):
                continue
            xs, ys = series.setdefault(k, {}).setdefault(r["split"], ([], []))
            xs.append(r["epoch"])
            ys.append(v)
    written = []
    for metric, by_split in series.items():
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for split, (xs, ys) in by_split.items():
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        # Fixed margins: tight_layout costs ~10x the rest of a plot, and a run writes one per metric.
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.96)
        path = out_dir / f"{metric.replace('/', '_')}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


class Progress:
    """A one-line progress bar with ETA and the running loss, on stderr (quiet when not a TTY unless
    forced: CI logs get one line per ``every`` steps instead of carriage returns)."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, every: int = 10) -> None:
        self.total, self.desc, self.enabled, self.every = total, desc, enabled, max(1, every)
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, done: int, **values: float) -> None:
        if not self.enabled or (not self.tty and done % self.every and done != self.total):
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(done, 1) * (self.total - done)
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        width = 20
        filled = int(width * done / max(self.total, 1))
        line = (
            f"{self.desc} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
            f"{_fmt_time(elapsed)}<{_fmt_time(eta)} {shown}"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
