"""The data doctor's report as one self-contained HTML page, with a thumbnail of every finding.

Thumbnails are embedded as PNG data URIs and the style is inline, so the page loads nothing
from the network and can be mailed or attached to a CI run. Every text from the dataset
(paths, class names, reasons) is escaped. Long lists are cut at `limit` items per section,
with the count of the rest.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from imgcls.data.decode import decode_image
from imgcls.doctor.check import label_model_line
from imgcls.errors import DataError

THUMB = 72  # pixels, the longer side of each thumbnail
LIMIT = 200  # findings shown per section

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}
.card{display:inline-block;vertical-align:top;margin:.3em;padding:.3em;border:1px solid #ddd;font-size:12px;
max-width:330px}
.card img{image-rendering:pixelated;margin-right:.2em;background:#eee}
.path{color:#555;word-break:break-all}.bad{color:#b00}.ok{color:#070}
"""


def _thumb(path: str, cache: dict) -> str:
    if path not in cache:
        try:
            pixels = decode_image(Path(path), channels=3)
            img = Image.fromarray(pixels)
            scale = THUMB / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
            buffer = io.BytesIO()
            img.save(buffer, "PNG")
            cache[path] = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        except DataError:
            cache[path] = ""
    return cache[path]


def _img(path: str, cache: dict) -> str:
    uri = _thumb(path, cache)
    if not uri:
        return '<span class="bad">[unreadable]</span>'
    return f'<img src="{uri}" alt="{html.escape(Path(path).name)}" title="{html.escape(path)}">'


def _file(item: dict) -> str:
    where = f"{html.escape(item['split'])} / {html.escape(item['label'])}"
    return f'<div class="path">{where}: {html.escape(item["path"])}</div>'


def _section(title: str, items: list, render, limit: int) -> str:
    if not items:
        return ""
    cards = "".join(render(item) for item in items[:limit])
    more = f"<p>... and {len(items) - limit:,} more (see --json).</p>" if len(items) > limit else ""
    return f"<h2>{html.escape(title)} ({len(items):,})</h2>{cards}{more}"


def _inventory(report: dict) -> str:
    parts = []
    for split, info in report["splits"].items():
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{n:,}</td>"
            f"<td>{d['width']['median']:g} x {d['height']['median']:g}</td>"
            f"<td>{html.escape(', '.join(f'{m} {c}' for m, c in d['modes'].items()))}</td>"
            f"<td>{html.escape(', '.join(f'{m} {c}' for m, c in d['formats'].items()))}</td>"
            f"<td>{d['grey']} / {d['colour']}</td><td>{d['tiny']}</td><td>{d['exif_rotated']}</td></tr>"
            for (name, n), d in zip(info["classes"].items(), info["by_class"].values(), strict=True)
        )
        parts.append(
            f"<h3>{html.escape(split)}: {info['images']:,} images, imbalance {info['imbalance_ratio']}x</h3>"
            "<table><tr><th>class</th><th>images</th><th>median size</th><th>modes</th><th>formats</th>"
            f"<th>grey / colour</th><th>tiny</th><th>EXIF-rotated</th></tr>{rows}</table>"
        )
    return "".join(parts)


def render_html(report: dict, *, limit: int = LIMIT) -> str:
    """The whole page as a string."""
    cache: dict[str, str] = {}
    found = report["findings"]
    summary = "".join(
        f'<tr><td>{html.escape(kind)}</td><td class="{"bad" if n else "ok"}">{n:,}</td></tr>'
        for kind, n in found.items()
    )

    def group(items: list[dict]) -> str:
        return '<div class="card">' + "".join(_img(r["path"], cache) + _file(r) for r in items) + "</div>"

    def pair(p: dict) -> str:
        a, b = p["a"], p["b"]
        head = f"pHash {p['phash']}, dHash {p['dhash']} bits, pixels {p['pixels']:.3f}"
        if "cropped" in p:  # the unaligned pixel difference says little about a crop
            crop = p["cropped"]
            cut = ", ".join(f"{side} {share:.0f}%" for side, share in crop["percent"].items() if share >= 0.5)
            first = "first" if crop["from"] == "a" else "second"
            head = (
                f"cropped copy of the {first} image ({cut or 'under 0.5% a side'} cut off), "
                f"difference once aligned {crop['aligned']:.3f}"
            )
        images = _img(a["path"], cache) + _img(b["path"], cache)
        return f'<div class="card">{images}<div>{head}</div>{_file(a)}{_file(b)}</div>'

    def label_issue(i: dict) -> str:
        text = (
            f"given <b>{html.escape(i['given'])}</b> (p={i['given_probability']:.2f}), "
            f"suggested <b>{html.escape(i['suggested'])}</b> (p={i['suggested_probability']:.2f})"
        )
        return f'<div class="card">{_img(i["path"], cache)}<div>{text}</div>{_file(i)}</div>'

    def unreadable(u: dict) -> str:
        return f'<div class="card"><span class="bad">{html.escape(u["reason"])}</span>{_file(u)}</div>'

    labels = report["label_errors"]
    model = f"Label model: {label_model_line(labels)}. " if labels.get("accuracy") is not None else ""
    label_note = (
        f"<p>{labels['checked']:,} images checked. {html.escape(model)}"
        f"{html.escape(labels.get('skipped_reason') or '')}</p>"
    )
    body = [
        f"<h1>Data check: {html.escape(report['data'])}</h1>",
        f"<p>{report['files']:,} image files. Seconds: {html.escape(str(report['seconds']))}</p>",
        f"<table><tr><th>finding</th><th>count</th></tr>{summary}</table>",
        "<h2>Inventory</h2>",
        _inventory(report),
        _section("Unreadable files", report["unreadable"], unreadable, limit),
        _section("Leakage: identical files in more than one split", report["leakage"], group, limit),
        _section("Leakage: near-duplicates across splits", report["near_leakage"], pair, limit),
        _section("Conflicting labels: identical files", report["conflicting_labels"], group, limit),
        _section("Conflicting labels: near-duplicates", report["near_conflicts"], pair, limit),
        _section("Identical files", report["exact_duplicates"], group, limit),
        _section("Near-duplicates", report["near_duplicates"], pair, limit),
        _section("Likely label errors", labels["issues"], label_issue, limit),
        label_note if labels["checked"] else "",
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>imgcls data check</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def write_html(report: dict, path: Path, *, limit: int = LIMIT) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report, limit=limit), encoding="utf-8", errors="surrogateescape")
