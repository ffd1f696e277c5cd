"""The report of a multi-label task: mAP and F1 at the chosen thresholds, per-class table with
each class's threshold, per-class precision-recall curves and the label co-occurrence matrix."""

from __future__ import annotations

import numpy as np

from imgcls.metrics import multilabel_pr_curves
from imgcls.report import figures
from imgcls.report.predictions import Predictions
from imgcls.report.sections import cards_html, curves_section, esc, num, num_cell, pct, sortable_table


def headline(m: dict) -> str:
    cards = [
        ("mAP", num(m.get("mAP"))),
        ("micro-F1", num(m.get("micro_f1"))),
        ("macro-F1", num(m.get("macro_f1"))),
        ("subset accuracy", pct(m.get("subset_accuracy"))),
        ("images", num(m.get("num_samples"))),
    ]
    card_html = cards_html(cards)
    extra = f"Hamming loss {num(m.get('hamming_loss'))} · default threshold {num(m.get('threshold'), 2)}"
    return f'<div class="cards">{card_html}</div>\n<p class="small">{extra} (multi-label)</p>'


def first_look(m: dict) -> str:
    per_class = {name: c for name, c in (m.get("per_class") or {}).items() if c.get("average_precision") is not None}
    if not m.get("num_samples"):
        return "No images were evaluated, so there is nothing to look at yet."
    if not per_class:
        return "No label occurs in the evaluated images, so there is no precision to measure."
    name, worst = min(per_class.items(), key=lambda kv: kv[1]["average_precision"])
    text = (
        f"Look first at <strong>{esc(name)}</strong>, the label found least reliably (AP "
        f"{worst['average_precision']:.3f}, recall {worst['recall']:.2f} at threshold {worst['threshold']:.2f})"
    )
    skipped = len(m.get("skipped_files") or [])
    if skipped:
        text += f". {skipped} file(s) could not be read and were skipped (listed at the end)"
    return text + "."


def per_class(m: dict, train_counts: dict[str, int] | None) -> str:
    rows = []
    order = sorted((m.get("per_class") or {}).items(), key=lambda kv: (kv[1].get("average_precision") or 0, kv[0]))
    for name, c in order:
        cells = "".join(num_cell(c.get(k), 3) for k in ("average_precision", "precision", "recall", "f1"))
        cells += num_cell(c.get("support")) + num_cell(c.get("threshold"), 3)
        if train_counts:
            cells += num_cell(train_counts.get(name))
        rows.append(f"<tr><td>{esc(name)}</td>{cells}</tr>")
    head = "<th>label</th><th>AP</th><th>precision</th><th>recall</th><th>F1</th><th>images with it</th>"
    head += "<th>threshold</th>" + ("<th>train images with it</th>" if train_counts else "")
    note = (
        "Worst AP first; precision, recall and F1 at each label's threshold (chosen on validation for the "
        "best F1, stored in the checkpoint). Click a column to sort."
    )
    return sortable_table(note, head, rows)


def pr(m: dict, predictions: Predictions | None) -> str:
    if predictions is None:
        return ""
    curves = multilabel_pr_curves(predictions.labels, predictions.probs)
    if not curves:
        return "<p>Undefined: no label occurs in the evaluated images.</p>"
    return curves_section(curves, m["classes"], "pr", m.get("mAP"))


def cooccurrence(m: dict, predictions: Predictions | None) -> str:
    if predictions is None:
        return ""
    truth = (np.asarray(predictions.labels) > 0.5).astype(np.int64)
    counts = truth.T @ truth  # diagonal: images with the label; off-diagonal: images with both
    classes = list(m["classes"])
    title = "images holding both labels (diagonal: the label at all)"
    fig = figures.confusion_figure(counts, classes, normalise=False, title=title, axes=("label", "label"))
    return figures.figure_html(fig, "label co-occurrence")
