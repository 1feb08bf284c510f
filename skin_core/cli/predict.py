"""``skin-core predict``: diagnose new images with a model bundle.

One image prints its result (``--json``: the full record); many images (files, folders,
``--list FILE`` with one path per line) stream through in batches with a progress bar, and
``--out CSV`` writes one row per image. An unreadable image becomes a row with its error and
never stops the others; the exit status is then 2 with one sentence on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from skin_core.cli._common import add_json_option, print_json


def register(subparsers: Any) -> None:
    """Add the ``predict`` verb."""
    p = subparsers.add_parser(
        "predict",
        help="diagnose new images with a model bundle (ensemble, meta-classifier, prediction "
        "set, heatmap, quality, referral)",
        description="Predict images with a bundle made by `skin-core bundle`: per-architecture "
        "and ensemble probabilities, the meta-classifier with the patient's metadata, the "
        "conformal prediction set, image quality and whether to refer.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files or folders (searched recursively)")
    p.add_argument("--bundle", required=True, metavar="DIR", help="model bundle folder")
    p.add_argument("--list", default=None, metavar="FILE",
                   help="text file with one image path per line")
    p.add_argument("--age", default=None, help="patient age in years (0-120)")
    p.add_argument("--sex", default=None, help="male or female")
    p.add_argument("--site", default=None,
                   help="anatomical site (e.g. 'posterior torso', 'head/neck', 'back')")
    p.add_argument("--metadata", default=None, metavar="CSV",
                   help="per-image metadata: image_id, age_approx, sex, anatom_site_general")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation (flips); default: as the bundle's members were "
                   "validated")
    p.add_argument("--similar", type=int, default=0, metavar="K",
                   help="also return the K most similar training images, one per lesion "
                   "(needs a bundle indexed by `skin-core index`)")
    p.add_argument("--heatmap-dir", default=None, metavar="DIR",
                   help="write a Grad-CAM overlay PNG per image into DIR")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    p.add_argument("--out", default=None, metavar="CSV", help="write one row per image")
    add_json_option(p)
    p.set_defaults(handler=run)


def _expand(args: argparse.Namespace) -> tuple[Iterator[str], int]:
    from skin_core.analysis.quality import list_image_files
    from skin_core.errors import DataError

    listed: list[str] = []
    for item in args.images:
        path = Path(item)
        if path.is_dir():
            files = [str(f) for f in list_image_files(path)]
            if not files:
                raise DataError(f"The folder {path} holds no images (.jpg, .png, ...).")
            listed.extend(files)
        else:
            listed.append(item)
    total = len(listed)
    list_file = Path(args.list) if args.list else None
    if list_file is not None:
        if not list_file.is_file():
            raise DataError(f"The list file {list_file} does not exist.")
        with open(list_file, encoding="utf-8") as fh:
            total += sum(1 for line in fh if line.strip())

    def gen() -> Iterator[str]:
        yield from listed
        if list_file is not None:
            with open(list_file, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield line.strip()

    if total == 0:
        raise DataError("skin-core predict needs at least one IMAGE, folder or --list FILE.")
    return gen(), total


def _metadata(args: argparse.Namespace) -> Any:
    if args.metadata:
        import pandas as pd

        from skin_core.errors import DataError

        path = Path(args.metadata)
        if not path.is_file():
            raise DataError(f"The metadata file {path} does not exist.")
        try:
            return pd.read_csv(path, dtype={"image_id": str})
        except (OSError, ValueError) as e:
            raise DataError(f"{path} is not a readable CSV file ({e}).") from e
    if args.age is None and args.sex is None and args.site is None:
        return None
    return (args.age, args.sex, args.site)


def _human(r: Any) -> str:
    if r.error:
        return f"{r.image}: ERROR {r.error}"
    top = sorted((r.meta_probs or r.probs).items(), key=lambda kv: -kv[1])[:3]
    tops = ", ".join(f"{c} {p:.2f}" for c, p in top)
    ref = r.referral
    refer = (f"REFER ({', '.join(ref['reasons'])})" if ref.get("refer") else "no referral")
    if r.similar:
        refer += "; similar: " + ", ".join(f"{h['image_id']} {h['label']} {h['similarity']:.2f}"
                                           for h in r.similar)
    return (f"{r.image}: {r.label} [{tops}]; set {{{', '.join(r.prediction_set)}}}; blur "
            f"{r.quality['blur_score']:.2f}{' (blurry)' if r.quality['is_blurry'] else ''}; "
            f"{refer}" + (f"; warnings: {' '.join(r.warnings)}" if r.warnings else ""))


def run(args: argparse.Namespace) -> int:
    """Handler of ``skin-core predict``; returns the exit status."""
    from skin_core.errors import ConfigError
    from skin_core.predict import Predictor, write_predictions_csv

    if args.batch_size < 1 or args.workers < 1:
        raise ConfigError("--batch-size and --workers must be at least 1.")
    if args.similar < 0:
        raise ConfigError(f"--similar must be 0 or more; got {args.similar}.")
    images, total = _expand(args)
    metadata = _metadata(args)
    predictor = Predictor(args.bundle, device=args.device, tta=args.tta)
    if args.similar and predictor.retrieval is None:
        raise ConfigError(f"Bundle {args.bundle} has no retrieval index, so --similar cannot "
                          "find similar cases; build it with `skin-core index --bundle "
                          f"{args.bundle} --dataset SPEC --folds folds.csv`.")
    if predictor.bundle.synthetic and not args.json:  # said first, with the results
        from skin_core.app.synthetic import SYNTHETIC_BUNDLE_NOTICE

        print(f"NOTE: {SYNTHETIC_BUNDLE_NOTICE}")
    heat_dir = Path(args.heatmap_dir) if args.heatmap_dir else None
    results = predictor.iter_predict(images, metadata=metadata, batch_size=args.batch_size,
                                     workers=args.workers, heatmap=heat_dir is not None,
                                     progress=total > 1, total=total, similar=args.similar)
    if heat_dir is not None:
        results = _save_heatmaps(results, heat_dir)
    failures: list[str] = []
    if args.out:
        kept: list[Any] = []

        def tee(rs: Any) -> Iterator[Any]:
            for r in rs:
                if r.error:
                    failures.append(r.error)
                if len(kept) < 1 and total == 1:
                    kept.append(r)
                yield r

        summary = write_predictions_csv(tee(results), args.out, predictor.classes)
        if args.json:
            print_json(kept[0].to_dict() if kept and total == 1 else summary)
        else:
            print(f"Predicted {summary['n'] - summary['n_errors']} of {summary['n']} images; "
                  f"wrote {args.out}.")
    else:
        records = []
        for r in results:
            if r.error:
                failures.append(r.error)
            records.append(r)
            if not args.json:
                print(_human(r))
        if args.json:
            print_json(records[0].to_dict() if total == 1 else [r.to_dict() for r in records])
    if failures:
        msg = failures[0] if total == 1 else (
            f"{len(failures)} of {total} images could not be predicted (their rows carry the "
            f"error); the first: {failures[0]}")
        print(f"skin-core: error: {msg}", file=sys.stderr)
        return 2
    return 0


def _save_heatmaps(results: Any, folder: Path) -> Iterator[Any]:
    from PIL import Image

    from skin_core.io import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    for r in results:
        if r.overlay is not None:
            target = folder / f"{r.image_id}_gradcam.png"
            with atomic_path(target) as tmp:
                Image.fromarray(r.overlay).save(tmp, format="PNG")
        yield r
