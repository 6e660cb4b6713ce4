"""`zoattack verify`: re-score a run's adversarial examples on the attacked model or another.

Each stored example is scored once through its own query-counting black box; those checks
are counted apart (``verification_queries``) and never added to the attack's ledger. With the
data set at hand (the run's ``dataset``/``data_dir``), the clean images are read too, so each
example is checked against the threat model (distance <= eps, pixels in [0, 1]), and another
model's clean predictions are taken (one more check per image) so that a transfer rate counts
only images that model got right to begin with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from zoattack.adversarial import AdversarialExamples, load_adversarial
from zoattack.errors import ZOAttackError

SHOWN_MISMATCHES = 10


def _recorded(path: Path, meta: Mapping[str, str]) -> dict[str, Any]:
    """The attacked model's settings: run.json's spec for a run folder, else the file's own
    metadata (JSON-encoded values)."""
    run = path / "run.json" if path.is_dir() else None
    if run is not None and run.is_file():
        try:
            spec = json.loads(run.read_text()).get("spec")
        except ValueError:
            spec = None
        if isinstance(spec, dict):
            return spec
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def verify(
    path: str | Path,
    *,
    model: str | None = None,
    weights: str | None = None,
    model_dir: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    max_batch: int = 4096,
    model_options: Mapping[str, Any] | None = None,
    victim: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Re-score the adversarial examples in ``path`` (a run folder or a saved file) on the
    attacked model (``model`` None) or ``model`` (transfer); returns the report."""
    from zoattack.blackbox import BlackBox
    from zoattack.device import resolve_device
    from zoattack.models import create_model

    p = Path(path).expanduser()
    ex = load_adversarial(p)
    rec = _recorded(p, ex.metadata)
    attacked_name = str(rec.get("model") or "")
    same = model is None or (model == attacked_name and weights in (None, rec.get("weights")))
    name = attacked_name if model is None else model
    if not name or name.startswith("python:"):
        raise ZOAttackError(
            f"{p} was made by zoattack.attack on a Python model ({name or 'unnamed'}); pass "
            "--model NAME (and --dataset) to check it on a model zoattack can build"
        )
    ds = dataset or rec.get("dataset")
    if not ds or ds == "custom":
        raise ZOAttackError(f"{p} names no data set; pass --dataset NAME")
    data_dir = data_dir if data_dir is not None else rec.get("data_dir")
    dev = resolve_device(device)
    clean = _clean_images(str(ds), data_dir, ex)
    if victim is None:
        # The attacked model is rebuilt as the run built it; another one from its own options.
        w = weights or (rec.get("weights") if same else None)
        victim = create_model(
            name,
            dataset=str(ds),
            weights=w,
            model_dir=model_dir or (rec.get("model_dir") if same else None),
            pretrained=w is None and ":" not in name,
            device=dev,
            threat_model=rec.get("threat_model") if same else None,
            **dict(model_options or {}),
        )
    victim.eval()
    box = BlackBox(
        victim,
        output="labels",
        max_batch=max_batch,
        input_shape=tuple(ex.x_adv.shape[1:]),
    )
    n = len(ex)
    ids = torch.arange(n)
    pred = box.query(ex.x_adv.to(box.device), ids).cpu()
    adv_now = pred == ex.target if ex.target is not None else pred != ex.label
    recorded = ex.success
    attacked = ex.attacked
    in_ball = torch.ones(n, dtype=torch.bool)
    eps = _float(rec.get("eps"))
    norm = str(rec.get("norm") or "")
    if clean is not None and eps is not None and norm in ("linf", "l2"):
        from zoattack.norms import inside

        in_ball = inside(ex.x_adv.double(), clean.double(), norm, eps).cpu()
    if bool((ex.x_adv < 0).any()) or bool((ex.x_adv > 1).any()):
        in_box = ((ex.x_adv >= 0) & (ex.x_adv <= 1)).flatten(1).all(1)
        in_ball &= in_box
    fooled = adv_now & in_ball
    report: dict[str, Any] = {
        "path": str(p),
        "attacked_model": attacked_name,
        "model": name,
        "same_model": same,
        "examples": n,
        "attacked": int(attacked.sum()),
        "recorded_successes": int(recorded.sum()),
        "recorded_success_rate": _rate(int(recorded.sum()), int(attacked.sum())),
    }
    if same:
        confirmed = recorded & fooled
        bad = (recorded & ~fooled).nonzero().flatten()
        agree = recorded & (pred == ex.final_prediction)
        report.update(
            {
                "confirmed": int(confirmed.sum()),
                "confirmed_rate": _rate(int(confirmed.sum()), int(recorded.sum())),
                "success_rate": _rate(int((fooled & attacked).sum()), int(attacked.sum())),
                "final_predictions_agree": int(agree.sum()),
                "not_confirmed": ex.index[bad[:SHOWN_MISMATCHES]].tolist(),
            }
        )
    else:
        basis = recorded.clone()
        clean_ok = None
        if clean is not None:
            clean_pred = box.query(clean.to(box.device), ids).cpu()
            clean_ok = clean_pred == ex.label
            basis &= clean_ok
        transferred = basis & fooled
        report.update(
            {
                "clean_correct_on_model": None if clean_ok is None else int(clean_ok.sum()),
                "transfer_basis": int(basis.sum()),
                "transferred": int(transferred.sum()),
                "transfer_rate": _rate(int(transferred.sum()), int(basis.sum())),
                "success_rate": _rate(
                    int((fooled & attacked & (clean_ok if clean_ok is not None else True)).sum()),
                    int((attacked & (clean_ok if clean_ok is not None else True)).sum()),
                ),
            }
        )
    report["threat_model_checked"] = clean is not None and eps is not None
    report["outside_threat_model"] = int((recorded & ~in_ball).sum())
    report["verification_queries"] = box.total_queries
    report["counting_rule"] = (
        "verification checks are counted apart: one query per image scored here, never "
        "added to the attack's queries"
    )
    return report


def _clean_images(dataset: str, data_dir: str | None, ex: AdversarialExamples) -> Any:
    """The clean images of the examples (by data-set index), or None when the data set
    cannot be read here (then distances are not checked)."""
    from zoattack.data import load_dataset

    if not len(ex):
        return None
    try:
        data = load_dataset(dataset, split="test", data_dir=data_dir, limit=int(ex.index.max()) + 1)
    except (ZOAttackError, ValueError, OSError):
        return None
    if len(data) <= int(ex.index.max()) or tuple(data.images.shape[1:]) != tuple(
        ex.x_adv.shape[1:]
    ):
        return None
    return data.images[ex.index]


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _rate(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None
