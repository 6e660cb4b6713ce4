"""A trained defense as a model: ``create_model("defended:PATH")`` (``zoattack run --model
defended:PATH``) rebuilds the recorded black box and puts the defense in front of it.

PATH is the ``--out`` folder of ``zoattack defend train`` (or its ``defense.safetensors``),
optionally followed by comma-separated options:

* ``defended:runs/def``: the plain defended classifier ``f(Dec(Enc(D(x))))``, returning the
  black box's logits (deterministic; what an attacker of the deployed pipeline would query).
* ``defended:runs/def,smooth=100``: the smoothed classifier: each input is scored on ``smooth``
  Gaussian draws ``x + N(0, sigma^2 I)`` (sigma from training, or ``,sigma=0.5``; noise seeded by
  ``,seed=K``); the output is ``log((votes_c + 1) / (smooth + classes))``, log vote frequencies
  with add-one smoothing, so the argmax is the smoothed prediction, the scores are finite, and a
  score-based attack sees the margin between classes shrink as it nears the boundary.
  One query to it costs ``smooth`` evaluations of the base model internally.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zoattack.data.files import BadFileError, MissingFileError, describe, shown
from zoattack.defense.autoencoder import Decoder, Encoder
from zoattack.defense.denoiser import DnCNN
from zoattack.defense.io import split_prefixed
from zoattack.defense.train import CARD, WEIGHTS, DefenseFront
from zoattack.seeding import make_generator

_OPTIONS = {"smooth": int, "sigma": float, "seed": int, "batch": int}


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"runs/def,smooth=100,sigma=0.25"`` -> ``("runs/def", {"smooth": 100, "sigma": 0.25})``."""
    parts = spec.split(",")
    path_parts, opts = [parts[0]], {}
    for p in parts[1:]:
        key, eq, val = p.partition("=")
        if eq and key.strip() in _OPTIONS:
            try:
                opts[key.strip()] = _OPTIONS[key.strip()](val)
            except ValueError:
                raise ValueError(
                    f"defended:{spec}: {key}={val!r} is not a valid "
                    f"{_OPTIONS[key.strip()].__name__}"
                ) from None
        elif not opts:  # a comma inside the path itself
            path_parts.append(p)
        else:
            raise ValueError(
                f"defended:{spec}: unknown option {p!r}; known: "
                f"{', '.join(k + '=' for k in _OPTIONS)}"
            )
    return ",".join(path_parts), opts


def defense_paths(path: str | Path) -> tuple[Path, Path]:
    """``(defense.json, defense.safetensors)`` for a defense folder or its weights file."""
    p = Path(path).expanduser()
    folder = p.parent if p.suffix == ".safetensors" else p
    card, weights = folder / CARD, (p if p.suffix == ".safetensors" else folder / WEIGHTS)
    for f in (card, weights):
        if not f.is_file():
            raise MissingFileError(
                "defense", shown(f), "pass the --out folder of `zoattack defend train`"
            )
    return card, weights


def load_front(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[DefenseFront, dict[str, Any]]:
    """The trained white-box front (denoiser [+ encoder, decoder]) and its card; a damaged
    folder is one :class:`BadFileError` naming the file."""
    card_path, wpath = defense_paths(path)
    card = read_defense_card(card_path)
    try:
        return _build_front(card, wpath, device), card
    except BadFileError:
        raise
    except Exception as exc:  # wrong shapes or settings in untrusted files, whatever the type
        raise BadFileError(
            wpath.parent, "a usable zoattack defense folder", describe(exc), _RETRAIN
        ) from None


_RETRAIN = "train it again with `zoattack defend train --out DIR`"


def read_defense_card(card_path: Path) -> dict[str, Any]:
    """The defense card, with the type of every field the readers use checked up front."""

    def bad(detail: str) -> BadFileError:
        return BadFileError(card_path, "a zoattack defense card", detail, _RETRAIN)

    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (ValueError, OSError, RecursionError) as exc:
        raise bad(describe(exc)) from None
    if not isinstance(card, dict) or not str(card.get("format", "")).startswith("zoattack-defense"):
        raise bad("no zoattack-defense format field")

    def field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
        value = obj.get(key) if isinstance(obj, dict) else None
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise bad(f"{where}{key} is missing or of the wrong type")
        return value

    arch = field(card, "architecture", dict, "")
    shape = field(arch, "image_shape", list, "architecture.")
    if len(shape) != 3 or not all(isinstance(d, int) and 0 < d <= 4096 for d in shape):
        raise bad("architecture.image_shape must be three positive sizes")
    den = field(arch, "denoiser", dict, "architecture.")
    for key in ("channels", "depth", "width"):
        if not 0 < field(den, key, int, "architecture.denoiser.") <= 4096:
            raise bad(f"architecture.denoiser.{key} is out of range")
    if arch.get("autoencoder"):
        ae = field(arch, "autoencoder", dict, "architecture.")
        if not 0 < field(ae, "latent", int, "architecture.autoencoder.") <= 1 << 20:
            raise bad("architecture.autoencoder.latent is out of range")
        field(ae, "arch", str, "architecture.autoencoder.")
    sigma = field(field(card, "config", dict, ""), "sigma", (int, float), "config.")
    if not sigma > 0:
        raise bad("config.sigma must be > 0")
    field(card, "method", str, "")
    # A defense trained through the library may record no black box (load_base_model then
    # says so); one that does must record it with the right types.
    bb = card.get("blackbox") or {}
    if not isinstance(bb, dict):
        raise bad("blackbox is not an object")
    for key, kind in (("model", str), ("dataset", str), ("weights", str), ("num_classes", int)):
        if bb.get(key) is not None:
            field(bb, key, kind, "blackbox.")
    if card.get("data") is not None:
        data = field(card, "data", dict, "")
        for key, kind in (("dataset", str), ("split", str), ("start", int), ("count", int)):
            if data.get(key) is not None:
                field(data, key, kind, "data.")
    if card.get("classes") is not None:
        field(card, "classes", list, "")
    return card


def _build_front(card: dict[str, Any], wpath: Path, device: torch.device | str) -> DefenseFront:
    from safetensors.torch import load_file

    from zoattack.models.weights import load_into

    arch = card["architecture"]
    shape = tuple(arch["image_shape"])
    dcfg = arch["denoiser"]
    denoiser = DnCNN(
        dcfg["channels"], depth=dcfg["depth"], width=dcfg["width"], generator=make_generator(0)
    )
    state = load_file(str(wpath), device="cpu")
    load_into(denoiser, split_prefixed(state, "denoiser"), wpath, f"DnCNN {dcfg}")
    enc = dec = None
    if arch.get("autoencoder"):
        acfg = arch["autoencoder"]
        enc = Encoder(shape, acfg["latent"], arch=acfg["arch"], generator=make_generator(0))
        dec = Decoder(shape, acfg["latent"], arch=acfg["arch"], generator=make_generator(0))
        load_into(enc, split_prefixed(state, "encoder"), wpath, f"encoder {acfg}")
        load_into(dec, split_prefixed(state, "decoder"), wpath, f"decoder {acfg}")
    front = DefenseFront(denoiser, enc, dec).to(device).eval()
    front.requires_grad_(False)
    return front


def load_base_model(card: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the black box recorded in a defense card via ``create_model``."""
    from zoattack.models import create_model

    bb = card.get("blackbox")
    if not bb or "model" not in bb:
        raise ValueError(
            "the defense card records no black box (blackbox.model); it was not "
            "written by `zoattack defend train`"
        )
    weights = bb.get("weights")
    name = bb["model"]
    return create_model(
        name,
        dataset=bb.get("dataset"),
        weights=weights,
        pretrained=weights is None and ":" not in name,
        device=device,
    )


class DefendedClassifier(nn.Module):
    """``x -> base(front(x))``: the plain defended classifier (logits of the black box).

    Shapes: ``(N, C, H, W)`` in [0, 1] -> ``(N, classes)``.
    """

    def __init__(self, front: DefenseFront, base: nn.Module) -> None:
        super().__init__()
        self.front, self.base = front, base

    def forward(self, x: Tensor) -> Tensor:
        return self.base(self.front(x))


class SmoothedDefendedClassifier(nn.Module):
    """Randomized smoothing of :class:`DefendedClassifier` with vote-frequency scores.

    Output ``log((votes + 1) / (samples + classes))`` over ``samples`` noise draws per input
    (noise ``N(0, sigma^2 I)`` in [0, 1] pixel space, from its own generator so successive
    calls draw fresh noise deterministically given ``seed``).
    Shapes: ``(N, C, H, W) -> (N, classes)``; cost per input: ``samples`` base evaluations.
    """

    # Every forward advances the noise generator: a shape probe would change later results.
    stateful_forward = True

    def __init__(
        self,
        classifier: DefendedClassifier,
        *,
        sigma: float,
        samples: int,
        num_classes: int,
        seed: int = 0,
        batch: int = 1000,
    ) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"smoothing sigma must be > 0, got {sigma}")
        if samples < 1 or batch < 1:
            raise ValueError(f"smooth= and batch= must be >= 1, got {samples}, {batch}")
        self.classifier = classifier
        self.sigma, self.samples, self.num_classes = float(sigma), int(samples), int(num_classes)
        self.batch = int(batch)
        self._seed = int(seed)
        self._gen: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self._gen is None or self._gen.device.type != x.device.type:
            self._gen = make_generator(self._seed, x.device)
        counts = torch.zeros(x.shape[0], self.num_classes, device=x.device)
        reps = max(1, self.batch // self.samples)
        for start in range(0, x.shape[0], reps):
            xb = x[start : start + reps]
            rep = xb.repeat_interleave(self.samples, 0)
            noisy = rep + self.sigma * torch.randn(
                rep.shape, generator=self._gen, device=x.device, dtype=x.dtype
            )
            pred = self.classifier(noisy).argmax(-1).reshape(xb.shape[0], self.samples)
            counts[start : start + reps] = (
                nn.functional.one_hot(pred, self.num_classes).sum(1).to(counts.dtype)
            )
        return torch.log((counts + 1.0) / (self.samples + self.num_classes))


def defended_model(
    path: str,
    *,
    dataset: Any = None,
    device: torch.device | str = "cpu",
    smooth: int | None = None,
    sigma: float | None = None,
    seed: int = 0,
    batch: int = 1000,
    **kwargs: Any,
) -> nn.Module:
    """Build the defended classifier from a ``zoattack defend train`` folder.

    Args:
        path: the folder (or its ``defense.safetensors``), optionally with ``,smooth=N``,
            ``,sigma=S``, ``,seed=K``, ``,batch=B`` (see the module docstring).
        dataset: cross-checks the image shape when given (a name or an ImageDataset).
        smooth: number of noise draws per input for the smoothed classifier (None: plain).
        sigma: smoothing noise (default: the training sigma).
    """
    if kwargs:
        raise ValueError(
            f"defended models take no options {', '.join(sorted(kwargs))}; use "
            "defended:PATH[,smooth=N][,sigma=S][,seed=K]"
        )
    spec, opts = parse_spec(str(path))
    smooth = opts.get("smooth", smooth)
    sigma = opts.get("sigma", sigma)
    seed = opts.get("seed", seed)
    batch = opts.get("batch", batch)
    front, card = load_front(spec, device)
    shape = tuple(card["architecture"]["image_shape"])
    if dataset is not None:
        from zoattack.data import ImageDataset, dataset_spec

        if isinstance(dataset, ImageDataset):
            want = dataset.image_shape
        else:
            s = dataset_spec(dataset)
            want = (s.channels, *s.size) if s.channels and s.size else shape
        if tuple(want) != shape:
            raise ValueError(
                f"the defense at {spec} was trained on {shape} images, the data "
                f"set has {tuple(want)}"
            )
    base = load_base_model(card, device)
    model: nn.Module = DefendedClassifier(front, base)
    if smooth is not None:
        classes = int(card.get("blackbox", {}).get("num_classes") or 0)
        if classes < 2:
            with torch.no_grad():
                classes = int(base(torch.zeros(1, *shape, device=device)).shape[-1])
        model = SmoothedDefendedClassifier(
            model,  # type: ignore[arg-type]  # the DefendedClassifier built just above
            sigma=sigma if sigma is not None else card["config"]["sigma"],
            samples=smooth,
            num_classes=classes,
            seed=seed,
            batch=batch,
        )
    return model.to(device).eval()
