"""One self-contained HTML report: headline numbers, curves, confusion matrix, per-class table.

Everything lives in the one file: plots are PNG data URIs, styles sit in a <style> element
and nothing is fetched from the network, so the report can be mailed or archived as-is.
Plots use matplotlib ``Figure`` objects directly (no pyplot), so no global figure state is
touched and the report can be written from any thread or a headless server.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import numbers
import warnings
from pathlib import Path

from imgcls.checkpoint import atomic_write_bytes

# Tried in order after DejaVu Sans, so Latin text keeps its usual look and CJK class names
# fall back glyph by glyph to the first of these that is installed.
_CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Microsoft YaHei",
    "SimHei",
    "PingFang SC",
    "Hiragino Sans GB",
    "Droid Sans Fallback",
    "AR PL UMing CN",
    "Arial Unicode MS",
)
_ANNOTATE_MAX_CLASSES = 30  # above this, cell text is unreadable; the colours carry the matrix
_LABEL_MAX_CHARS = 24  # longer class names are cut on plot axes (tables show them whole)

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}
h1{margin-bottom:.3rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.cards{display:flex;flex-wrap:wrap;gap:1rem;margin:1rem 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;min-width:8rem}
.card .v{font-size:1.6rem;font-weight:600}.card .k{color:#666;font-size:.85rem}
.small{color:#555;font-size:.9rem}
table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.look{background:#fff8e1;border-left:4px solid #f0a500;padding:.6rem 1rem}
img{max-width:100%;height:auto}
"""


def write_report(path: Path, *, metrics: dict, history: list[dict] | None = None, summary: dict | None = None) -> Path:
    """Write the HTML report to ``path`` atomically and return the path."""
    path = Path(path)
    sections = [
        _headline(metrics),
        _summary_table(summary),
        _first_look(metrics),
        _curves(history),
        _confusion(metrics),
        _per_class_table(metrics),
        _confused_pairs_section(metrics),
        _skipped(metrics),
    ]
    body = "\n".join(s for s in sections if s)
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>imgcls report</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )
    _write_atomic(path, document)
    return path


# ---------------------------------------------------------------- sections


def _headline(metrics: dict) -> str:
    cards = [
        ("accuracy", _pct(metrics.get("accuracy"))),
        ("macro-F1", _num(metrics.get("macro_f1"))),
    ]
    if metrics.get("top5_accuracy") is not None:
        cards.append(("top-5 accuracy", _pct(metrics["top5_accuracy"])))
    cards.append(("samples", _num(metrics.get("num_samples"))))
    card_html = "".join(
        f'<div class="card"><div class="v">{v}</div><div class="k">{_e(k)}</div></div>' for k, v in cards
    )
    extra = [
        ("macro precision", _num(metrics.get("macro_precision"))),
        ("macro recall", _num(metrics.get("macro_recall"))),
        ("ROC AUC (macro)", _num(metrics.get("roc_auc_macro"))),
        ("log loss", _num(metrics.get("log_loss"))),
        ("ECE", _num(metrics.get("ece"))),
    ]
    extra_html = " · ".join(f"{_e(k)} {v}" for k, v in extra)
    return f'<h1>imgcls report</h1>\n<div class="cards">{card_html}</div>\n<p class="small">{extra_html}</p>'


def _summary_table(summary: dict | None) -> str:
    if not summary:
        return ""
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_plain(v))}</td></tr>" for k, v in summary.items())
    return f"<h2>Run</h2>\n<table>{rows}</table>"


def _first_look(metrics: dict) -> str:
    pairs = _confused_pairs(metrics, 1)
    if pairs:
        true, pred, count = pairs[0]
        text = (
            f"Look first at the most confused pair: <strong>{_e(true)}</strong> predicted as "
            f"<strong>{_e(pred)}</strong>: {count} {'time' if count == 1 else 'times'}."
        )
    elif _matrix_total(metrics) > 0:
        text = "No errors: every sample lies on the diagonal of the confusion matrix."
    else:
        text = "No samples were evaluated, so there is nothing to look at yet."
    return f'<p class="look">{text}</p>'


def _curves(history: list[dict] | None) -> str:
    if not history:
        return ""
    from matplotlib.figure import Figure

    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    marker = "o" if len(history) <= 30 else None
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[1, 1, 0.7])
    panels = [("loss", ("train_loss", "val_loss")), ("accuracy", ("train_acc", "val_acc")), ("learning rate", ("lr",))]
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            points = [(e, r[key]) for e, r in zip(epochs, history, strict=True) if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker=marker, label=key.split("_")[0])
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(keys) > 1 and ax.get_legend_handles_labels()[0]:
            ax.legend()
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return f"<h2>Training curves</h2>\n{_img(fig, 'loss, accuracy and learning rate per epoch')}"


def _confusion(metrics: dict) -> str:
    matrix, classes = metrics.get("confusion_matrix"), list(metrics.get("classes") or [])
    if not matrix or not classes:
        return ""
    counts = confusion_figure(matrix, classes, normalise=False)
    rates = confusion_figure(matrix, classes, normalise=True)
    return (
        '<h2>Confusion matrix</h2>\n<p class="small">Rows are the true class, columns the '
        "predicted class. The second plot divides each row by its total (recall on the diagonal)."
        f"</p>\n{_img(counts, 'confusion matrix, counts')}\n"
        f"{_img(rates, 'confusion matrix, row-normalised')}"
    )


def _per_class_table(metrics: dict) -> str:
    per_class = metrics.get("per_class") or {}
    if not per_class:
        return ""
    order = sorted(per_class.items(), key=lambda kv: (_sort_key(kv[1].get("f1")), kv[0]))
    rows = "".join(
        f"<tr><td>{_e(name)}</td>"
        + "".join(f'<td class="n">{_num(m.get(k), 3)}</td>' for k in ("precision", "recall", "f1"))
        + f'<td class="n">{_num(m.get("support"))}</td></tr>'
        for name, m in order
    )
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    return f"<h2>Per class (worst F1 first)</h2>\n<table>{head}{rows}</table>"


def _confused_pairs_section(metrics: dict) -> str:
    pairs = _confused_pairs(metrics, 3)
    if not pairs:
        return "<h2>Most confused pairs</h2>\n<p>none</p>"
    items = "".join(f"<li>{_e(t)} predicted as {_e(p)}: {n} {'time' if n == 1 else 'times'}</li>" for t, p, n in pairs)
    return f"<h2>Most confused pairs</h2>\n<ol>{items}</ol>"


def _skipped(metrics: dict) -> str:
    skipped = metrics.get("skipped_files") or []
    if not skipped:
        return "<h2>Skipped files</h2>\n<p>none</p>"
    rows = "".join(f"<tr><td>{_e(s.get('path', ''))}</td><td>{_e(s.get('reason', ''))}</td></tr>" for s in skipped)
    return f"<h2>Skipped files ({len(skipped)})</h2>\n<table><tr><th>path</th><th>reason</th></tr>{rows}</table>"


# ---------------------------------------------------------------- figures


def confusion_figure(matrix: list[list[int]], classes: list[str], *, normalise: bool):
    """A heatmap ``Figure`` of the confusion matrix, sized for the number of classes."""
    import numpy as np
    from matplotlib.figure import Figure

    cm = np.asarray(matrix, dtype=float)
    n = len(classes)
    if normalise:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(max(4.5, 0.3 * n + 3.0), 22.0)  # inches: 2 classes -> 4.5, 64+ classes -> 22 (cap)
    label_size = max(5.0, min(10.0, 10.0 - (n - 10) / 12))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalise else max(cm.max(), 1))
    fig.colorbar(image, ax=ax, shrink=0.8)
    labels = [_short(c) for c in classes]
    fonts = _font_families()
    ax.set_xticks(
        range(n),
        labels,
        rotation=60 if n > 2 else 0,
        ha="right" if n > 2 else "center",
        rotation_mode="anchor",
        fontsize=label_size,
        family=fonts,
        parse_math=False,
    )
    ax.set_yticks(range(n), labels, fontsize=label_size, family=fonts, parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("row-normalised" if normalise else "counts")
    if n <= _ANNOTATE_MAX_CLASSES:
        threshold = image.norm.vmax / 2
        cell_size = max(5.0, min(11.0, 11.0 - (n - 8) / 4))
        for (i, j), v in np.ndenumerate(cm):
            text = f"{v:.2f}" if normalise else f"{int(v)}"
            ax.text(
                j, i, text, ha="center", va="center", fontsize=cell_size, color="white" if v > threshold else "black"
            )
    return fig


def _img(fig, alt: str) -> str:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Without a CJK font matplotlib warns per missing glyph and draws a box; that is fine.
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
        fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


@functools.lru_cache(maxsize=1)
def _font_families() -> tuple[str, ...]:
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ("DejaVu Sans", *(name for name in _CJK_FONTS if name in installed))


# ---------------------------------------------------------------- helpers


def _confused_pairs(metrics: dict, k: int) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal cells as (true, predicted, count), zero counts left out."""
    matrix, classes = metrics.get("confusion_matrix") or [], metrics.get("classes") or []
    cells = [
        (int(v), i, j)
        for i, row in enumerate(matrix)
        for j, v in enumerate(row)
        if i != j and v and i < len(classes) and j < len(classes)
    ]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(classes[i], classes[j], v) for v, i, j in cells[:k]]


def _matrix_total(metrics: dict) -> int:
    return int(sum(sum(row) for row in metrics.get("confusion_matrix") or []))


def _write_atomic(path: Path, text: str) -> None:
    # File names that are not valid UTF-8 arrive as surrogate escapes; show them escaped.
    atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _short(name: str) -> str:
    name = str(name)
    return name if len(name) <= _LABEL_MAX_CHARS else name[: _LABEL_MAX_CHARS - 1] + "…"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _plain(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _sort_key(value: float | None) -> float:
    return float("inf") if value is None else float(value)
