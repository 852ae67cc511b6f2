"""``equimodal prepare``: turn raw datasets into generic-format feature folders.

Sub-commands::

    equimodal prepare cremad    --root CREMA-D --out features/cremad
    equimodal prepare imagetext --root MVSA_Single --out features/mvsa --layout mvsa
    equimodal prepare imagetext --root food101 --out features/food101 --layout csv \\
        --train-csv texts/train_titles.csv --test-csv texts/test_titles.csv
    equimodal prepare avmnist   # FSDD audio features + MNIST arrays into the cache
    equimodal prepare check     --path features/cremad
    equimodal prepare check     --format mmsa --path MOSI/Processed/unaligned_50.pkl
    equimodal prepare convert   MOSI/Processed/unaligned_50.pkl features/mosi.npz --format mmsa

Every step is resumable (finished chunks are kept under ``<out>/.cache``, or under the
cache folder for ``avmnist``; a finished folder with the same settings is not redone) and
shows tqdm progress bars.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from equimodal.data.formats import (
    PrepareResult,
    load_cremad,
    load_generic,
    prepare_cremad,
    prepare_imagetext,
)
from equimodal.data.formats.text import TEXT_FEATURES

log = logging.getLogger(__name__)

__all__ = [
    "add_prepare_parser",
    "load_cremad",
    "prepare_cremad",
    "prepare_imagetext",
    "run_prepare",
]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, help="folder of the raw dataset")
    p.add_argument("--out", required=True, help="output folder (generic format)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--valid-frac", type=float, default=0.1, help="validation fraction")
    p.add_argument("--test-frac", type=float, default=0.1, help="test fraction (drawn splits)")
    p.add_argument("--skip-bad", action="store_true",
                   help="exclude samples with missing/unreadable files or no split (reported)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard a cache made with other settings")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_prepare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``prepare`` command (with one sub-command per format) to ``subparsers``.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers``.

    Returns:
        The ``prepare`` parser; its handler is ``run_prepare`` (set as ``func``).
    """
    prep = subparsers.add_parser(
        "prepare", help="extract features of a raw dataset into the generic format",
        description="Extract features of a raw dataset into a generic-format folder "
                    "(resumable).")
    sub = prep.add_subparsers(dest="prepare_format", required=True)

    p = sub.add_parser("cremad", help="CREMA-D: AudioWAV/*.wav + frames/<clip>/*.jpg")
    _common(p)
    p.add_argument("--audio-dir", default="AudioWAV", help="WAV sub-folder")
    p.add_argument("--frames-dir", default="frames", help="sub-folder of per-clip frame folders")
    p.add_argument("--split-csv", help="CSV with columns clip,split")
    p.add_argument("--train-list", help="OGM-GE style train list (first column: clip)")
    p.add_argument("--test-list", help="OGM-GE style test list")
    p.add_argument("--by-speaker", action="store_true", help="speaker-independent random split")
    p.add_argument("--n-frames", type=int, default=2, help="frames per clip (default 2)")
    p.add_argument("--image-size", type=int, default=32, help="frame side in pixels")
    p.add_argument("--sample-rate", type=int, default=16000, help="audio rate in Hz")
    p.add_argument("--max-seconds", type=float, default=3.0, help="audio window in seconds")
    p.add_argument("--n-mels", type=int, default=64, help="mel bands")
    p.set_defaults(func=run_prepare)

    p = sub.add_parser("imagetext", help="MVSA or Food-101 style image-text folders")
    _common(p)
    p.add_argument("--layout", choices=["mvsa", "csv"], default="mvsa")
    p.add_argument("--name", help="dataset name stored in meta.json")
    p.add_argument("--data-dir", default="data", help="MVSA: folder of <id>.jpg/<id>.txt")
    p.add_argument("--labels-file", help="MVSA labels file (default labelResultAll.txt)")
    p.add_argument("--split-csv", help="MVSA: CSV with columns id,split")
    p.add_argument("--csv", help="csv layout: one CSV with a split column")
    p.add_argument("--train-csv", help="csv layout: training CSV")
    p.add_argument("--valid-csv", help="csv layout: validation CSV (else drawn from train)")
    p.add_argument("--test-csv", help="csv layout: test CSV")
    p.add_argument("--images-dir", default="images", help="csv layout: images folder")
    p.add_argument("--text-features", choices=list(TEXT_FEATURES), default="tfidf")
    p.add_argument("--text-dim", type=int, default=256, help="tfidf/hash feature size")
    p.add_argument("--image-features", choices=["pixels", "conv"], default="pixels")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    p.add_argument("--device", help="torch device for minilm text features")
    p.set_defaults(func=run_prepare)

    p = sub.add_parser("avmnist", help="AV-MNIST: cache FSDD audio features and MNIST arrays")
    p.add_argument("--fsdd", help="Free Spoken Digit Dataset folder: a checkout of "
                   "github.com/Jakobovski/free-spoken-digit-dataset, its recordings/, or a "
                   "folder of {digit}_{speaker}_{index}.wav (default: <shared data>/fsdd); "
                   "checked first, naming what is missing")
    p.add_argument("--seed", type=int, default=0, help="noise seed (with --audio-snr-db)")
    p.add_argument("--n-mels", type=int, default=40, help="mel bands (default 40)")
    p.add_argument("--n-mfcc", type=int, default=13, help="MFCCs (default 13)")
    p.add_argument("--max-seconds", type=float, default=1.0, help="audio kept (default 1.0)")
    p.add_argument("--audio-snr-db", type=float, help="white background noise SNR in dB")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run_prepare)

    p = sub.add_parser("check", help="load a dataset file/folder and summarise it (validate)")
    p.add_argument("--path", required=True, help="generic: folder, .npz or .parquet; mmsa / "
                   "iemocap: the pickle; cremad / imagetext: the prepared folder")
    p.add_argument("--format", default="generic",
                   choices=["generic", "mmsa", "iemocap", "cremad", "imagetext"],
                   help="dataset format (default generic)")
    p.add_argument("--skip-bad", action="store_true", help="report bad rows instead of failing")
    p.set_defaults(func=run_prepare)

    p = sub.add_parser("convert", help="turn an MMSA / IEMOCAP pickle into the generic format "
                       "once (read with the allow-list unpickler)")
    p.add_argument("src", help="the pickle (.pkl)")
    p.add_argument("dst", help="output: a folder, or a file ending in .npz")
    p.add_argument("--format", required=True, choices=["mmsa", "iemocap"],
                   help="format of SRC")
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                   help="loader argument, e.g. task=classification, num_classes=3, "
                        "modalities=text,audio (see docs/data-formats.md)")
    p.add_argument("--skip-bad", action="store_true", help="exclude bad rows (reported)")
    p.set_defaults(func=run_prepare)
    prep.set_defaults(func=run_prepare)
    return prep


def _summary(res: PrepareResult) -> str:
    if res.already_done:
        return f"{res.out}: already prepared ({res.n_samples} samples); nothing to do\n"
    text = (f"{res.out}: wrote {res.n_samples} samples ({res.computed} computed, "
            f"{res.reused} from cache)\n")
    if res.excluded:
        text += f"excluded: {res.excluded}\n"
    return text


def run_prepare(args: argparse.Namespace) -> int:
    """Handle ``equimodal prepare <format>``; returns the exit code.

    Raises:
        DataError: on bad input (the CLI turns it into a one-line message, exit code 2).
    """
    fmt = getattr(args, "prepare_format", None)
    if fmt == "check":
        if args.format == "generic":
            data = load_generic(args.path, skip_bad=args.skip_bad)
        else:
            from equimodal.registry import load_dataset

            data = load_dataset(args.format, path=args.path, skip_bad=args.skip_bad)
        mods = ", ".join(f"{s.name} {[s.seq_len, s.dim] if s.is_sequence else [s.dim]}"
                         for s in data.info.modalities.values())
        sys.stdout.write(
            f"{args.path}: {data.info.kind}, {data.info.num_outputs} output(s), modalities "
            f"[{mods}], train/valid/test = {len(data.train)}/{len(data.valid)}/"
            f"{len(data.test)}\n" + (f"excluded {data.n_excluded} sample(s): {data.excluded}\n"
                                    if data.excluded else ""))
        return 0
    if fmt == "avmnist":
        return _prepare_avmnist(args)
    if fmt == "convert":
        return _convert(args)
    common = {"seed": args.seed, "valid_frac": args.valid_frac, "test_frac": args.test_frac,
              "skip_bad": args.skip_bad, "overwrite": args.overwrite,
              "progress": not args.no_progress}
    if fmt == "cremad":
        res = prepare_cremad(
            args.root, args.out, audio_dir=args.audio_dir, frames_dir=args.frames_dir,
            split_csv=args.split_csv, train_list=args.train_list, test_list=args.test_list,
            by_speaker=args.by_speaker, n_frames=args.n_frames, image_size=args.image_size,
            sample_rate=args.sample_rate, max_seconds=args.max_seconds, n_mels=args.n_mels,
            **common)
    elif fmt == "imagetext":
        res = prepare_imagetext(
            args.root, args.out, layout=args.layout, data_dir=args.data_dir,
            labels_file=args.labels_file, csv=args.csv, train_csv=args.train_csv,
            valid_csv=args.valid_csv, test_csv=args.test_csv, images_dir=args.images_dir,
            split_csv=args.split_csv, text_features=args.text_features,
            text_dim=args.text_dim, image_features=args.image_features,
            image_size=args.image_size, device=args.device, name=args.name, **common)
    else:
        raise ValueError(f"unknown prepare format {fmt!r}")
    sys.stdout.write(_summary(res))
    return 0


def _prepare_avmnist(args: argparse.Namespace) -> int:
    """Fill the AV-MNIST caches: FSDD audio features (chunked, resumable) and MNIST arrays.

    ``equimodal train --data avmnist`` with the same audio settings (``data.n_mels`` etc.)
    then reads the cache; a second ``prepare avmnist`` computes nothing.
    """
    from pathlib import Path

    from equimodal.data.builtin.avmnist import FSDD_HINT, check_fsdd, fsdd_features, fsdd_index
    from equimodal.data.builtin.digits import load_mnist_arrays
    from equimodal.data.dataset import DataError

    folder = None
    if args.fsdd:
        folder, problems = check_fsdd(Path(args.fsdd))
        if folder is None or problems:
            for problem in problems:
                sys.stderr.write(f"avmnist: {problem}\n")
            sys.stderr.write(f"avmnist: {FSDD_HINT}\n")
            return 2
        sys.stdout.write(f"avmnist: FSDD recordings found in {folder}\n")
    index = fsdd_index(folder)
    _, counts = fsdd_features(index, n_mels=args.n_mels, n_mfcc=args.n_mfcc,
                              max_seconds=args.max_seconds, audio_snr_db=args.audio_snr_db,
                              noise_seed=args.seed, progress=not args.no_progress)
    sys.stdout.write(f"avmnist: FSDD features of {len(index.names)} recordings in "
                     f"{index.folder} ({counts['computed']} computed, {counts['reused']} "
                     "from cache)\n")
    try:
        sizes = {s: len(v[1]) for s, v in load_mnist_arrays(raw=True).items()}
    except DataError as err:  # the audio cache is still useful; say what is missing
        sys.stdout.write(f"avmnist: MNIST not available ({err})\n")
        return 0
    sys.stdout.write(f"avmnist: MNIST arrays cached (train/valid/test = "
                     f"{sizes['train']}/{sizes['valid']}/{sizes['test']})\n")
    return 0


def _convert(args: argparse.Namespace) -> int:
    """``prepare convert SRC DST --format mmsa|iemocap``: pickle -> generic folder / ``.npz``.

    The pickle is read once with the allow-list unpickler (a crafted file is refused with a
    one-line error naming the global); the output loads with ``--data generic`` and never
    unpickles anything.
    """
    from pathlib import Path

    from equimodal.config import parse_value
    from equimodal.data.formats import load_iemocap, load_mmsa, to_generic

    kwargs: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        kwargs[key.strip()] = parse_value(value)
    loader = load_mmsa if args.format == "mmsa" else load_iemocap
    try:
        data = loader(args.src, skip_bad=args.skip_bad, **kwargs)
    except TypeError as err:
        raise ValueError(f"--set: {err}") from None
    out = to_generic(data, args.dst)
    sys.stdout.write(
        f"{out}: wrote {data.info.kind} data with modalities {data.info.modality_names}, "
        f"train/valid/test = {len(data.train)}/{len(data.valid)}/{len(data.test)}; train "
        f"with --data generic --set data.path={Path(out)}\n")
    return 0
