"""The report's plots: matplotlib ``Figure`` objects (no pyplot, so no global figure state and
any thread may draw), each turned into an embedded PNG by `figure_html`.

Class names may be in any script. matplotlib's default font (DejaVu Sans) has no CJK glyphs,
so every figure is drawn with a font list that falls back, glyph by glyph, to an installed
CJK font (Debian's fonts-noto-cjk, for example); the same names also appear as HTML text.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import io
import re
import warnings

import numpy as np

from imgcls.metrics import Curve

# Tried in order after DejaVu Sans, so Latin text keeps its usual look.
CJK_FONTS = (
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
# Font files worth registering when matplotlib's font cache predates their installation.
_CJK_FILE = re.compile(r"cjk|wqy|droidsansfallback|uming|ukai", re.IGNORECASE)
ANNOTATE_MAX_CLASSES = 30  # above this, cell text is unreadable; the colours carry the matrix
CURVES_MAX_CLASSES = 10  # ROC/PR plots draw at most this many classes (the worst); tables list all
LABEL_MAX_CHARS = 24  # longer class names are cut on plot axes (tables show them whole)


@functools.lru_cache(maxsize=1)
def font_families() -> tuple[str, ...]:
    """DejaVu Sans, then every installed CJK font matplotlib knows (registering any it missed)."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    if not installed.intersection(CJK_FONTS):
        for path in font_manager.findSystemFonts():
            if _CJK_FILE.search(path):
                with contextlib.suppress(Exception):  # an unreadable font file only means no fallback
                    font_manager.fontManager.addfont(path)
        installed = {f.name for f in font_manager.fontManager.ttflist}
    return ("DejaVu Sans", *(name for name in CJK_FONTS if name in installed))


def has_cjk_font() -> bool:
    return len(font_families()) > 1


@contextlib.contextmanager
def drawing():
    """Figures created inside draw their text with the fallback font list."""
    import matplotlib

    with matplotlib.rc_context({"font.family": list(font_families()), "axes.unicode_minus": False}):
        yield


def figure_html(fig, alt: str) -> str:
    """The figure as an <img> with a PNG data URI: the report stays one file."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), drawing():
        # Without any CJK font matplotlib warns per missing glyph and draws a box; the HTML
        # text beside each plot still shows the name.
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
        fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt, quote=True)}">'


def short(name: object) -> str:
    name = str(name)
    return name if len(name) <= LABEL_MAX_CHARS else name[: LABEL_MAX_CHARS - 1] + "…"


def training_curves(history: list[dict]):
    from matplotlib.figure import Figure

    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    marker = "o" if len(history) <= 30 else None
    with drawing():
        fig = Figure(figsize=(12, 3.6), layout="constrained")
        axes = fig.subplots(1, 3, width_ratios=[1, 1, 0.7])
        panels = [
            ("loss", ("train_loss", "val_loss")),
            ("accuracy", ("train_acc", "val_acc")),
            ("learning rate", ("lr",)),
        ]
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
    return fig


def confusion_figure(
    matrix, classes: list[str], *, normalise: bool, title: str | None = None, axes=("predicted", "true")
):
    """A heatmap of the confusion matrix (rows true, columns predicted), sized for the classes."""
    from matplotlib.figure import Figure

    cm = np.asarray(matrix, dtype=float)
    n = len(classes)
    if normalise:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(max(4.5, 0.3 * n + 3.0), 22.0)  # inches: 2 classes -> 4.5, 64+ classes -> 22 (cap)
    label_size = max(5.0, min(10.0, 10.0 - (n - 10) / 12))
    with drawing():
        fig = Figure(figsize=(side + 1.2, side), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalise else max(cm.max(), 1))
        fig.colorbar(image, ax=ax, shrink=0.8)
        labels = [short(c) for c in classes]
        ax.set_xticks(
            range(n),
            labels,
            rotation=60 if n > 2 else 0,
            ha="right" if n > 2 else "center",
            rotation_mode="anchor",
            fontsize=label_size,
            parse_math=False,
        )
        ax.set_yticks(range(n), labels, fontsize=label_size, parse_math=False)
        ax.set_xlabel(axes[0])
        ax.set_ylabel(axes[1])
        ax.set_title(title or ("row-normalised" if normalise else "counts"))
        if n <= ANNOTATE_MAX_CLASSES:
            threshold = image.norm.vmax / 2
            cell_size = max(5.0, min(11.0, 11.0 - (n - 8) / 4))
            for (i, j), v in np.ndenumerate(cm):
                text = f"{v:.2f}" if normalise else f"{int(v)}"
                colour = "white" if v > threshold else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=cell_size, color=colour)
    return fig


def curves_figure(curves: dict[int, Curve], classes: list[str], *, kind: str, macro: float | None):
    """ROC (kind "roc") or precision-recall (kind "pr") curves, one line per class: the worst
    CURVES_MAX_CLASSES by area when there are more."""
    from matplotlib.figure import Figure

    shown = sorted(curves, key=lambda c: (curves[c].area, c))[:CURVES_MAX_CLASSES]
    area = "AUC" if kind == "roc" else "AP"
    with drawing():
        fig = Figure(figsize=(6.4, 5.2), layout="constrained")
        ax = fig.subplots()
        for c in sorted(shown):
            curve = curves[c]
            step = {"drawstyle": "steps-post"} if kind == "pr" else {}
            ax.plot(curve.x, curve.y, label=f"{short(classes[c])} ({area} {curve.area:.3f})", **step)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
        else:
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
        worst = f", the {len(shown)} lowest" if len(curves) > len(shown) else ""
        macro_text = f"macro {area} {macro:.3f}" if macro is not None else ""
        ax.set_title(f"{'ROC' if kind == 'roc' else 'precision-recall'} (one-vs-rest{worst}) {macro_text}")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if kind == "roc" else "lower left")
    return fig


def reliability_figure(bins: list[dict], ece: float | None):
    """Accuracy against confidence per bin (the diagonal is perfect calibration), with counts."""
    from matplotlib.figure import Figure

    with drawing():
        fig = Figure(figsize=(10, 4), layout="constrained")
        left, right = fig.subplots(1, 2)
        filled = [b for b in bins if b["count"]]
        width = bins[0]["high"] - bins[0]["low"] if bins else 0.1
        left.bar(
            [b["low"] for b in filled],
            [b["accuracy"] for b in filled],
            width=width,
            align="edge",
            edgecolor="#1f4e79",
            color="#9ecae1",
            label="accuracy",
        )
        left.plot(
            [b["confidence"] for b in filled],
            [b["accuracy"] for b in filled],
            "o",
            color="#d62728",
            markersize=4,
            label="bin mean confidence",
        )
        left.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
        left.set_xlabel("confidence (top probability)")
        left.set_ylabel("accuracy")
        left.set_title("reliability" + (f" (ECE {ece:.4f})" if ece is not None else ""))
        left.set_xlim(0, 1)
        left.set_ylim(0, 1.01)
        left.legend(fontsize=8, loc="upper left")
        right.bar([b["low"] for b in bins], [b["count"] for b in bins], width=width, align="edge", color="#bbbbbb")
        right.set_xlabel("confidence")
        right.set_ylabel("images")
        right.set_title("how many images per confidence bin")
        right.set_xlim(0, 1)
    return fig


def coverage_figure(threshold: np.ndarray, coverage: np.ndarray, accuracy: np.ndarray, table: list[dict]):
    """Accuracy kept against the share of images answered, abstaining below a confidence."""
    from matplotlib.figure import Figure

    with drawing():
        fig = Figure(figsize=(6.4, 4.4), layout="constrained")
        ax = fig.subplots()
        ax.plot(coverage, accuracy, color="#1f77b4")
        for row in table:
            if row["accuracy"] is not None and row["coverage"] > 0:
                ax.plot(row["coverage"], row["accuracy"], "o", color="#d62728", markersize=4)
                ax.annotate(
                    f"≥{row['threshold']:g}",
                    (row["coverage"], row["accuracy"]),
                    fontsize=8,
                    textcoords="offset points",
                    xytext=(4, -10),
                )
        ax.set_xlabel("coverage (share of images answered)")
        ax.set_ylabel("accuracy on the answered images")
        ax.set_title("accuracy vs coverage (red: confidence thresholds)")
        ax.set_xlim(0, 1.01)
        ax.grid(alpha=0.3)
    return fig
