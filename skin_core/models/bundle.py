"""The model bundle the app and ``skin-core predict`` serve: build, load, verify.

A bundle is a folder ``models/<name>/``::

    bundle.json                         manifest (below)
    members/<model>/fold<k>.safetensors member weights (tensors only)
    meta/meta_predictor.json            meta-classifier WITH metadata (optional)
    meta/meta_model.txt, referral_model.txt   LightGBM text models
    meta_nometa/...                     meta-classifier WITHOUT metadata (optional)
    quality_reference.json              training-set distribution of the quality measures

``bundle.json`` holds ``format``, ``name``, ``created``, ``classes``, the training run
(``run_id``, dataset ``fingerprint``, sha256 of its ``config.yaml``), ``members`` (one entry per
fold model: ``model``, ``arch``, ``seed``, ``fold``, ``file``, ``preprocessing``, ``metrics``),
``models`` (per model: ``arch`` and its OOF ``metrics``), ``heatmap_member`` (the fold model
Grad-CAM is computed on: the model with the best OOF balanced accuracy, its best fold),
``referral`` (the decision rule's constants, among them ``entropy_threshold``: the 90th
percentile of the training OOF ensemble's entropy), ``ensemble_conformal`` (conformal thresholds
of the plain ensemble, used when there is no meta-classifier) and ``files``: the sha256 of every
file in the bundle.

The folder is built under a temporary name beside its target and renamed into place, so a
half-built bundle never looks complete. :func:`load_bundle` verifies every listed hash, refuses a
listed file that is missing or changed, any file the manifest does not list whose type can
carry code (``.pkl``, ``.pt``, ``.pth``, ``.joblib``, ...), links that leave the folder, and a
meta-classifier whose classes differ from the bundle's. Weights are read with
``safetensors`` and LightGBM models from text: loading a bundle never unpickles anything and so
can never run code from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from skin_core.errors import ConfigError, DataError

BUNDLE_FORMAT = "skin-core-bundle/1"
MANIFEST = "bundle.json"
QUALITY_REFERENCE = "quality_reference.json"
META_DIR = "meta"
META_NOMETA_DIR = "meta_nometa"
#: Where `skin-core meta --out DIR` puts its metadata-free meta-classifier.
NOMETA_SUBDIR = "nometa"

#: Files of these types can execute code when loaded by common tools; an unlisted one is refused.
CODE_SUFFIXES: tuple[str, ...] = (
    ".pkl", ".pickle", ".pt", ".pth", ".joblib", ".jbl", ".bin", ".ckpt", ".npy", ".npz",
    ".h5", ".hdf5", ".keras", ".py", ".pyc", ".so", ".dll", ".dylib", ".sh", ".exe", ".onnx",
    ".cloudpickle", ".dill", ".mar", ".zip", ".tar", ".gz",
)

#: Percentile of the training OOF ensemble entropy above which an image is "high entropy".
ENTROPY_PERCENTILE = 90.0

#: An image whose blur score is below this percentile of the training images is low quality.
BLUR_PERCENTILE_CUT = 5.0

#: Target coverage of the ensemble's own conformal sets (used without a meta-classifier).
DEFAULT_COVERAGE = 0.9


@dataclass(frozen=True)
class MemberSpec:
    """One fold model of a bundle (what :class:`~skin_core.predict.Predictor` loads)."""

    model: str
    arch: str
    seed: int
    fold: int
    file: str
    preprocessing: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "arch": self.arch, "seed": self.seed, "fold": self.fold,
                "file": self.file, "preprocessing": self.preprocessing, "metrics": self.metrics}


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk.

    Attributes
    ----------
    path: the bundle folder.
    manifest: the parsed ``bundle.json``.
    classes: class codes in output order.
    members: every fold model, in manifest order.
    meta, meta_nometa: the loaded :class:`~skin_core.meta.io.MetaPredictor` with and without
        metadata features, or ``None``.
    quality_reference: :func:`~skin_core.analysis.quality.quality_reference` of the training
        images, or ``None``.
    """

    path: Path
    manifest: dict[str, Any]
    classes: tuple[str, ...]
    members: tuple[MemberSpec, ...]
    meta: Any = None
    meta_nometa: Any = None
    quality_reference: dict[str, Any] | None = None

    @property
    def models(self) -> tuple[str, ...]:
        """Model ids (e.g. ``resnet18`` or ``resnet18@s1``), in manifest order, unique."""
        return tuple(dict.fromkeys(m.model for m in self.members))

    @property
    def referral(self) -> dict[str, Any]:
        return dict(self.manifest.get("referral") or {})

    @property
    def heatmap_member(self) -> MemberSpec:
        """The fold model Grad-CAM heatmaps are computed on."""
        hm = self.manifest.get("heatmap_member") or {}
        for m in self.members:
            if m.model == hm.get("model") and m.fold == hm.get("fold"):
                return m
        return self.members[0]

    @property
    def provenance(self) -> dict[str, Any]:
        """``bundle.json`` ``provenance`` (dataset, ``synthetic``, counts, code version); for
        bundles built before it existed, what the manifest's run record tells."""
        prov = self.manifest.get("provenance")
        if isinstance(prov, dict):
            return dict(prov)
        run = self.manifest.get("run") or {}
        return provenance(Path(str(run.get("path") or self.path / "missing-run")),
                          {"dataset": {"spec": run.get("dataset")}}, self.classes)

    @property
    def synthetic(self) -> bool:
        """True when the bundle was trained on synthetic (demo) images."""
        return bool(self.provenance.get("synthetic"))

    @property
    def validation(self) -> dict[str, Any] | None:
        """What the served pipeline measured on the held-out calibration split
        (``skin-core calibrate``), or ``None`` when it was never calibrated there."""
        v = self.manifest.get("validation")
        return dict(v) if isinstance(v, dict) else None

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (name, classes, models, meta, run)."""
        return {"path": str(self.path), "name": self.manifest.get("name"),
                "classes": list(self.classes), "models": list(self.models),
                "n_members": len(self.members), "meta": self.meta is not None,
                "meta_without_metadata": self.meta_nometa is not None,
                "quality_reference": self.quality_reference is not None,
                "run": self.manifest.get("run"), "created": self.manifest.get("created"),
                "provenance": self.provenance, "validation": self.validation}


# --------------------------------------------------------------------------------------------
# hashing and verification


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def verify_bundle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a bundle folder and return its manifest (no model is loaded).

    Raises
    ------
    DataError
        No folder, no or unreadable ``bundle.json``, unknown format, a listed file missing or
        changed (sha256 mismatch), a path that leaves the folder, or an unlisted file of a
        type that can carry code. Each message is one sentence naming the file.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"Model bundle {root} does not exist or is not a folder; build one with "
                        "`skin-core bundle --run RUN --out models/NAME`.")
    mpath = root / MANIFEST
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{mpath} is missing, so {root} is not a model bundle; build one with "
                        "`skin-core bundle`.") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{mpath} is not readable JSON ({e}); rebuild the bundle.") from e
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"{mpath} has format {found!r}; this version reads {BUNDLE_FORMAT!r} "
                        "(rebuild the bundle with this version's `skin-core bundle`).")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise DataError(f"{mpath} lists no files with their sha256; rebuild the bundle.")
    real_root = root.resolve()
    for name, digest in files.items():
        f = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not f.resolve().is_relative_to(
                real_root):
            raise DataError(f"{mpath} lists {name!r}, a path outside the bundle folder; the "
                            "bundle was tampered with, rebuild it.")
        if not f.is_file():
            raise DataError(f"Bundle file {f} listed in {MANIFEST} is missing; copy the whole "
                            "bundle folder again or rebuild it.")
        if file_sha256(f) != digest:
            raise DataError(f"Bundle file {f} does not match the sha256 in {MANIFEST} (it was "
                            "changed or corrupted); restore the original bundle or rebuild it.")
    listed = set(files)
    for f in sorted(root.rglob("*")):
        rel = _rel(f, root)
        if rel == MANIFEST or rel in listed:
            continue
        if f.is_symlink() and not f.resolve().is_relative_to(real_root):
            raise DataError(f"Bundle file {f} is a link that leaves the bundle folder; remove "
                            "it.")
        if f.is_file() and any(rel.lower().endswith(s) for s in CODE_SUFFIXES):
            raise DataError(f"Bundle file {f} is not listed in {MANIFEST} and is of a type that "
                            "can run code when loaded; remove it (bundles never use pickle).")
    return manifest


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Verify a bundle (:func:`verify_bundle`) and load its meta-models and quality reference.

    Member weights are loaded by :class:`~skin_core.predict.Predictor` (with safetensors).

    Raises
    ------
    DataError
        Any :func:`verify_bundle` failure, or a meta-classifier whose classes or models
        disagree with the bundle's.
    """
    root = Path(path)
    manifest = verify_bundle(root)
    classes = tuple(str(c) for c in manifest.get("classes") or ())
    if len(classes) < 2:
        raise DataError(f"{root / MANIFEST} lists {len(classes)} classes; a bundle needs at least "
                        "2, rebuild it.")
    members = tuple(
        MemberSpec(model=str(m["model"]), arch=str(m["arch"]), seed=int(m.get("seed", 0)),
                   fold=int(m["fold"]), file=str(m["file"]),
                   preprocessing=dict(m["preprocessing"]), metrics=dict(m.get("metrics") or {}))
        for m in manifest.get("members") or ()
    )
    if not members:
        raise DataError(f"{root / MANIFEST} lists no member models; rebuild the bundle.")
    for m in members:
        if m.file not in manifest["files"]:
            raise DataError(f"Member {m.model} fold {m.fold} weights {m.file} are not listed "
                            f"with a sha256 in {root / MANIFEST}; rebuild the bundle.")
    meta = _load_meta(root, manifest, META_DIR, classes, members)
    meta_nometa = _load_meta(root, manifest, META_NOMETA_DIR, classes, members)
    qref = None
    if QUALITY_REFERENCE in manifest["files"]:
        qref = json.loads((root / QUALITY_REFERENCE).read_text(encoding="utf-8"))
    return Bundle(path=root, manifest=manifest, classes=classes, members=members, meta=meta,
                  meta_nometa=meta_nometa, quality_reference=qref)


def _load_meta(root: Path, manifest: dict[str, Any], sub: str, classes: tuple[str, ...],
               members: tuple[MemberSpec, ...]) -> Any:
    from skin_core.meta.io import MANIFEST as META_MANIFEST
    from skin_core.meta.io import load_predictor

    if f"{sub}/{META_MANIFEST}" not in manifest["files"]:
        return None
    pred = load_predictor(root / sub)
    check_meta_compatible(pred, classes, {m.model for m in members}, where=root / sub)
    return pred


def check_meta_compatible(predictor: Any, classes: tuple[str, ...], models: set[str], *,
                          where: Path) -> None:
    """Raise :class:`DataError` when a meta predictor does not fit the bundle's members."""
    if tuple(predictor.classes) != tuple(classes):
        raise DataError(
            f"The meta-classifier in {where} predicts classes {list(predictor.classes)} but the "
            f"bundle's models predict {list(classes)}; fit the meta-classifier on this run's "
            "OOF (skin-core meta --run RUN) and rebuild the bundle."
        )
    lacking = [m for m in predictor.feature_spec.models if m not in models]
    if lacking:
        raise DataError(
            f"The meta-classifier in {where} uses model(s) {lacking} that the bundle does not "
            f"have (it has {sorted(models)}); fit it on this run's OOF and rebuild the bundle."
        )


# --------------------------------------------------------------------------------------------
# rewriting in place


def rehash_bundle(root: Path) -> None:
    """Rewrite ``bundle.json``'s ``files`` with the sha256 of every file now in ``root``."""
    from skin_core.io import atomic_write_json

    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    manifest["files"] = {_rel(f, root): file_sha256(f) for f in sorted(root.rglob("*"))
                         if f.is_file() and f.name != MANIFEST}
    atomic_write_json(root / MANIFEST, manifest)


def replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing any folder there."""
    os.chmod(tmp, 0o755)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / "bundle")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


@contextmanager
def edit_bundle(root: str | os.PathLike[str]) -> Iterator[Path]:
    """A copy of bundle ``root`` to change; on leaving the block its hashes are rewritten and
    it replaces ``root`` in one rename (an error leaves ``root`` untouched)::

        with edit_bundle("models/demo") as tmp:
            (tmp / "retrieval").mkdir(); ...
    """
    root = Path(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        shutil.copytree(root, tmp, dirs_exist_ok=True)
        yield tmp
        rehash_bundle(tmp)
        replace_folder(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# building


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{path} is not readable YAML ({e}); is this a training run?") from e
    return doc if isinstance(doc, dict) else {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not readable JSON ({e}); rerun the step that writes it.") from e


def _run_members(run: Path, classes: tuple[str, ...], models: list[str] | None
                 ) -> list[tuple[dict[str, Any], Path]]:
    found = []
    for side in sorted((run / "members").glob("*/fold*.json")):
        if side.name.endswith(".oof.json"):
            continue
        doc = _read_json(side)
        if not isinstance(doc, dict) or "fold" not in doc or "arch" not in doc:
            continue
        if models is not None and doc.get("model") not in models:
            continue
        weights = side.with_name(str(doc.get("weights") or f"fold{doc['fold']}.safetensors"))
        if not weights.is_file():
            raise DataError(f"Member weights {weights} named by {side} are missing; finish or "
                            "resume the training run.")
        if tuple(doc.get("classes") or ()) != classes:
            raise DataError(f"{side} was trained for classes {doc.get('classes')} but the run has "
                            f"{list(classes)}; the run folder mixes runs, retrain it.")
        if doc.get("sha256") and file_sha256(weights) != doc["sha256"]:
            raise DataError(f"Member weights {weights} do not match the sha256 in {side}; the "
                            "file was changed after training, retrain that fold.")
        found.append((doc, weights))
    if not found:
        raise DataError(f"The run {run} has no finished member (members/<model>/fold<k>.json); "
                        "finish training first (skin-core train).")
    return found


def ensemble_entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of ``(N, K)`` probabilities."""
    p = np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def _oof_ensemble(run: Path, classes: tuple[str, ...], models: list[str]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mean over models of the OOF probabilities, and the label index, per image."""
    import pandas as pd

    from skin_core.constants import prob_columns

    path = run / "oof.csv"
    if not path.is_file():
        raise DataError(f"{path} does not exist; the run has no out-of-fold predictions yet "
                        "(finish skin-core train).")
    oof = pd.read_csv(path, dtype={"image_id": str, "model": str, "label": str})
    cols = prob_columns(classes)
    lacking = [c for c in ("image_id", "model", "label", *cols) if c not in oof.columns]
    if lacking:
        raise DataError(f"{path} lacks the column(s) {lacking}; it is not this run's OOF table.")
    oof = oof[oof["model"].isin(models)]
    mean = oof.groupby("image_id", sort=False)[cols].mean()
    labels = oof.drop_duplicates("image_id").set_index("image_id").loc[mean.index, "label"]
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index.get(v, -1) for v in labels], dtype=int)
    keep = y >= 0
    return mean.to_numpy(dtype=float)[keep], y[keep]


def _code_version() -> str:
    """``skin-core X.Y.Z`` plus the git commit of the source tree when it is a checkout."""
    import subprocess

    from skin_core import __version__

    version = f"skin-core {__version__}"
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} ({out.stdout.strip()})" if out.returncode == 0 and out.stdout else version


def provenance(run: Path, config: dict[str, Any], classes: tuple[str, ...]) -> dict[str, Any]:
    """Where a bundle came from: dataset spec, synthetic or real, image and lesion counts of
    its training run (out-of-fold rows), classes, date and code version.

    ``synthetic`` is true when the dataset folder holds the demo generator's
    ``generation_truth.csv`` (the embedded demo) and, for older runs without a readable
    spec, ``None``.
    """
    import pandas as pd

    spec = (config.get("dataset") or {}).get("spec")
    synthetic: bool | None = None
    if spec and spec != "frame":
        try:
            from skin_core.data.tables import parse_spec

            _kind, path, _opts = parse_spec(str(spec))
            root = path if path.is_dir() else path.parent
            synthetic = (root / "generation_truth.csv").is_file()
        except Exception:  # noqa: BLE001 - an unparsable spec only leaves it unknown
            synthetic = None
    n_images = n_lesions = None
    oof_path = run / "oof.csv"
    if oof_path.is_file():
        cols = pd.read_csv(oof_path, nrows=0).columns
        use = [c for c in ("image_id", "lesion_id") if c in cols]
        oof = pd.read_csv(oof_path, usecols=use, dtype=str).drop_duplicates("image_id")
        n_images = int(len(oof))
        if "lesion_id" in oof.columns:
            lesion = oof["lesion_id"].where(oof["lesion_id"].notna(), "image:" + oof["image_id"])
            n_lesions = int(lesion.nunique())
    return {"dataset": spec, "synthetic": synthetic, "n_images": n_images,
            "n_lesions": n_lesions, "classes": list(classes),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "code_version": _code_version()}


def build_bundle(
    run: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    meta: str | os.PathLike[str] | None = None,
    meta_without_metadata: str | os.PathLike[str] | None = None,
    quality: Any = None,
    models: list[str] | None = None,
    name: str | None = None,
    coverage: float = DEFAULT_COVERAGE,
    overwrite: bool = False,
) -> Path:
    """Build a bundle from a finished training run (and optional meta-classifier folders).

    Parameters
    ----------
    run:
        Training run folder (``config.yaml``, ``oof.csv``, ``metrics.json``, ``members/``).
    out:
        The bundle folder to create (e.g. ``models/demo``). Built under a temporary name
        beside it and renamed into place.
    meta:
        Folder written by ``skin-core meta`` (``meta_predictor.json`` + LightGBM text models),
        fitted with metadata features.
    meta_without_metadata:
        The same for a meta-classifier fitted without metadata features; used when a prediction
        comes without age, sex and site.
    quality:
        The training images' quality table (``quality.csv`` path or DataFrame from
        :func:`~skin_core.analysis.quality.compute_quality`); its quantiles become
        ``quality_reference.json``. ``None``: no reference (percentiles are then not reported).
    models:
        Models of the run to include (default all finished ones).
    name:
        Bundle name (default: the folder name).
    coverage:
        Target coverage of the ensemble's own conformal sets (used without a meta-classifier).
    overwrite:
        Replace an existing bundle at ``out``.

    Returns
    -------
    Path of the bundle folder.

    Raises
    ------
    DataError
        Not a finished run, weights changed since training, a meta folder whose classes or
        models differ from the run's, unreadable inputs.
    ConfigError
        ``out`` exists without ``overwrite``, bad ``coverage``.
    """
    import pandas as pd

    from skin_core.analysis.quality import quality_reference
    from skin_core.io import atomic_write_json
    from skin_core.meta.conformal import fit_conformal
    from skin_core.meta.io import MANIFEST as META_MANIFEST
    from skin_core.meta.io import load_predictor

    run = Path(run)
    out = Path(out)
    if not 0 < coverage < 1:
        raise ConfigError(f"The 'coverage' parameter must be between 0 and 1; got {coverage}.")
    if not (run / "config.yaml").is_file():
        raise DataError(f"{run} is not a training run folder (no config.yaml); pass the folder "
                        "`skin-core train --out` wrote.")
    if out.exists() and not overwrite:
        raise ConfigError(f"Bundle folder {out} already exists; choose another --out or pass "
                          "--overwrite to replace it.")
    config = _read_yaml(run / "config.yaml")
    classes = tuple(str(c) for c in config.get("classes") or ())
    if len(classes) < 2:
        raise DataError(f"{run / 'config.yaml'} lists no classes; is this a training run?")
    found = _run_members(run, classes, models)
    model_ids = list(dict.fromkeys(str(d["model"]) for d, _ in found))
    if models is not None:
        missing = [m for m in models if m not in model_ids]
        if missing:
            raise DataError(f"The run {run} has no finished model(s) {missing}; it has "
                            f"{model_ids}.")
    metrics = _read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}

    if meta is not None and meta_without_metadata is None and (
            Path(meta) / NOMETA_SUBDIR / META_MANIFEST).is_file():
        meta_without_metadata = Path(meta) / NOMETA_SUBDIR  # skin-core meta writes both
    metas: dict[str, Any] = {}
    for sub, src in ((META_DIR, meta), (META_NOMETA_DIR, meta_without_metadata)):
        if src is None:
            continue
        src = Path(src)
        pred = load_predictor(src)
        check_meta_compatible(pred, classes, set(model_ids), where=src)
        if sub == META_NOMETA_DIR and pred.feature_spec.metadata:
            raise DataError(f"The meta-classifier in {src} uses metadata features, so it cannot "
                            "serve predictions without metadata; pass one fitted without them.")
        metas[sub] = (src, _read_json(src / META_MANIFEST))

    probs, y = _oof_ensemble(run, classes, model_ids)
    if len(y) == 0:
        raise DataError(f"{run / 'oof.csv'} has no rows for models {model_ids}.")
    ent = ensemble_entropy(probs)
    conformal = fit_conformal(probs, y, classes, coverage=coverage)

    def best_key(model: str) -> float:
        v = (metrics.get(model) or {}).get("balanced_accuracy")
        return float(v) if v is not None and np.isfinite(v) else -1.0

    best_model = max(model_ids, key=best_key)
    best_folds = [d for d, _ in found if d["model"] == best_model]
    best_fold = max(best_folds, key=lambda d: float(
        (d.get("metrics") or {}).get("balanced_accuracy") or -1.0))["fold"]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        members = []
        # The image cache's resize mode is the run's (train.resize); the sidecars' "crop" field
        # predates it, so the run's setting wins.
        resize = str((config.get("train") or {}).get("resize") or "center")
        tta = bool((config.get("train") or {}).get("tta", False))
        for doc, weights in found:
            rel = f"members/{doc['model']}/fold{int(doc['fold'])}.safetensors"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(weights, tmp / rel)
            members.append(MemberSpec(
                model=str(doc["model"]), arch=str(doc["arch"]), seed=int(doc.get("seed", 0)),
                fold=int(doc["fold"]), file=rel,
                preprocessing={**doc["preprocessing"], "crop": resize,
                               **({"tta": True} if tta else {})},
                metrics=dict(doc.get("metrics") or {})).to_dict())
        for sub, (src, man) in metas.items():
            (tmp / sub).mkdir()
            shutil.copyfile(src / META_MANIFEST, tmp / sub / META_MANIFEST)
            for fname in man.get("files_sha256", {}):
                shutil.copyfile(src / fname, tmp / sub / fname)
        has_qref = False
        if quality is not None:
            qdf = quality
            if not isinstance(quality, pd.DataFrame):
                qpath = Path(quality)
                if not qpath.is_file():
                    raise DataError(f"The quality table {qpath} does not exist; make it with "
                                    "`skin-core quality --dataset SPEC --out quality.csv`.")
                qdf = pd.read_csv(qpath, dtype={"image_id": str})
            atomic_write_json(tmp / QUALITY_REFERENCE, quality_reference(qdf))
            has_qref = True
        manifest = {
            "format": BUNDLE_FORMAT,
            "name": name or out.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "classes": list(classes),
            "run": {
                "path": str(run.resolve()), "run_id": run.name,
                "dataset": (config.get("dataset") or {}).get("spec"),
                "fingerprint": (config.get("dataset") or {}).get("fingerprint"),
                "config_sha256": file_sha256(run / "config.yaml"),
                "versions": config.get("versions"),
            },
            "members": members,
            "models": {m: {"arch": next(d["arch"] for d, _ in found if d["model"] == m),
                           "metrics": metrics.get(m)} for m in model_ids},
            "heatmap_member": {"model": best_model, "fold": int(best_fold),
                               "chosen_by": "best OOF balanced accuracy, then best fold"},
            "meta": {sub: {"source": str(src), "metadata_features":
                           bool(man.get("feature_spec", {}).get("metadata", False))}
                     for sub, (src, man) in metas.items()},
            "referral": {
                "entropy_threshold": float(np.percentile(ent, ENTROPY_PERCENTILE)),
                "entropy_percentile": ENTROPY_PERCENTILE,
                "entropy_unit": "nats",
                "blur_percentile_cut": BLUR_PERCENTILE_CUT,
                "n_oof_images": int(len(y)),
            },
            "ensemble_conformal": conformal.to_dict(),
            "quality_reference": QUALITY_REFERENCE if has_qref else None,
            "provenance": provenance(run, config, classes),
            "calibration": {"fitted_on": "training out-of-fold predictions of single fold "
                            "models (not the served ensemble); run `skin-core calibrate` on a "
                            "held-out split to fit the served pipeline"},
        }
        manifest["files"] = {_rel(f, tmp): file_sha256(f)
                             for f in sorted(tmp.rglob("*")) if f.is_file()}
        atomic_write_json(tmp / MANIFEST, manifest)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = [
    "BLUR_PERCENTILE_CUT",
    "BUNDLE_FORMAT",
    "Bundle",
    "ENTROPY_PERCENTILE",
    "MemberSpec",
    "build_bundle",
    "check_meta_compatible",
    "edit_bundle",
    "ensemble_entropy",
    "file_sha256",
    "load_bundle",
    "provenance",
    "rehash_bundle",
    "replace_folder",
    "verify_bundle",
]
