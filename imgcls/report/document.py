"""One self-contained HTML report: what to look at first, headline numbers, curves, confusion
matrix, per-class table, ROC and precision-recall, calibration, coverage, galleries and
Grad-CAM explanations.

Everything lives in the one file: plots and thumbnails are PNG data URIs, the style and the
table-sorting script are inline, nothing is fetched from the network, so the report can be
mailed or archived as-is. Every number comes from imgcls.metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from imgcls.files import atomic_write_bytes
from imgcls.report import multilabel as ml
from imgcls.report import sections as sec
from imgcls.report.predictions import Predictions
from imgcls.report.sections import esc, num, pct

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC","Microsoft YaHei",sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.3rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
nav a{margin-right:.8rem;font-size:.9rem}
.cards{display:flex;flex-wrap:wrap;gap:1rem;margin:1rem 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;min-width:8rem}
.card .v{font-size:1.6rem;font-weight:600}.card .k{color:#666;font-size:.85rem}
.small{color:#555;font-size:.9rem}
.scroll{max-height:28rem;overflow:auto;display:inline-block;border:1px solid #eee}
table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}
th.sortable{cursor:pointer;user-select:none;background:#f6f6f6}th.sortable:after{content:" \\2195";color:#aaa}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.look{background:#fff8e1;border-left:4px solid #f0a500;padding:.6rem 1rem}
img{max-width:100%;height:auto}
.gallery{display:flex;flex-wrap:wrap;gap:.6rem}
.thumb{margin:0;width:120px;font-size:.8rem;text-align:center}
.thumb img{image-rendering:pixelated;border:1px solid #ccc}
.missing{width:112px;height:112px;background:#eee;display:flex;align-items:center;justify-content:center}
"""

# Click a header of a .sortable table to sort by that column (numbers numerically); a
# second click reverses. Inline, so the report stays one file that works offline.
_SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function(table){
  table.querySelectorAll("th").forEach(function(th, col){
    th.classList.add("sortable");
    th.addEventListener("click", function(){
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var dir = th.dataset.dir === "asc" ? -1 : 1; th.dataset.dir = dir === 1 ? "asc" : "desc";
      var key = function(r){ var c = r.cells[col]; var v = c.dataset.v !== undefined ? c.dataset.v : c.textContent;
        var n = parseFloat(v); return isNaN(n) ? v.toLowerCase() : n; };
      rows.sort(function(a, b){ var x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * dir; });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""


@dataclass
class ReportInputs:
    """Everything a report may show; only metrics is required."""

    metrics: dict
    history: list[dict] | None = None
    summary: dict = field(default_factory=dict)  # rows of the "Run" table: model, data, recipe, time...
    predictions: Predictions | None = None  # for curves, calibration and galleries
    checkpoint: Path | None = None  # for Grad-CAM
    train_counts: dict[str, int] | None = None  # training images per class


def write_report(
    path: Path,
    *,
    metrics: dict,
    history: list[dict] | None = None,
    summary: dict | None = None,
    predictions: Predictions | None = None,
    checkpoint: Path | None = None,
    train_counts: dict[str, int] | None = None,
) -> Path:
    """Write the HTML report to ``path`` atomically and return the path."""
    inputs = ReportInputs(metrics, history, dict(summary or {}), predictions, checkpoint, train_counts)
    return write_report_from(Path(path), inputs)


def write_report_from(path: Path, inputs: ReportInputs) -> Path:
    m = inputs.metrics
    predictions = inputs.predictions
    if m.get("task") == "multi-label":
        return _write(path, _multilabel_sections(inputs), ml.headline(m), ml.first_look(m))
    sections = [
        ("summary", "Summary", _summary(inputs)),
        ("curves", "Training curves", sec.curves(inputs.history)),
        ("confusion", "Confusion matrix", sec.confusion(m)),
        ("pairs", "Most confused pairs", sec.pairs(m)),
        ("per-class", "Per class", sec.per_class(m, inputs.train_counts)),
        ("roc", "ROC curves", sec.roc(m, predictions)),
        ("pr", "Precision-recall curves", sec.pr(m, predictions)),
        ("calibration", "Calibration", sec.calibration(m, predictions)),
        ("coverage", "Accuracy vs coverage", sec.coverage(m, predictions)),
        ("mistakes", "Mistakes with the highest loss", sec.mistakes(m, predictions)),
        ("confident", "Most confident correct answers", sec.confident(m, predictions)),
        ("explanations", "Explanations (Grad-CAM)", sec.explanations(m, predictions, inputs.checkpoint)),
        ("skipped", "Skipped files", sec.skipped(m)),
    ]
    return _write(path, sections, _headline(m), first_look(m))


def _multilabel_sections(inputs: ReportInputs) -> list[tuple[str, str, str]]:
    m, predictions = inputs.metrics, inputs.predictions
    return [
        ("summary", "Summary", _summary(inputs)),
        ("curves", "Training curves", sec.curves(inputs.history)),
        ("per-class", "Per label", ml.per_class(m, inputs.train_counts)),
        ("pr", "Precision-recall curves", ml.pr(m, predictions)),
        ("cooccurrence", "Label co-occurrence", ml.cooccurrence(m, predictions)),
        ("skipped", "Skipped files", sec.skipped(m)),
    ]


def _write(path: Path, sections: list[tuple[str, str, str]], headline: str, look: str) -> Path:
    present = [(key, title, body) for key, title, body in sections if body]
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title, _ in present)
    body = "\n".join(
        f'<section id="{key}"><h2>{esc(title)}</h2>\n{content}</section>' for key, title, content in present
    )
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # The report may load nothing from anywhere: only its own inline style, script and data URIs.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>imgcls report</title><style>{_STYLE}</style></head>\n"
        f'<body>\n<h1>imgcls report</h1>\n{headline}\n<p class="look">{look}</p>\n<nav>{nav}</nav>\n'
        f"{body}\n<script>{_SORT_SCRIPT}</script>\n</body></html>\n"
    )
    # File names that are not valid UTF-8 arrive as surrogate escapes; show them escaped.
    atomic_write_bytes(path, document.encode("utf-8", "backslashreplace"))
    return path


# ---------------------------------------------------------------- the top of the page


def _headline(m: dict) -> str:
    cards = [("accuracy", pct(m.get("accuracy"))), ("macro-F1", num(m.get("macro_f1")))]
    if m.get("top5_accuracy") is not None:
        cards.append(("top-5 accuracy", pct(m["top5_accuracy"])))
    if m.get("tta"):
        gain = m["tta"].get("accuracy_with", 0) - m["tta"].get("accuracy_without", 0)
        cards.append(("flip TTA effect", f"{100 * gain:+.2f} pt"))
    cards.append(("images", num(m.get("num_samples"))))
    card_html = sec.cards_html(cards)
    extra = [
        ("macro precision", num(m.get("macro_precision"))),
        ("macro recall", num(m.get("macro_recall"))),
        ("ROC AUC (macro)", num(m.get("roc_auc_macro"))),
        ("AP (macro)", num(m.get("average_precision_macro"))),
        ("log loss", num(m.get("log_loss"))),
        ("ECE", num(m.get("ece"))),
    ]
    extra_html = " · ".join(f"{esc(k)} {v}" for k, v in extra)
    return f'<div class="cards">{card_html}</div>\n<p class="small">{extra_html}</p>'


def first_look(m: dict) -> str:
    """The one sentence that says where to look first."""
    total = sec.matrix_total(m)
    if total == 0:
        return "No images were evaluated, so there is nothing to look at yet."
    per_class = m.get("per_class") or {}
    worst = min(
        ((name, c) for name, c in per_class.items() if c.get("support")), key=lambda kv: kv[1]["recall"], default=None
    )
    pairs = sec.confused_pairs(m, 1)
    if not pairs:
        return "No mistakes: every image lies on the diagonal of the confusion matrix."
    true, pred, count = pairs[0]
    text = (
        f"Look first at <strong>{esc(true)}</strong> predicted as <strong>{esc(pred)}</strong> "
        f"({count} {'time' if count == 1 else 'times'}), the most frequent mistake"
    )
    if worst is not None and worst[0] != true:
        name, recall = worst[0], worst[1]["recall"]
        text += f"; the class recognised least often is <strong>{esc(name)}</strong> (recall {recall:.2f})"
    skipped = len(m.get("skipped_files") or [])
    if skipped:
        text += f". {skipped} file(s) could not be read and were skipped (listed at the end)"
    return text + "."


def _summary(inputs: ReportInputs) -> str:
    rows = dict(inputs.summary)
    m = inputs.metrics
    rows.setdefault("classes", len(m.get("classes") or []))
    rows["evaluated images"] = m.get("num_samples")
    rows["skipped files"] = len(m.get("skipped_files") or [])
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(sec.plain(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{table}</table>"
