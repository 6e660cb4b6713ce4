"""`zoattack.attack`: attack your own model on your own images in one call.

The settings go through the resolver `zoattack run` and plan batches use
(:meth:`AttackSpec.resolved <zoattack.jobs.attack.AttackSpec.resolved>`), and the images
through the same chunks, seeds and black box (:func:`~zoattack.jobs.attack.run_job`), so the
same attack name, settings and seed give the same per-image rows from Python and from the CLI.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from zoattack.attacks.base import AttackResult
from zoattack.errors import InvalidInputError, InvalidScoresError, ZOAttackError

# AttackSpec fields a caller sets through ``**options`` (the rest are this function's own
# arguments, or name files the CLI loads).
OPTIONS = (
    "loss",
    "optimizer",
    "estimator",
    "samples",
    "lr",
    "mu",
    "difference",
    "momentum",
    "subspace",
    "start",
    "restart",
    "mu_decay",
    "lr_decay",
    "max_batch",
    "chunk_size",
    "init_from",
)
# Options of this function only: the data set the images come from (its conventional
# defaults apply) and the number of classes (needed by a random target of a hard-label attack).
EXTRA = ("dataset", "num_classes", "surrogates")
# Named by the CLI, refused here with a hint.
CLI_ONLY = {
    "model": "pass the model itself as the first argument",
    "images": "pass the images themselves as the second argument",
    "weights": "load the weights into your model before calling",
    "model_dir": "load the weights into your model before calling",
    "data_dir": "pass the images themselves",
    "threat_model": "load the robustbench model yourself and pass it",
    "prior": "the transfer prior is available from `zoattack run --prior`",
    "prior_weights": "the transfer prior is available from `zoattack run --prior`",
    "surrogate_weights": "load the weights into your surrogate models and pass them in "
    "surrogates=[...]",
}


class _Scores(nn.Module):
    """A plain callable seen as a module (the black box takes its device from ``device``)."""

    def __init__(self, fn: Callable[[Tensor], Any], device: torch.device) -> None:
        super().__init__()
        object.__setattr__(self, "_fn", fn)
        # An empty parameter tells the black box where inputs go; it holds nothing.
        self._where = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        out = object.__getattribute__(self, "_fn")(x)
        return out if isinstance(out, Tensor) else torch.as_tensor(out)


class _Labels(nn.Module):
    """A model seen through its top-1 label only: it may answer labels ``(M,)`` or scores
    ``(M, classes)``; either way the black box gets one-hot rows and reads back the label
    (``output_kind = "labels"``: nothing can ask it for scores)."""

    output_kind = "labels"

    def __init__(self, model: nn.Module, classes: int | None) -> None:
        super().__init__()
        self.inner = model
        self.classes = classes

    def forward(self, x: Tensor) -> Tensor:
        raw = self.inner(x)
        if not isinstance(raw, Tensor):
            raw = torch.as_tensor(raw)
        if raw.dim() == 2:
            if raw.is_floating_point() and not bool(torch.isfinite(raw).all()):
                raise InvalidScoresError("model returned NaN/inf scores; check the model")
            width = raw.shape[1]
            raw = raw.argmax(dim=1)
        elif raw.dim() == 1 and not raw.is_floating_point() and raw.dtype != torch.bool:
            width = self.classes or (int(raw.max()) + 1 if raw.numel() else 1)
        else:
            raise InvalidScoresError(
                "a labels-only model must return (batch,) integer labels or (batch, classes) "
                f"scores, got shape {tuple(raw.shape)} {raw.dtype}"
            )
        if raw.numel() and (int(raw.min()) < 0 or int(raw.max()) >= width):
            raise InvalidScoresError(
                f"the model returned label {int(raw.max())}, outside [0, {width - 1}] (num_classes)"
            )
        return nn.functional.one_hot(raw.long(), width).to(torch.float32)


def _check_images(images: Any) -> Tensor:
    if not isinstance(images, Tensor):
        try:
            images = torch.as_tensor(images)
        except Exception:
            raise InvalidInputError(
                f"images must be a tensor shaped N x C x H x W, got {type(images).__name__}"
            ) from None
    if images.dim() != 4:
        raise InvalidInputError(
            f"images must be shaped N x C x H x W (a batch of images), got shape "
            f"{tuple(images.shape)}" + ("; add a batch dimension" if images.dim() == 3 else "")
        )
    if not images.is_floating_point():
        raise InvalidInputError(
            f"images must be floating point in [0, 1], got {images.dtype}; divide uint8 "
            "pixels by 255"
        )
    if not images.shape[0]:
        raise InvalidInputError("images is empty: give at least one image")
    if not bool(torch.isfinite(images).all()):
        raise InvalidInputError("images contain NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
        raise InvalidInputError(
            f"images must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]; normalisation "
            "belongs inside the model"
        )
    return images.detach().float()


def _check_labels(labels: Any, n: int, classes: int | None) -> Tensor:
    try:
        y = labels if isinstance(labels, Tensor) else torch.as_tensor(labels)
    except Exception:
        raise InvalidInputError(
            f"labels must be N integer class indices, got {type(labels).__name__}"
        ) from None
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise InvalidInputError(f"labels must be integer class indices, got {y.dtype}")
    y = y.reshape(-1) if y.dim() == 0 else y
    if y.dim() != 1 or y.shape[0] != n:
        raise InvalidInputError(
            f"labels must be one class index per image ({n}), got shape {tuple(y.shape)}"
        )
    y = y.long()
    if int(y.min()) < 0 or (classes is not None and int(y.max()) >= classes):
        top = f"{classes - 1}" if classes is not None else "classes - 1"
        raise InvalidInputError(
            f"labels must lie in [0, {top}], got range [{int(y.min())}, {int(y.max())}]"
        )
    return y.detach().cpu()


def _check_options(options: dict[str, Any]) -> None:
    for key in options:
        if key in OPTIONS or key in EXTRA:
            continue
        if key in CLI_ONLY:
            raise InvalidInputError(f"zoattack.attack takes no {key}= option: {CLI_ONLY[key]}")
        known = [*OPTIONS, *EXTRA]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"options are {', '.join(known)}"
        raise InvalidInputError(f"unknown option {key}= for zoattack.attack; {hint}")


# The type each option takes (as `zoattack run` parses it).
_INT_OPTIONS = ("samples", "restart", "max_batch", "chunk_size")
_FLOAT_OPTIONS = ("lr", "mu", "momentum", "mu_decay")


def _check_types(options: dict[str, Any]) -> None:
    for key, value in options.items():
        if value is None or key in ("init_from", *EXTRA):
            continue
        if key in _INT_OPTIONS:
            ok = isinstance(value, int) and not isinstance(value, bool)
            want = "an integer"
        elif key in _FLOAT_OPTIONS:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            want = "a number"
        else:
            ok = isinstance(value, str)
            want = "a string"
        if not ok:
            raise InvalidInputError(f"option {key}= must be {want}, got {value!r}")


def _num_classes(dataset: str | None, given: Any) -> int | None:
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or given < 2:
            raise InvalidInputError(f"num_classes must be an integer >= 2, got {given!r}")
        return int(given)
    if dataset is None:
        return None
    from zoattack.data import dataset_spec

    n = dataset_spec(dataset).num_classes
    return None if n is None else int(n)


def _device(device: Any, model: object, images: Tensor) -> torch.device:
    from zoattack.device import resolve_device

    if device is not None:
        return resolve_device(str(device))
    if isinstance(model, nn.Module):
        param = next(iter(model.parameters()), None)
        if param is not None:
            return param.device
    return images.device


def _starts(init_from: Any, images: Tensor) -> tuple[Tensor | None, Any]:
    """Start images of a hard-label attack, given as a tensor (N x C x H x W, or one image for
    all) or a file (read as `--init-from` reads it); ``(starts, what the spec records)``."""
    if init_from is None:
        return None, None
    shape = tuple(images.shape[1:])
    if isinstance(init_from, str):
        from zoattack.jobs.hardlabel import load_starts

        try:
            return load_starts(init_from, shape, images.shape[0]), init_from
        except ValueError as exc:
            raise InvalidInputError(str(exc).replace("--init-from", "init_from")) from None
    x = init_from if isinstance(init_from, Tensor) else torch.as_tensor(init_from)
    if tuple(x.shape) == shape:
        x = x.unsqueeze(0).expand(images.shape[0], *shape)
    if tuple(x.shape) != tuple(images.shape):
        raise InvalidInputError(
            f"init_from must be shaped like images {tuple(images.shape)} (or one image "
            f"{shape}), got {tuple(x.shape)}"
        )
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        raise InvalidInputError("init_from must be finite floating-point images")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise InvalidInputError("init_from images must lie in [0, 1]")
    return x.detach().float().cpu().clone(), "tensor"


def attack(
    model: nn.Module | Callable[[Tensor], Any],
    images: Tensor,
    labels: Tensor,
    *,
    attack: str | None = None,
    norm: str = "linf",
    eps: float | str | None = None,
    budget: int = 1000,
    target: str | int | None = None,
    labels_only: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    **options: Any,
) -> AttackResult:
    """Attack ``model`` on ``images`` (N x C x H x W in [0, 1]) with true ``labels`` (N,).

    ``model``: an ``nn.Module`` or any callable mapping a batch to scores (N x classes), or,
    for hard-label attacks, to labels (N,). ``attack``: a name of `zoattack list attacks`
    (``square``, ``sign``, ``zo``, ``hsja``, ``sign_opt``, ``rays``, ``opt``, ``auto``; None:
    what a bare `zoattack run` runs under ``norm``); hard-label names, and
    ``labels_only=True``, show the model to the attack through its top-1 label only.
    ``eps`` None: the default for ``norm`` (and for ``dataset=`` when given), as on the CLI.
    ``**options``: the attack's settings, named as `zoattack run`'s options (``optimizer``,
    ``estimator``, ``lr``, ``samples``, ``subspace``, ``loss``, ``init_from``, ...), plus
    ``dataset`` (the images' data set: its defaults apply) and ``num_classes``.

    Every scored input counts against ``budget`` per image (the counting rule is in the
    result). Bad input raises :class:`~zoattack.errors.ZOAttackError` with one line.
    """
    from zoattack.jobs.attack import (
        AttackSpec,
        JobInterrupted,
        PreparedJob,
        check_budget,
        check_eps_fits,
        check_target,
        is_score_based,
        merge_results,
        run_job,
    )
    from zoattack.norms import parse_eps

    _check_options(options)
    _check_types({"attack": attack, "norm": norm, **options})
    if not callable(model):
        raise InvalidInputError(
            f"model must be an nn.Module or a callable returning scores, got {type(model).__name__}"
        )
    x = _check_images(images)
    dataset = options.pop("dataset", None)
    classes = _num_classes(dataset, options.pop("num_classes", None))
    y = _check_labels(labels, x.shape[0], classes)
    starts, init_from = _starts(options.pop("init_from", None), x)
    if isinstance(target, bool) or (target is not None and not isinstance(target, str | int)):
        raise InvalidInputError(
            f"target must be None, 'random', 'least-likely' or a class index, got {target!r}"
        )
    hard = _hard_label(attack, labels_only)
    name = getattr(model, "name", None) or f"python:{type(model).__name__}"
    surrogates = options.pop("surrogates", None)
    if surrogates is not None:
        options["surrogates"] = _surrogate_names(surrogates, model, str(name))
    try:
        spec = AttackSpec(
            model=str(name),
            dataset=dataset or "custom",
            images=int(x.shape[0]),
            norm=str(norm),
            eps=None if eps is None else parse_eps(eps, "eps"),
            target=None if target is None else str(target),
            budget=int(budget),
            seed=int(seed),
            attack=("auto" if labels_only and attack is None else attack),
            labels_only=hard,
            init_from=init_from,
            **options,
        )
        dev = _device(device, model, x)
        spec = dataclasses.replace(spec, device=str(dev))
        spec = _resolved(spec, dataset)
        check_budget(spec.budget)
        assert spec.eps is not None
        check_eps_fits(spec.norm, spec.eps, tuple(x.shape[1:]))
        if classes is not None:
            check_target(spec.target, classes)
    except ValueError as exc:
        if isinstance(exc, ZOAttackError):
            raise
        raise InvalidInputError(str(exc)) from None
    except TypeError as exc:  # a wrongly typed option (e.g. samples="ten")
        raise InvalidInputError(f"invalid option value: {exc}") from None
    victim = _as_module(model, dev, hard, classes)
    ensemble = None
    if surrogates is not None:
        from zoattack.jobs.surrogate import ensemble_of

        # Before any victim query: each surrogate takes these images and scores the classes
        # (given by num_classes=/dataset=, else the first surrogate's).
        ensemble, _ = ensemble_of(
            surrogates,
            dataset=dataset,
            device=dev,
            shape=tuple(x.shape[1:]),
            classes=classes,
            names=str(spec.surrogates).split(","),
        )
        ensemble.white_box = any(s is model for s in _as_list(surrogates))
    pool = None
    if not is_score_based(spec) and starts is None and spec.target is not None:
        if spec.target == "random" and classes is None:
            raise InvalidInputError(
                "target='random' of a hard-label attack draws among the classes: pass "
                "num_classes= (or dataset=)"
            )
        pool = (x, y)  # targeted starts come from the caller's own images
    job = PreparedJob(
        spec=spec,
        images=x.cpu(),
        labels=y,
        classes=[str(i) for i in range(classes or int(y.max()) + 1)],
        model=victim,
        device=dev,
        data_source="images passed to zoattack.attack",
        starts=starts,
        pool=pool,
        surrogate=ensemble,
    )
    if is_score_based(spec):
        from zoattack.blackbox import check_output_kind

        check_output_kind(victim, "logits")
    try:
        outcome = run_job(job)
    except JobInterrupted as exc:
        # The model failed (wrong shape, NaN scores, an exception of its own): the cause
        # says what, in one line.
        cause = exc.__cause__
        if isinstance(cause, ZOAttackError | KeyboardInterrupt):
            raise cause from None
        raise
    except ValueError as exc:  # e.g. no image of a target class to start from
        if isinstance(exc, ZOAttackError):
            raise
        hint = "; pass init_from= (start images)" if "target class" in str(exc) else ""
        raise InvalidInputError(f"{exc}{hint}") from None
    merged = merge_results([c.result for c in outcome.chunks])
    # Surrogate passes (local, never victim queries) beside the settings, as in summary.json.
    settings = {**job.settings(), **outcome.surrogate}
    return _as_attack_result(merged, settings)


def _as_list(surrogates: Any) -> list[Any]:
    return [surrogates] if isinstance(surrogates, nn.Module | str) else list(surrogates)


def _surrogate_names(surrogates: Any, model: Any, victim: str) -> str:
    """What the spec records for ``surrogates=``: names as given, a module by its class
    (the victim object itself by the victim's name: the run is labelled white-box)."""
    names = []
    for i, s in enumerate(_as_list(surrogates)):
        if s is model:
            names.append(victim)
        elif isinstance(s, str):
            names.append(s)
        else:
            names.append(f"python:{type(s).__name__}#{i}")
    if not names:
        raise InvalidInputError("surrogates= is empty: give at least one model")
    return ",".join(names)


def _hard_label(attack: str | None, labels_only: bool) -> bool:
    """Whether the model is shown through its labels only: asked for, or a hard-label attack
    named (the API hides the scores itself; the CLI asks for --labels-only)."""
    if labels_only:
        return True
    if attack is None:
        return False
    from zoattack.jobs.resolve import score_attack_names

    key = attack.strip().lower().replace("-", "_")
    from zoattack.optim import OPTIMIZERS

    return key not in score_attack_names() and key not in OPTIMIZERS


def _resolved(spec: Any, dataset: str | None) -> Any:
    """The CLI's resolver; a data set named for its defaults must exist."""
    if dataset is not None:
        from zoattack.data import dataset_spec

        dataset_spec(dataset)  # UnknownNameError (one line) for a misspelt name
    return spec.resolved()


def _as_module(model: Any, device: torch.device, hard: bool, classes: int | None) -> nn.Module:
    if isinstance(model, nn.Module):
        model.eval()
        module: nn.Module = model
    else:
        module = _Scores(model, device)
    if hard and getattr(module, "output_kind", None) != "labels":
        return _Labels(module, classes).eval()
    return module


def _as_attack_result(merged: Any, settings: dict[str, Any]) -> AttackResult:
    """One result type for both kinds of attack (hard-label ones add their distances)."""
    from zoattack.attacks.hardlabel.oracle import DecisionResult

    n = len(merged.label)
    common: dict[str, Any] = {
        "index": torch.arange(n),
        "method": str(settings.get("method", "")),
        "counting_rule": str(settings.get("counting_rule", "")),
        "settings": settings,
    }
    if isinstance(merged, DecisionResult):
        return AttackResult(
            x_adv=merged.x_adv,
            label=merged.label,
            clean_pred=merged.clean_pred,
            final_pred=merged.final_pred,
            success=merged.success,
            queries=merged.queries,
            stop_reason=list(merged.stop_reason),
            linf=merged.linf,
            l2=merged.l2,
            clean_correct=merged.clean_correct,
            target=merged.target,
            distance=merged.distance,
            queries_to_eps=merged.queries_to_eps,
            **common,
        )
    return dataclasses.replace(merged, **common)
