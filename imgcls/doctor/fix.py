"""The data doctor's fix plan: proposed actions written as CSV, carried out only by `imgcls data apply`.

`plan_actions(report)` proposes at most one action per file, the most serious finding first:
  - corrupt file                         -> drop
  - same image under different classes   -> drop every copy (no label can be trusted unseen); when
                                            the copies are in train and in val/test, drop only the
                                            train copies: the evaluation image stays, so the test set
                                            keeps its size, and nothing it holds is trained on
  - identical copy in val/test of a train image (leakage) -> drop the evaluation copy
  - identical copies within a split      -> drop all but the first
  - near-duplicate across splits         -> move the evaluation copy into train (it stays in the data,
                                            evaluation stops scoring a near-copy of a training image)
  - near-duplicate under another class   -> drop both (review them: one label is wrong); across
                                            train and val/test, the train copy only (as above)
  - near-duplicate within a split        -> drop the second
  - likely label error                   -> relabel: move into the suggested class's folder
A user reviews the CSV (deletes rows, or sets an action to "keep") and runs `apply_plan`.
It checks every row before touching a file, moves dropped files and copies the originals
of moved files into a timestamped backup folder next to the data (never inside it, where it
would be scanned as a class), and writes undo.csv there; `undo_apply(backup)` reverses it.
"""

from __future__ import annotations

import csv
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

from imgcls.data.sources import is_image_file
from imgcls.errors import DataError

log = logging.getLogger("imgcls")

COLUMNS = ("action", "kind", "path", "target", "reason", "root")
ACTIONS = ("drop", "move", "relabel", "keep")
EVALUATION_SPLITS = ("val", "test")


def _rel(path: str, root: Path) -> str:
    return Path(path).resolve().relative_to(root).as_posix()


def _target(item: dict, split: str, label: str, folders: dict, root: Path) -> str:
    """Where a file goes in another split or class: same name, under split/label/."""
    return (Path(folders[split]).resolve() / label / Path(item["path"]).name).relative_to(root).as_posix()


def plan_actions(report: dict) -> list[dict]:
    """The proposed actions of a report, one row per file (see the module docstring)."""
    root = Path(report["data"]).resolve()
    folders = report["split_folders"]
    rows: dict[str, dict] = {}
    protected: set[str] = set()  # evaluation copies a conflict keeps: no later duplicate rule drops or moves them

    def add(action: str, kind: str, item: dict, reason: str, target: str = "") -> None:
        rel = _rel(item["path"], root)
        if rel in protected and action in ("drop", "move"):
            return
        if rel not in rows:  # the first, most serious finding decides
            rows[rel] = {"action": action, "kind": kind, "path": rel, "target": target, "reason": reason}

    for item in report["unreadable"]:
        add("drop", "corrupt", item, item["reason"])
    for group in report["conflicting_labels"]:
        labels = ", ".join(sorted({r["label"] for r in group}))
        evaluation = _evaluation_copies(group)
        protected.update(_rel(item["path"], root) for item in evaluation)
        for item in group:
            reason = f"identical file under classes {labels}"
            if evaluation:
                reason += f"; the {evaluation[0]['split']} copy {_rel(evaluation[0]['path'], root)} is kept"
            add("drop", "conflict", item, reason)
    for group in report["exact_duplicates"]:
        kept = _keeper(group)
        for item in group:
            if item is kept:
                continue
            if item["split"] != kept["split"]:
                add("drop", "leakage", item, f"identical to {kept['split']} file {_rel(kept['path'], root)}")
            else:
                add("drop", "duplicate", item, f"identical to {_rel(kept['path'], root)}")
    for pair in report["near_duplicates"]:
        a, b = pair["a"], pair["b"]
        if a["label"] != b["label"]:
            evaluation = _evaluation_copies([a, b])
            protected.update(_rel(item["path"], root) for item in evaluation)
            for item, other in ((a, b), (b, a)):
                reason = f"near-identical to {_rel(other['path'], root)} of class {other['label']}"
                add("drop", "conflict", item, reason + ("; that copy is kept" if evaluation else ""))
        elif a["split"] != b["split"] and "train" in folders and {a["split"], b["split"]} & set(EVALUATION_SPLITS):
            held = a if a["split"] != "train" else b
            other = b if held is a else a
            reason = f"near-duplicate of {other['split']} file {_rel(other['path'], root)}"
            add("move", "leakage", held, reason, _target(held, "train", held["label"], folders, root))
        else:
            add("drop", "near-duplicate", b, f"near-duplicate of {_rel(a['path'], root)}")
    for issue in report["label_errors"]["issues"]:
        reason = (
            f"given {issue['given']} (p={issue['given_probability']}), "
            f"model suggests {issue['suggested']} (p={issue['suggested_probability']})"
        )
        add("relabel", "label-error", issue, reason, _target(issue, issue["split"], issue["suggested"], folders, root))
    return [dict(row, root=str(root)) for row in rows.values()]


def _evaluation_copies(group: list[dict]) -> list[dict]:
    """The copies of a conflicting group to keep: those in val/test when the group also has train
    copies and the evaluation copies agree on one label (dropping the train copies removes the
    conflict and the leak, and the evaluation set keeps its images); else none."""
    evaluation = [item for item in group if item["split"] in EVALUATION_SPLITS]
    trained = any(item["split"] == "train" for item in group)
    if trained and evaluation and len({item["label"] for item in evaluation}) == 1:
        return evaluation
    return []


def _keeper(group: list[dict]) -> dict:
    """The copy to keep: one in train when there is one (evaluation copies are the leak), else the first."""
    return next((item for item in group if item["split"] == "train"), group[0])


def write_plan(rows: list[dict], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_plan(path: Path) -> list[dict]:
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("action", "path", "target", "root") if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: not a fix plan (missing column(s) {', '.join(missing)}).")
            return list(reader)
    except OSError as err:
        raise DataError(f"{path}: cannot read the fix plan ({err.strerror}).") from None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _checked_steps(rows: list[dict], plan: Path) -> list[tuple[str, Path, Path | None, Path]]:
    """(action, file, target or None, root) per row to carry out; every problem found is raised at once."""
    steps, errors, targets = [], [], set()
    roots = {
        Path(row.get("root") or "").resolve()
        for row in rows
        if (row.get("action") or "").strip().lower() not in ("", "keep")
    }
    if len(roots) > 1:  # a plan is about one dataset; a row naming another root could move any folder's files
        shown = ", ".join(sorted(map(str, roots)))
        raise DataError(
            f"{plan}: nothing was changed; its rows name more than one data root ({shown}). "
            "A fix plan acts on the one dataset `imgcls data check` wrote it for."
        )
    for line, row in enumerate(rows, start=2):
        action = (row.get("action") or "").strip().lower()
        if action in ("", "keep"):
            continue
        if action not in ACTIONS:
            errors.append(f"line {line}: unknown action {action!r} (use drop, move, relabel or keep)")
            continue
        root = Path(row["root"]).resolve()
        source = (root / row["path"]).resolve()
        if not _inside(source, root) or source == root:
            errors.append(f"line {line}: {row['path']} is outside {root}")
        elif not source.is_file():
            errors.append(f"line {line}: {source} does not exist (already applied?)")
        elif not is_image_file(source):
            errors.append(f"line {line}: {row['path']} is not an image file; a fix plan only moves images")
        target = None
        if action in ("move", "relabel"):
            target = (root / (row.get("target") or "")).resolve()
            if not row.get("target") or not _inside(target, root) or target == root:
                errors.append(f"line {line}: {action} needs a target inside {root}")
            elif not is_image_file(target):
                errors.append(f"line {line}: target {row['target']} is not an image file name")
            elif target.exists() or target in targets:
                errors.append(f"line {line}: target {target} already exists")
            targets.add(target)
        steps.append((action, source, target, root))
    if errors:
        raise DataError(f"{plan}: nothing was changed; fix these rows first:\n  " + "\n  ".join(errors))
    return steps


def apply_plan(plan: Path, backup: Path | None = None) -> dict:
    """Carry out a reviewed fix plan, with a backup and an undo log. Returns counts and the backup folder."""
    plan = Path(plan)
    steps = _checked_steps(read_plan(plan), plan)
    if not steps:
        return {"applied": {}, "backup": None}
    root = steps[0][3]
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    backup = Path(backup) if backup else root.parent / f"{root.name}.doctor-backup-{stamp}"
    if _inside(backup.resolve(), root):
        raise DataError(f"backup folder {backup} is inside the data {root}; it would be scanned as images.")
    backup.mkdir(parents=True, exist_ok=False)
    shutil.copy2(plan, backup / "plan.csv")
    applied: dict[str, int] = {}
    with (backup / "undo.csv").open("w", newline="", encoding="utf-8") as f:
        undo = csv.writer(f)
        undo.writerow(["action", "original", "now", "backup"])
        for action, source, target, step_root in steps:
            saved = backup / source.relative_to(step_root)
            saved.parent.mkdir(parents=True, exist_ok=True)
            if action == "drop":
                shutil.move(source, saved)
                now = ""
            else:
                shutil.copy2(source, saved)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(source, target)
                now = str(target)
            undo.writerow([action, str(source), now, str(saved)])
            f.flush()  # an interrupted apply still leaves an undo log of what it did
            applied[action] = applied.get(action, 0) + 1
    log.info("applied %d action(s); originals in %s", len(steps), backup)
    return {"applied": applied, "backup": str(backup)}


def undo_apply(backup: Path) -> int:
    """Put every file of an applied plan back where it was, from the backup's undo.csv. Returns the count."""
    log_path = Path(backup) / "undo.csv"
    if not log_path.is_file():
        raise DataError(f"{backup}: no undo.csv here; give the backup folder `imgcls data apply` printed.")
    with log_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in reversed(rows):
        original = Path(row["original"])
        original.parent.mkdir(parents=True, exist_ok=True)
        if row["now"] and Path(row["now"]).is_file():
            shutil.move(row["now"], original)
        else:
            shutil.copy2(row["backup"], original)
    return len(rows)
