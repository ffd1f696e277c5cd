"""The sections of the report, one function each: HTML text around the figures of
imgcls.report.figures, from metrics.json and the saved predictions."""

from __future__ import annotations

import html
import numbers

import numpy as np

from imgcls.metrics import coverage_curve, pr_curves, reliability_bins, roc_curves
from imgcls.report import figures
from imgcls.report.predictions import Predictions

TOP_CONFUSED_CLASSES = 15  # the zoomed confusion matrix of large tasks shows this many classes
PAIRS_LISTED = 10
EXPLAINED_IMAGES = 4  # Grad-CAM pictures per kind (mistakes, correct)


def curves(history: list[dict] | None) -> str:
    if not history:
        return ""
    fig = figures.training_curves(history)
    return figures.figure_html(fig, "loss, accuracy and learning rate per epoch")


def confusion(m: dict) -> str:
    matrix, classes = m.get("confusion_matrix"), list(m.get("classes") or [])
    if not matrix or not classes:
        return ""
    parts = [
        '<p class="small">Rows are the true class, columns the predicted class. The second plot divides each '
        "row by its total (recall on the diagonal).</p>",
        figures.figure_html(figures.confusion_figure(matrix, classes, normalise=False), "confusion matrix, counts"),
        figures.figure_html(figures.confusion_figure(matrix, classes, normalise=True), "confusion matrix, rates"),
    ]
    if len(classes) > figures.ANNOTATE_MAX_CLASSES:
        keep = most_confused_classes(matrix, TOP_CONFUSED_CLASSES)
        if len(keep) >= 2:
            sub = np.asarray(matrix)[np.ix_(keep, keep)]
            names = [classes[i] for i in keep]
            title = f"the {len(keep)} classes with the most mistakes (counts)"
            parts.append(
                f'<p class="small">With {len(classes)} classes the full matrix is dense; here the '
                f"{len(keep)} classes involved in the most mistakes.</p>"
            )
            parts.append(figures.figure_html(figures.confusion_figure(sub, names, normalise=False, title=title), title))
    return "\n".join(parts)


def pairs(m: dict) -> str:
    found = confused_pairs(m, PAIRS_LISTED)
    if not found:
        return "<p>none</p>"
    items = "".join(
        f"<li>{esc(t)} predicted as {esc(p)}: {n} {'time' if n == 1 else 'times'}</li>" for t, p, n in found
    )
    return f"<ol>{items}</ol>"


def per_class(m: dict, train_counts: dict[str, int] | None) -> str:
    per_class = m.get("per_class") or {}
    if not per_class:
        return ""
    order = sorted(per_class.items(), key=lambda kv: (_sort_key(kv[1].get("f1")), kv[0]))
    columns = [("precision", 3), ("recall", 3), ("f1", 3), ("roc_auc", 3), ("average_precision", 3)]
    head = "<th>class</th><th>precision</th><th>recall</th><th>F1</th><th>ROC AUC</th><th>AP</th><th>support</th>"
    head += "<th>predicted</th>" + ("<th>train images</th>" if train_counts else "")
    rows = []
    for name, c in order:
        cells = "".join(num_cell(c.get(k), d) for k, d in columns)
        cells += num_cell(c.get("support")) + num_cell(c.get("predicted"))
        if train_counts:
            cells += num_cell(train_counts.get(name))
        rows.append(f"<tr><td>{esc(name)}</td>{cells}</tr>")
    return sortable_table("Worst F1 first; click a column to sort by it.", head, rows)


def sortable_table(note: str, head: str, rows: list[str]) -> str:
    """A note, then a scrollable table whose columns sort on click (the page's inline script)."""
    return (
        f'<p class="small">{note}</p>'
        f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def cards_html(cards: list[tuple[str, str]]) -> str:
    """The headline numbers as cards: (name, formatted value)."""
    return "".join(f'<div class="card"><div class="v">{v}</div><div class="k">{esc(k)}</div></div>' for k, v in cards)


def roc(m: dict, predictions: Predictions | None) -> str:
    if predictions is None:
        return ""
    curves = roc_curves(predictions.labels, predictions.probs)
    if len(m["classes"]) == 2 and curves:
        curves = {1: curves[1]}  # one curve says it all: the negative class's is its mirror
    return curves_section(curves, m["classes"], "roc", m.get("roc_auc_macro")) + (_binary(m) if curves else "")


def _binary(m: dict) -> str:
    b = m.get("binary")
    if not b:
        return ""
    p, n = esc(b["positive"]), esc(b["negative"])
    return (
        f'<p class="small">Two classes: with <b>{p}</b> as the positive class, at the default decision '
        "(the more probable class):</p>"
        f"<table><tr><th></th><th>predicted {p}</th><th>predicted {n}</th></tr>"
        f'<tr><th>true {p}</th><td class="n">TP {b["tp"]:,}</td><td class="n">FN {b["fn"]:,}</td></tr>'
        f'<tr><th>true {n}</th><td class="n">FP {b["fp"]:,}</td><td class="n">TN {b["tn"]:,}</td></tr></table>'
    )


def pr(m: dict, predictions: Predictions | None) -> str:
    if predictions is None:
        return ""
    curves = pr_curves(predictions.labels, predictions.probs)
    return curves_section(curves, m["classes"], "pr", m.get("average_precision_macro"))


def curves_section(curves: dict, classes, kind: str, macro: float | None) -> str:
    """ROC (kind "roc") or precision-recall ("pr") curves per class, or why there are none."""
    if not curves:
        return "<p>Undefined: the evaluated images hold a single class.</p>"
    area, title = ("AUC", "ROC curves") if kind == "roc" else ("AP", "precision-recall curves")
    fig = figures.curves_figure(curves, list(classes), kind=kind, macro=macro)
    return _few_curves(len(curves), area) + figures.figure_html(fig, title)


def _few_curves(count: int, area: str) -> str:
    if count <= figures.CURVES_MAX_CLASSES:
        return ""
    return (
        f'<p class="small">{count} classes: the plot shows the {figures.CURVES_MAX_CLASSES} classes with the '
        f"lowest {area}; the per-class table lists every one.</p>"
    )


def calibration(m: dict, predictions: Predictions | None) -> str:
    if predictions is None:
        return ""
    bins = reliability_bins(predictions.labels, predictions.probs)
    fig = figures.reliability_figure(bins, m.get("ece"))
    total = max(len(predictions.labels), 1)
    gap = sum(b["count"] * (b["confidence"] - b["accuracy"]) for b in bins if b["count"]) / total
    tendency = "over-confident" if gap > 0.005 else "under-confident" if gap < -0.005 else "well calibrated"
    return (
        f'<p class="small">Bars below the diagonal: the model is more confident than it is right. Overall it is '
        f"<b>{tendency}</b> (mean confidence minus accuracy {gap:+.4f}; ECE {num(m.get('ece'))}).</p>"
        + figures.figure_html(fig, "reliability diagram")
    )


def coverage(m: dict, predictions: Predictions | None) -> str:
    if predictions is None:
        return ""
    threshold, answered, accuracy = coverage_curve(predictions.labels, predictions.probs)
    table = m.get("selective") or []
    fig = figures.coverage_figure(threshold, answered, accuracy, table)
    rows = "".join(
        f'<tr><td class="n">{r["threshold"]:g}</td><td class="n">{pct(r["coverage"])}</td>'
        f'<td class="n">{pct(r["accuracy"])}</td></tr>'
        for r in table
    )
    return (
        '<p class="small">If the model may answer "not sure" below a confidence, it answers fewer images '
        "and is right more often on those. Pick the threshold that fits your use.</p>"
        + figures.figure_html(fig, "accuracy vs coverage")
        + f"<table><tr><th>answer when confidence ≥</th><th>answered</th><th>accuracy</th></tr>{rows}</table>"
    )


def mistakes(m: dict, predictions: Predictions | None) -> str:
    from imgcls.report.gallery import gallery_html, highest_loss_mistakes

    if predictions is None:
        return ""
    chosen = highest_loss_mistakes(predictions)
    if len(chosen) == 0:
        return "<p>No mistakes.</p>"
    return (
        '<p class="small">The wrong answers the model was surest of: often a mislabelled image, or a class '
        "boundary worth a look.</p>" + gallery_html(predictions, chosen, list(m["classes"]))
    )


def confident(m: dict, predictions: Predictions | None) -> str:
    from imgcls.report.gallery import gallery_html, most_confident_correct

    if predictions is None:
        return ""
    chosen = most_confident_correct(predictions)
    if len(chosen) == 0:
        return "<p>No correct answers.</p>"
    return gallery_html(predictions, chosen, list(m["classes"]))


def explanations(m: dict, predictions: Predictions | None, checkpoint) -> str:
    from imgcls.report import explain, gallery

    if predictions is None:
        return ""
    reason = explain.why_not_explained(checkpoint)
    if reason:
        return f"<p>Not available: {esc(reason)}</p>"
    wrong = gallery.highest_loss_mistakes(predictions, EXPLAINED_IMAGES)
    right = gallery.most_confident_correct(predictions, EXPLAINED_IMAGES)
    chosen = [int(i) for i in (*wrong, *right)]
    explained, layer = explain.explain(checkpoint, [predictions.paths[i] for i in chosen])
    if layer is None:
        return "<p>Not available: the model has no convolution layers to explain.</p>"
    by_path = {e.path: e for e in explained}
    classes = list(m["classes"])
    cards = []
    for i in chosen:
        e = by_path.get(predictions.paths[i])
        if e is None:
            continue
        true, pred = classes[predictions.labels[i]], classes[e.target]
        caption = f"predicted <b>{esc(pred)}</b>" + ("" if true == pred else f"<br>true {esc(true)}")
        cards.append(
            f'<figure class="thumb"><img src="{gallery.thumbnail(e.image)}" alt=""><img '
            f'src="{gallery.thumbnail(e.overlay)}" alt="Grad-CAM"><figcaption>{caption}</figcaption></figure>'
        )
    return (
        f'<p class="small">Red marks the regions that pushed the model towards its predicted class (layer '
        f"<code>{esc(layer)}</code>). Left: the {len(wrong)} worst mistakes above; right: confident correct "
        f'answers.</p><div class="gallery">{"".join(cards)}</div>'
    )


def skipped(m: dict) -> str:
    skipped = m.get("skipped_files") or []
    if not skipped:
        return "<p>none</p>"
    rows = "".join(f"<tr><td>{esc(s.get('path', ''))}</td><td>{esc(s.get('reason', ''))}</td></tr>" for s in skipped)
    return (
        f"<p>{len(skipped)} file(s) could not be read and were left out.</p>"
        f'<div class="scroll"><table><tr><th>path</th><th>reason</th></tr>{rows}</table></div>'
    )


# ---------------------------------------------------------------- helpers


def confused_pairs(m: dict, k: int) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal cells as (true, predicted, count), zero counts left out."""
    matrix, classes = m.get("confusion_matrix") or [], m.get("classes") or []
    cells = [
        (int(v), i, j)
        for i, row in enumerate(matrix)
        for j, v in enumerate(row)
        if i != j and v and i < len(classes) and j < len(classes)
    ]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(classes[i], classes[j], v) for v, i, j in cells[:k]]


def most_confused_classes(matrix, k: int) -> list[int]:
    """Indices of the k classes with the most mistakes made or received, in class order."""
    cm = np.asarray(matrix)
    off = cm - np.diag(np.diag(cm))
    involvement = off.sum(axis=0) + off.sum(axis=1)
    top = [int(i) for i in np.argsort(-involvement, kind="stable")[:k] if involvement[i] > 0]
    return sorted(top)


def matrix_total(m: dict) -> int:
    return int(sum(sum(row) for row in m.get("confusion_matrix") or []))


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def num_cell(value: float | None, digits: int = 4) -> str:
    sort_value = "" if value is None else f' data-v="{value}"'
    return f'<td class="n"{sort_value}>{num(value, digits)}</td>'


def plain(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return str(value)
    return f"{value:,}" if isinstance(value, numbers.Integral) else f"{value:.4g}"


def _sort_key(value: float | None) -> float:
    return float("inf") if value is None else float(value)
