"""`zoattack defend certify` as a library call: certify a trained defense, resumably.

:func:`certify_defense` loads the defense and its black box, picks the test images, certifies
each one (:func:`zoattack.defense.certify.certify_image`), appends its row to ``certify.csv``
(a :class:`~zoattack.results.log.RowLog`: fsynced per row) and writes ``certify.json`` and the
certified-accuracy curve. Each image's noise has its own seed, so a resumed certification
draws exactly what an uninterrupted one would have.

Output folder rules, as `zoattack run`'s: a folder holding a certification is not replaced
unless ``overwrite``; ``resume`` continues it (same sigma, n0, n, alpha, seed and method).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from zoattack.blackbox import BlackBox
from zoattack.defense.certify import (
    COLUMNS,
    RADII,
    Smooth,
    blackbox_classifier,
    certify_group,
    check_certify_args,
    max_radius,
    save_curve,
    summarize,
)
from zoattack.results.folder import refuse_replacing
from zoattack.results.log import RowLog, write_json

CERTIFY_FILES = ("certify.csv", "certify.json", "certified_accuracy.png")
# What a resumed certification must share with the one it continues.
RESUME_SAME = ("sigma", "n0", "n", "alpha", "seed", "method")


def parse_row(raw: Mapping[str, str]) -> dict[str, Any]:
    return {
        "index": int(raw["index"]),
        "label": int(raw["label"]),
        "prediction": int(raw["prediction"]),
        "radius": float(raw["radius"]),
        "correct": int(raw["correct"]),
        "abstain": int(raw["abstain"]),
        "seconds": float(raw["seconds"]),
        "queries": int(raw["queries"]),
    }


def row_log(path: str | Path) -> RowLog:
    return RowLog(path, COLUMNS, parse_row)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Complete rows of a certify.csv (a torn last line is dropped), in index order."""
    return row_log(path).read()


def certify_images(
    smooth: Smooth,
    images: Tensor,
    labels: Tensor,
    indices: Sequence[int],
    out_csv: str | Path,
    *,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    seed: int = 0,
    blackbox: BlackBox | None = None,
    resume: bool = False,
    on_image: Callable[[dict[str, Any]], None] | None = None,
    group: int = 1,
) -> list[dict[str, Any]]:
    """CERTIFY every image, appending one CSV row per image (fsynced) as soon as it is done.

    With ``resume=True`` rows already in ``out_csv`` are kept and their images skipped (the
    final file equals an uninterrupted run's, timings aside). ``group`` images are certified
    together (their noisy copies share black-box calls; each keeps its own noise), which fills
    big batches on a GPU or many cores; rows are written when their group finishes.
    Returns every row, old and new.
    """
    if group < 1:
        raise ValueError(f"--group must be >= 1 image, got {group}")
    check_certify_args(smooth.sigma, n0, n, alpha, smooth.batch)
    log = row_log(out_csv)
    if log.path.exists() and not resume:
        raise ValueError(
            f"{log.path} already exists; pass --resume to continue it or choose a new --out"
        )
    rows = log.read() if resume else []
    log.path.parent.mkdir(parents=True, exist_ok=True)
    log.rewrite(rows)  # drops a torn last line left by a crash mid-write
    done = {r["index"] for r in rows}
    todo = [k for k, idx in enumerate(indices[: len(images)]) if int(idx) not in done]
    ys = labels.tolist()
    for start in range(0, len(todo), group):
        ks = todo[start : start + group]
        new = certify_group(
            smooth,
            images[ks],
            [int(ys[k]) for k in ks],
            [int(indices[k]) for k in ks],
            n0=n0,
            n=n,
            alpha=alpha,
            seed=seed,
            blackbox=blackbox,
        )
        for row in new:
            log.append([row])
            rows.append(row)
            if on_image is not None:
                on_image(row)
    return rows


@dataclass
class CertifyReport:
    """``result`` is certify.json's document; ``rows`` the certified images in index order."""

    result: dict[str, Any]
    rows: list[dict[str, Any]]
    out: Path
    method: str
    sigma: float
    radii: list[float]
    train_queries: dict[str, int] = field(default_factory=dict)


def throughput(summ: Mapping[str, Any], new_images: int, seconds: float) -> dict[str, Any]:
    """Images/s this session and queries per image and per certified image (one correctly
    classified and not abstained, i.e. counted in the certified accuracy at r = 0)."""
    correct = (
        round(summ["certified_accuracy"].get("0", 0.0) * summ["images"])
        if ("0" in summ["certified_accuracy"])
        else None
    )
    return {
        "images_per_second": round(new_images / seconds, 4) if seconds > 0 else None,
        "queries_per_image": summ["queries"] / max(1, summ["images"]),
        "queries_per_certified_image": (summ["queries"] / correct if correct else None),
    }


def parse_radii(text: str) -> list[float]:
    try:
        radii = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"--radii must be comma-separated numbers, got {text!r}") from None
    if not radii or any(r < 0 for r in radii):
        raise ValueError(f"--radii must be non-negative numbers, got {text!r}")
    return radii


def check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """A folder holding a certification is continued (``resume``) or replaced
    (``overwrite``), never silently rewritten."""
    if resume and overwrite:
        raise ValueError("--resume continues the certification in --out, --overwrite replaces it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; name a folder for the certification")
    held = [name for name in CERTIFY_FILES if (out / name).exists()]
    if held:
        what = f"a certification ({', '.join(held)})"
        refuse_replacing(out, what, resume=resume, overwrite=overwrite)


def certify_defense(
    defense: str | Path,
    *,
    sigma: float | None = None,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    batch: int = 1000,
    images: int = 100,
    start: int | None = None,
    skip: int = 1,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    radii: Sequence[float] = RADII,
    seed: int = 0,
    device: str = "auto",
    out: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    group: int = 1,
    indices: str | None = None,
    on_note: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[dict[str, Any]], None] | None = None,
) -> CertifyReport:
    """Certify the smoothed defended classifier of the folder ``defense`` on test images.

    ``start`` defaults to 0, or to the image after the training images when the defense
    trained on the test split. ``out`` defaults to ``DEFENSE/certify-sigmaS``. ``group``
    images share black-box calls (see :func:`certify_images`). ``on_note``
    receives warnings and the plan line, ``on_start`` the number of images, ``on_image``
    each new row. Bad settings or a refused folder raise ValueError before anything is written.
    """
    from zoattack.data import load_dataset
    from zoattack.defense.model import load_base_model, load_front
    from zoattack.device import resolve_device

    note = on_note or (lambda _msg: None)
    if images < 1 or skip < 1:
        raise ValueError(f"--images and --skip must be >= 1, got {images}, {skip}")
    if group < 1:
        raise ValueError(f"--group must be >= 1 image, got {group}")
    radii = list(radii)
    dev = resolve_device(device)
    front, card = load_front(defense, dev)
    sigma = sigma if sigma is not None else float(card["config"]["sigma"])
    check_certify_args(sigma, n0, n, alpha, batch)
    data_info = card.get("data", {})
    ds_name = dataset or data_info.get("dataset") or (card.get("blackbox") or {}).get("dataset")
    if not ds_name:
        raise ValueError(f"{defense} records no data set; pass --dataset")
    on_train_split = data_info.get("split") == "test" and ds_name == data_info.get("dataset")
    explicit_start = start is not None
    if start is None:
        start = data_info.get("start", 0) + data_info.get("count", 0) if on_train_split else 0
    if start < 0:
        raise ValueError(f"--start must be >= 0, got {start}")
    out_dir = Path(out) if out is not None else Path(defense) / f"certify-sigma{sigma:g}"
    check_out(out_dir, resume=resume, overwrite=overwrite)
    root = str(data_dir) if data_dir is not None else None
    picked = None
    if indices is not None:  # data-set indices instead of --images/--start/--skip
        from zoattack.data.registry import check_indices, parse_indices

        if skip != 1 or explicit_start:
            raise ValueError("--indices names the images itself; drop --start and --skip")
        picked = parse_indices(indices)
        images, start = len(picked), min(picked)
    last = max(picked) if picked is not None else start + (images - 1) * skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_dataset(ds_name, split="test", data_dir=root, limit=last + 1)
    if picked is not None:
        check_indices(picked, len(data), ds_name)
    if len(data) <= start:
        raise ValueError(
            f"--start {start} is past the {len(data)} available {ds_name} test "
            "images; lower --start or --images"
        )
    idx = picked if picked is not None else list(range(start, len(data), skip))[:images]
    shape = tuple(card["architecture"]["image_shape"])
    if data.image_shape != shape:
        raise ValueError(f"the defense takes {shape} images, {ds_name} has {data.image_shape}")
    if on_train_split:
        lo, hi = data_info["start"], data_info["start"] + data_info["count"]
        if any(lo <= i < hi for i in idx):
            note(
                f"warning: images {lo}-{hi - 1} were used to train this defense; "
                "certified accuracy on them is optimistic"
            )
    settings = {
        "defense": str(Path(defense).absolute()),
        "method": card["method"],
        "sigma": sigma,
        "n0": n0,
        "n": n,
        "alpha": alpha,
        "seed": seed,
        "dataset": ds_name,
        "indices": indices if picked is not None else [idx[0], idx[-1], skip],
    }
    summary_path = out_dir / "certify.json"
    if resume and summary_path.is_file():
        try:
            before = json.loads(summary_path.read_text()).get("settings", {})
        except (ValueError, AttributeError):
            raise ValueError(
                f"{summary_path} is not a certification record; use --overwrite or a new --out"
            ) from None
        for k in RESUME_SAME:
            if before.get(k) != settings[k]:
                raise ValueError(
                    f"--resume with different settings: {k} was {before.get(k)!r}, "
                    f"now {settings[k]!r}; use the original settings or a new --out"
                )
    base = load_base_model(card, dev)
    blackbox = BlackBox(base, output="labels", max_batch=max(batch, 1), input_shape=shape)
    smooth = Smooth(
        blackbox_classifier(blackbox, front),
        len(card.get("classes") or []) or int(card["blackbox"].get("num_classes") or 10),
        sigma,
        batch,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in CERTIFY_FILES:
            (out_dir / name).unlink(missing_ok=True)
    write_json(summary_path, {"settings": settings, "complete": False})
    note(
        f"certifying {card['method']} on {len(idx)} {ds_name} test images "
        f"({idx[0]}..{idx[-1]}), sigma {sigma:g}, N0 {n0}, N {n:,}, alpha "
        f"{alpha:g}; max certifiable radius {max_radius(sigma, n, alpha):.3f}"
    )
    if on_start is not None:
        on_start(len(idx))
    t0 = time.perf_counter()
    before_rows = (
        len(read_rows(out_dir / "certify.csv"))
        if resume and (out_dir / "certify.csv").is_file()
        else 0
    )
    rows = certify_images(
        smooth,
        data.images[idx].to(dev),
        data.labels[idx],
        idx,
        out_dir / "certify.csv",
        n0=n0,
        n=n,
        alpha=alpha,
        seed=seed,
        blackbox=blackbox,
        resume=resume,
        on_image=on_image,
        group=group,
    )
    session_s = time.perf_counter() - t0
    wanted = set(idx)
    rows = sorted((r for r in rows if r["index"] in wanted), key=lambda r: r["index"])
    summ = summarize(rows, radii)
    q = card["queries"]
    result = {
        "settings": settings,
        "complete": True,
        **summ,
        "queries": {
            "train_blackbox": q["train_blackbox"],
            "train_whitebox_evaluations": q["whitebox_evaluations"],
            "certify_blackbox": summ["queries"],
            "certify_blackbox_this_session": blackbox.total_queries,
        },
        "seconds_this_session": round(session_s, 1),
        "throughput": throughput(summ, len(rows) - before_rows, session_s),
        "max_certifiable_radius": max_radius(sigma, n, alpha),
    }
    write_json(summary_path, result)
    save_curve(out_dir / "certified_accuracy.png", {card["method"]: rows}, sigma)
    return CertifyReport(
        result=result,
        rows=rows,
        out=out_dir,
        method=str(card["method"]),
        sigma=float(sigma),
        radii=radii,
        train_queries={
            "blackbox": int(q["train_blackbox"]),
            "whitebox_evaluations": int(q["whitebox_evaluations"]),
        },
    )
