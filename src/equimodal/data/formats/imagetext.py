"""Image-text classification sets in folder layouts, prepared into the generic format.

* ``mvsa`` (MVSA-Single / MVSA-Multiple): ``<root>/data/<id>.jpg`` + ``<id>.txt`` and a
  labels file ``labelResultAll.txt`` (tab-separated ``ID`` then one ``text,image`` pair per
  annotator) or a CSV with columns ``id,label``. With annotator pairs, each modality takes
  the annotators' majority, then the usual MVSA rule: equal labels are kept, a neutral label
  yields to a polar one, positive-vs-negative conflicts are excluded (reported).
* ``csv`` (UPMC Food-101 style): CSV files of ``image, text, label`` (with that header, or
  no header in that column order; an optional ``split`` column) and an images folder;
  image paths are tried as ``<images>/<path>``, ``<images>/<split>/<label>/<path>`` and
  ``<images>/<label>/<path>``.

Features: ``image`` = normalised downsampled pixels (or a fixed random-init conv net),
``text`` = TF-IDF + LSA fitted on the training split (or hashed words, or MiniLM).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from equimodal.data.dataset import DataError
from equimodal.data.formats import cache
from equimodal.data.formats.common import (
    SPLITS,
    atomic_save_npy,
    atomic_write_json,
    normalize_split_values,
    random_split,
)
from equimodal.data.formats.generic import write_generic
from equimodal.data.formats.text import featurise_text
from equimodal.data.formats.vision import conv_features, load_image

log = logging.getLogger(__name__)

MVSA_CLASSES = ("negative", "neutral", "positive")
_LABEL_FILES = ("labelResultAll.txt", "labels.csv", "labels.txt")
_COLS = {"image": ("image", "image_path", "img", "path", "file"),
         "text": ("text", "title", "caption"), "label": ("label", "class", "category")}


@dataclass
class Item:
    """One image-text sample before feature extraction."""

    id: str
    text: str
    label: str
    split: str
    images: tuple[Path, ...]  # candidate paths, the first existing one is used


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: file not found (field 'text')")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return raw.decode("latin-1").strip()


def combine_mvsa(text_labels: list[str], image_labels: list[str]) -> tuple[str | None, str]:
    """MVSA label of one post from annotators' ``(text, image)`` labels.

    Returns:
        ``(label, "")`` or ``(None, reason)`` when the post is excluded.
    """
    picked = []
    for labels in (text_labels, image_labels):
        top, count = Counter(labels).most_common(1)[0]
        if 2 * count <= len(labels) and len(labels) > 1:
            return None, "no annotator majority"
        picked.append(top)
    t, i = picked
    if t == i:
        return t, ""
    if "neutral" in (t, i):
        return (i if t == "neutral" else t), ""
    return None, "conflicting text/image sentiment"


def read_mvsa(
    root: Path, data_dir: str, labels_file: str | None, skip_bad: bool,
    excluded: dict[str, dict[str, int]],
) -> list[Item]:
    """Items of an MVSA folder (see module doc); conflicts are counted in ``excluded``."""
    if labels_file is not None:
        lf = root / labels_file
    else:
        lf = next((root / n for n in _LABEL_FILES if (root / n).is_file()), root / _LABEL_FILES[0])
    if not lf.is_file():
        raise DataError(f"{lf}: labels file not found")
    rows: list[tuple[str, str]] = []
    if lf.suffix == ".csv":
        df = pd.read_csv(lf, dtype=str, keep_default_na=False)
        for col in ("id", "label"):
            if col not in df.columns:
                raise DataError(f"{lf}: missing column {col!r} (columns {list(df.columns)})")
        rows = list(zip(df["id"].str.strip(), df["label"].str.strip().str.lower(), strict=True))
    else:
        for lineno, line in enumerate(lf.read_text(errors="replace").splitlines(), 1):
            parts = line.split()
            if not parts or (lineno == 1 and parts[0].lower() == "id"):
                continue
            try:
                pairs = [p.lower().split(",") for p in parts[1:]]
                texts, images = [a for a, _ in pairs], [b for _, b in pairs]
            except ValueError as err:
                raise DataError(f"{lf}: line {lineno}: expected 'text,image' label pairs") from err
            if not pairs:
                raise DataError(f"{lf}: line {lineno}: no labels for id {parts[0]!r}")
            unknown = sorted(set(texts + images) - set(MVSA_CLASSES))
            if unknown:
                raise DataError(f"{lf}: line {lineno}: field 'label': unknown label(s) "
                                f"{unknown} (known {list(MVSA_CLASSES)})")
            label, why = combine_mvsa(texts, images)
            if label is None:
                excluded.setdefault("unassigned", {})
                excluded["unassigned"][why] = excluded["unassigned"].get(why, 0) + 1
                continue
            rows.append((parts[0], label))
    n_conflict = sum(excluded.get("unassigned", {}).values())
    if n_conflict:
        log.info("%s: excluded %d post(s) by the MVSA label rule: %s", lf, n_conflict,
                 excluded["unassigned"])
    items = []
    for pid, label in rows:
        try:
            text = _read_text(root / data_dir / f"{pid}.txt")
        except DataError:
            if not skip_bad:
                raise
            log.warning("%s: missing text; excluded", root / data_dir / f"{pid}.txt")
            excluded.setdefault("unassigned", {})
            excluded["unassigned"]["missing text"] = excluded["unassigned"].get(
                "missing text", 0) + 1
            continue
        imgs = tuple(root / data_dir / f"{pid}{ext}" for ext in (".jpg", ".jpeg", ".png"))
        items.append(Item(pid, text, label, "", imgs))
    return items


def _csv_frame(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, header=None)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read CSV ({err})") from err
    first = [str(v).strip().lower() for v in df.iloc[0].tolist()] if len(df) else []
    cols: dict[str, int] = {}
    for key, aliases in _COLS.items():
        hit = next((first.index(a) for a in aliases if a in first), None)
        if hit is not None:
            cols[key] = hit
    if len(cols) == 3:
        if "split" in first:
            cols["split"] = first.index("split")
        df = df.iloc[1:]
    elif df.shape[1] >= 3:
        cols = {"image": 0, "text": 1, "label": 2}  # UPMC Food-101 files have no header
    else:
        raise DataError(f"{path}: need columns image, text, label (got {df.shape[1]} columns)")
    return df.rename(columns={v: k for k, v in cols.items()})[list(cols)]


def read_csv_items(
    root: Path, files: Mapping[str, str | Path | None], images_dir: str
) -> list[Item]:
    """Items from CSV files; ``files`` maps a split (or ``""`` = use a ``split`` column or
    draw one later) to a CSV path relative to ``root`` (or absolute)."""
    items: list[Item] = []
    for split, f in files.items():
        if f is None:
            continue
        path = root / f
        df = _csv_frame(path)
        splits = (normalize_split_values(df["split"].to_numpy(), f"{path}: field 'split'")
                  if "split" in df.columns else np.full(len(df), split))
        img_root = root / images_dir
        for k, (img, text, label) in enumerate(zip(df["image"], df["text"], df["label"],
                                                   strict=True)):
            label = str(label).strip()
            if not label:
                raise DataError(f"{path}: row {k + 1}: field 'label' is empty")
            s = str(splits[k])
            cands = (img_root / img, img_root / s / label / img, img_root / label / img)
            # Ids keep the path (and the split of per-split files): names repeat across them.
            pid = f"{split}/{img}" if split else str(img)
            items.append(Item(pid, str(text), label, s, cands))
    return items


def _image_item(item: Item, size: int) -> dict[str, np.ndarray]:
    path = next((p for p in item.images if p.is_file()), None)
    if path is None:
        raise DataError(f"{item.images[0]}: file not found (field 'image', id {item.id})")
    return {"image": load_image(path, size).reshape(-1)}


def prepare_imagetext(
    root: str | Path,
    out: str | Path,
    *,
    layout: str = "mvsa",
    data_dir: str = "data",
    labels_file: str | None = None,
    csv: str | None = None,
    train_csv: str | None = None,
    valid_csv: str | None = None,
    test_csv: str | None = None,
    images_dir: str = "images",
    split_csv: str | None = None,
    seed: int = 0,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    text_features: str = "tfidf",
    text_dim: int = 256,
    image_features: str = "pixels",
    image_size: int = 32,
    conv_width: int = 64,
    device: str | None = None,
    chunk_size: int = 256,
    skip_bad: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    name: str | None = None,
) -> cache.PrepareResult:
    """Extract image and text features of an image-text set into a generic-format folder.

    Args:
        root: Dataset folder.
        out: Output folder (chunk cache under ``out/.cache``).
        layout: ``mvsa`` or ``csv`` (Food-101 style).
        data_dir: MVSA folder of ``<id>.jpg`` / ``<id>.txt``.
        labels_file: MVSA labels file (default: ``labelResultAll.txt`` / ``labels.csv``).
        csv: One CSV with a ``split`` column (or no split: drawn with ``seed``).
        train_csv: Training CSV. valid_csv: Validation CSV (else drawn from train).
        test_csv: Test CSV.
        images_dir: Images folder of the ``csv`` layout.
        split_csv: MVSA: CSV with columns ``id, split`` (else a seeded split).
        seed: Split seed (and SVD / conv seed).
        valid_frac: Validation fraction. test_frac: Test fraction of a drawn split.
        text_features: ``tfidf``, ``hash`` or ``minilm``. text_dim: Their size.
        image_features: ``pixels`` or ``conv``. image_size: Resized side.
        conv_width: Width of the random conv features.
        device: Torch device for ``minilm`` (``None`` = its default).
        chunk_size: Images per cache chunk.
        skip_bad: Exclude samples with missing / unreadable files or no split entry.
        progress: Show progress bars.
        overwrite: Discard an existing cache made with other settings.
        name: Dataset name in ``meta.json`` (default: ``mvsa`` / ``imagetext``).

    Raises:
        DataError: naming the file and field on bad input (unless ``skip_bad``).
    """
    r, o = Path(root), Path(out)
    if image_features not in ("pixels", "conv"):
        raise DataError(f"unknown image features {image_features!r}; use pixels or conv")
    excluded: dict[str, dict[str, int]] = {}
    if layout == "mvsa":
        items = read_mvsa(r, data_dir, labels_file, skip_bad, excluded)
        if split_csv is not None:
            if not (r / split_csv).is_file():
                raise DataError(f"{r / split_csv}: file not found")
            df = pd.read_csv(r / split_csv, dtype=str, keep_default_na=False)
            if not {"id", "split"} <= set(df.columns):
                raise DataError(f"{r / split_csv}: need columns 'id' and 'split'")
            table = dict(zip(df["id"].str.strip(), normalize_split_values(
                df["split"].to_numpy(), f"{r / split_csv}: field 'split'"), strict=True))
            for it in items:
                it.split = table.get(it.id, "")
        class_names = list(MVSA_CLASSES)
    elif layout == "csv":
        files = {"train": train_csv, "valid": valid_csv, "test": test_csv}
        items = read_csv_items(r, {"": csv} if csv else files, images_dir)
        if not items:
            raise DataError(f"{r}: no CSV rows (give csv=... or train_csv/test_csv)")
        labels = sorted({it.label for it in items})
        numeric = all(lab.lstrip("-").isdigit() for lab in labels)
        class_names = sorted(labels, key=int) if numeric else labels
    else:
        raise DataError(f"unknown image-text layout {layout!r}; use mvsa or csv")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = [k for k, c in Counter(ids).items() if c > 1][:5]
        raise DataError(f"{r}: duplicate sample ids {dup}")
    if layout == "mvsa":
        draw = "all" if split_csv is None else "none"
        source = str(r / str(split_csv))
    elif csv:
        draw = "none" if any(it.split for it in items) else "all"
        source = str(r / csv)
    else:
        draw = "valid" if valid_csv is None else "none"
        source = str(r / str(train_csv))
    _assign(items, draw, seed, valid_frac, test_frac, skip_bad, excluded, source)
    items = [it for it in items if it.split]
    params = {"format": "imagetext", "root": str(r.resolve()), "layout": layout,
              "image_features": image_features, "image_size": image_size,
              "conv_width": conv_width, "chunk_size": chunk_size,
              "conv_seed": seed if image_features == "conv" else None}
    inputs = {"items": [(it.id, it.split, it.label) for it in items], "seed": seed,
              "text": [text_features, text_dim], "name": name}
    done = cache.start(o, params, overwrite, inputs)
    if done is not None:
        return done
    by_id = {it.id: it for it in items}
    batch_fn = None
    if image_features == "conv":
        def batch_fn(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {"image": conv_features(a["image"], conv_width, seed)}
    res = cache.map_chunked([it.id for it in items], lambda k: _image_item(by_id[k], image_size),
                            o / ".cache" / "images", chunk_size=chunk_size, skip_bad=skip_bad,
                            desc="images", progress=progress, batch_fn=batch_fn)
    for k in res.failed:
        s = by_id[k].split
        excluded.setdefault(s, {})
        excluded[s]["missing or unreadable image"] = excluded[s].get(
            "missing or unreadable image", 0) + 1
    kept = [by_id[k] for k in res.keys]
    split = np.array([it.split for it in kept])
    text = _text_features(o, kept, split, text_features, text_dim, seed, device)
    title = name or ("mvsa" if layout == "mvsa" else "imagetext")
    lookup = {c: i for i, c in enumerate(class_names)}
    meta = {"name": title, "task": "classification", "num_classes": len(class_names),
            "class_names": class_names, "modalities": ["image", "text"], "excluded": excluded,
            "description": (f"{title} ({len(kept)} samples, layout {layout}): image "
                            f"{image_features} {image_size}px, text {text_features} "
                            f"{text.shape[1]}-d; classes {class_names}.")}
    write_generic(o, {"image": res.arrays["image"], "text": text},
                  np.array([lookup[it.label] for it in kept], dtype=np.int64), split,
                  ids=np.array(res.keys), meta=meta)
    log.info("%s: wrote %d samples to %s (%d of %d images computed)", title, len(kept), o,
             res.computed, len(items))
    result = cache.PrepareResult(o, len(kept), res.computed, res.reused, excluded)
    return cache.finish(result, params, inputs)


def _assign(items: list[Item], draw: str, seed: int, valid_frac: float, test_frac: float,
            skip_bad: bool, excluded: dict[str, dict[str, int]], source: str) -> None:
    """Fill in splits: ``draw="all"`` draws train/valid/test with ``seed``, ``"valid"``
    draws validation from train, ``"none"`` keeps the given ones; then reports items
    without a split (error, or excluded with ``skip_bad``)."""
    if draw == "all":
        for it, s in zip(items, random_split(len(items), seed, valid_frac, test_frac),
                         strict=True):
            it.split = str(s)
    elif draw == "valid":
        train = [i for i, it in enumerate(items) if it.split == "train"]
        rng = np.random.default_rng(seed)
        for i in rng.permutation(train)[: max(1, round(len(train) * valid_frac))]:
            items[i].split = "valid"
    missing = [it.id for it in items if not it.split]
    if missing:
        msg = (f"{source}: field 'split': no split entry for {len(missing)} sample(s), "
               f"e.g. {missing[:5]}")
        if not skip_bad:
            raise DataError(msg + " (pass skip_bad=True to exclude them)")
        log.warning("%s; excluded", msg)
        excluded.setdefault("unassigned", {})["no split entry"] = len(missing)
    for s in SPLITS:
        if not any(it.split == s for it in items):
            raise DataError(f"{source}: no samples in split {s!r}")


def _text_features(out: Path, items: list[Item], split: np.ndarray, method: str, dim: int,
                   seed: int, device: str | None) -> np.ndarray:
    """Text features, cached in ``out/.cache`` by a digest of texts, splits and settings."""
    key = json.dumps([[it.id, it.split, it.text] for it in items] + [method, dim, seed])
    digest = hashlib.sha1(key.encode()).hexdigest()
    path, tag = out / ".cache" / "text.npy", out / ".cache" / "text.json"
    if path.is_file() and tag.is_file() and json.loads(tag.read_text()).get("digest") == digest:
        cached: np.ndarray = np.load(path)
        return cached
    feats = featurise_text([it.text for it in items], split == "train", method, dim, seed,
                           device)
    atomic_save_npy(path, feats)
    atomic_write_json(tag, {"digest": digest})
    return feats
