"""Reports of finished runs: `imgcls report RUN_DIR` draws a run's report again from the files
it left (metrics.json, summary.json, history.csv, predictions.npz, best.safetensors), and
`imgcls compare RUN_DIR...` sets runs side by side."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

from imgcls.errors import DataError
from imgcls.files import atomic_write_bytes
from imgcls.report.document import write_report
from imgcls.report.predictions import load_predictions

COMPARE_COLUMNS = (
    ("run", "run"),
    ("model", "model"),
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("top5", "top-5"),
    ("ece", "ECE"),
    ("log_loss", "log loss"),
    ("images", "images"),
    ("epochs", "epochs"),
    ("seconds", "seconds"),
    ("recipe", "recipe"),
)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not readable JSON ({err}).") from None


def read_history(path: Path) -> list[dict] | None:
    """history.csv as rows of numbers (empty cells become None)."""
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def _metrics(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is not a folder. Give a run folder (from `imgcls train` or `evaluate --out`).")
    metrics = _read_json(run_dir / "metrics.json")
    if metrics is None:
        raise DataError(f"{run_dir} has no metrics.json: is it a finished run or evaluation folder?")
    return metrics


def rebuild_report(run_dir: Path, out: Path | None = None) -> Path:
    """Draw report.html of a run or evaluation folder again; returns its path."""
    run_dir = Path(run_dir)
    metrics = _metrics(run_dir)
    summary = _read_json(run_dir / "summary.json") or {}
    train_counts = summary.pop("train_counts", None)
    checkpoint = run_dir / "best.safetensors"
    if not checkpoint.is_file() and summary.get("checkpoint"):
        checkpoint = Path(summary["checkpoint"])
    if str(checkpoint).lower().endswith(".onnx") or not checkpoint.is_file():
        checkpoint = None
    return write_report(
        out or run_dir / "report.html",
        metrics=metrics,
        history=read_history(run_dir / "history.csv"),
        summary=summary,
        predictions=load_predictions(run_dir),
        checkpoint=checkpoint,
        train_counts=train_counts,
    )


def compare_rows(run_dirs: list[Path]) -> list[dict]:
    """One row per run: headline metrics, time, model and recipe."""
    rows = []
    for run_dir in map(Path, run_dirs):
        m = _metrics(run_dir)
        summary = _read_json(run_dir / "summary.json") or {}
        history = read_history(run_dir / "history.csv")
        seconds = summary.get("run seconds", summary.get("evaluation seconds"))
        rows.append(
            {
                "run": str(run_dir),
                "model": summary.get("model", ""),
                "accuracy": m.get("accuracy"),
                "macro_f1": m.get("macro_f1"),
                "top5": m.get("top5_accuracy"),
                "ece": m.get("ece"),
                "log_loss": m.get("log_loss"),
                "images": m.get("num_samples"),
                "epochs": len(history) if history else None,
                "seconds": seconds,
                "recipe": summary.get("recipe", ""),
            }
        )
    return rows


def _cell(value: object, key: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}" if key == "seconds" or value >= 10 else f"{value:.4f}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """A plain-text table for the terminal (the recipe column left out: it is long)."""
    columns = [(k, title) for k, title in COMPARE_COLUMNS if k != "recipe"]
    cells = [[title for _, title in columns]] + [[_cell(row[k], k) for k, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_comparison(rows: list[dict], path: Path) -> Path:
    """The comparison as CSV, or as an HTML page when the file name ends in .html."""
    path = Path(path)
    if path.suffix.lower() in (".html", ".htm"):
        head = "".join(f"<th>{html.escape(title)}</th>" for _, title in COMPARE_COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(row[k], k))}</td>" for k, _ in COMPARE_COLUMNS) + "</tr>"
            for row in rows
        )
        text = (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>imgcls runs compared</title>'
            "<style>body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse}"
            "td,th{border:1px solid #ddd;padding:.25rem .6rem}</style></head><body><h1>Runs compared</h1>"
            f"<table><tr>{head}</tr>{body}</table></body></html>\n"
        )
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[k for k, _ in COMPARE_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))
    return path
