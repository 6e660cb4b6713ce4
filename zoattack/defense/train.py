"""Training a black-box defense: ZO-AE-DS and its baselines (FO-DS, FO-AE-DS, ZO-DS).

Zhang, Yao, Jia, Yi, Hong, Chang, Liu. "How to Robustify Black-Box ML Models? A Zeroth-Order
Optimization Perspective", ICLR 2022. Denoised smoothing: Salman et al., NeurIPS 2020.

Stage 1 (AE methods only): pretrain encoder+decoder on clean images with MSE (white-box, no
queries). Stage 2: train the denoiser (from scratch) and the encoder on the stability loss
``CE(f(Dec(Enc(D(x+delta)))), argmax f(x))`` (+ optional ``mse_weight * ||D(x+delta) - x||^2``,
the paper's Eq. 2 denoising term). ZO methods reach ``f`` only through the counting
:class:`~zoattack.blackbox.BlackBox` and get d loss / d latent (or / d image for ZO-DS) from a
gradient estimator via :func:`~zoattack.defense.bridge.zo_loss`; FO methods are the white-box
reference and backpropagate through the model itself.

Query cost: 1 query per training image once (its pseudo-label), then per image and step
``1 + K`` for forward differences (``f(z)`` is the shared base; CGE: ``K = d_z``, RGE: ``K = q``)
or ``1 + 2K`` for central ones; FO methods: 1 white-box forward/backward pass per image and
step, counted separately. Shapes: images ``(N, C, H, W)`` in [0, 1], latent ``(N, d_z)``.

Output folder: ``checkpoint.safetensors`` (everything needed to resume, rewritten after every
epoch of either stage), ``defense.safetensors`` (denoiser/encoder/decoder weights) and
``defense.json`` (config, black box, data, history, queries), both rewritten every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoattack.blackbox import BlackBox
from zoattack.data.files import BadFileError, describe
from zoattack.defense.autoencoder import Decoder, Encoder, make_autoencoder
from zoattack.defense.bridge import PseudoLabelCE, check_scores_blackbox, zo_loss
from zoattack.defense.denoiser import DnCNN, default_denoiser_config
from zoattack.defense.io import load_state, save_state, state_dict_prefixed
from zoattack.estimators.base import GradientEstimator
from zoattack.seeding import make_generator

METHODS = ("fo-ds", "fo-ae-ds", "zo-ds", "zo-ae-ds")
CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "defense.safetensors"
CARD = "defense.json"
FORMAT = "zoattack-defense/1"
# What may differ between an interrupted run and its --resume: only how far to go.
_RESUMABLE = ("epochs",)
AUGMENTS = ("none", "crop", "flip", "crop+flip")
_OPTIONAL = {"val_images": 0, "augment": "none"}


@dataclass
class DefenseConfig:
    """Hyperparameters of one defense run (all JSON-able; recorded in ``defense.json``).

    Defaults follow the authors' ZO runs where they fit a CPU: Adam lr 1e-3 (CGE; the authors
    advise 1e-4 for RGE), weight decay 1e-5, mu 0.005, sigma 0.25, AE pretraining with Adam
    lr 1e-3 / wd 1e-5. ``samples=None`` with ``coordinate`` is full CGE (d_z + 1 queries per
    image and step with forward differences); ``lr_step`` decays lr x0.1 every so many epochs.
    """

    method: str = "zo-ae-ds"
    sigma: float = 0.25
    estimator: str = "coordinate"
    samples: int | None = None
    mu: float = 0.005
    difference: str = "forward"
    epochs: int = 10
    ae_epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    lr_step: int | None = None
    ae_lr: float = 1e-3
    ae_weight_decay: float = 1e-5
    mse_weight: float = 0.0
    train_encoder: bool = True
    latent: int | None = None
    ae_arch: str | None = None
    denoiser_depth: int | None = None
    denoiser_width: int | None = None
    seed: int = 0
    # The authors' training practice, opt-in (defaults reproduce the runs made before them):
    # hold out the last ``val_images`` training images and keep the epoch whose smoothed
    # validation accuracy is best; augment each batch (random crop / horizontal flip), which
    # re-asks the black box for each augmented image's top-1 (1 query per image and step).
    val_images: int = 0
    augment: str = "none"

    def validate(self) -> DefenseConfig:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        # Finite too: an infinite sigma or rate only fails epochs later, after a checkpoint.
        if not 0 < self.sigma < math.inf:
            raise ValueError(
                f"--sigma must be > 0 (noise standard deviation in [0,1] pixel "
                f"units), got {self.sigma}"
            )
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.ae_epochs < 0:
            raise ValueError(f"--ae-epochs must be >= 0, got {self.ae_epochs}")
        for name in ("lr", "ae_lr", "mu"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be finite and > 0, got {getattr(self, name)}"
                )
        for name in ("weight_decay", "ae_weight_decay", "mse_weight"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}"
                )
        if self.lr_step is not None and self.lr_step < 1:
            raise ValueError(f"--lr-step must be >= 1 epoch, got {self.lr_step}")
        if self.samples is not None and self.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {self.samples}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.val_images < 0:
            raise ValueError(f"--val-images must be >= 0, got {self.val_images}")
        if self.augment not in AUGMENTS:
            raise ValueError(
                f"--augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}"
            )
        return self

    @property
    def uses_ae(self) -> bool:
        return self.method.endswith("ae-ds")

    @property
    def zeroth_order(self) -> bool:
        return self.method.startswith("zo")

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # Left out at their defaults, so cards and checkpoints written before these options
        # existed still match (--resume compares configs key by key).
        for key, default in _OPTIONAL.items():
            if d[key] == default:
                del d[key]
        return d


def build_defense(
    config: DefenseConfig, image_shape: tuple[int, int, int], generator: torch.Generator
) -> tuple[DnCNN, Encoder | None, Decoder | None, dict[str, Any]]:
    """Fresh denoiser (+ encoder/decoder for AE methods) and the architecture record."""
    dcfg = default_denoiser_config(image_shape)
    if config.denoiser_depth is not None:
        dcfg["depth"] = config.denoiser_depth
    if config.denoiser_width is not None:
        dcfg["width"] = config.denoiser_width
    denoiser = DnCNN(
        dcfg["channels"], depth=dcfg["depth"], width=dcfg["width"], generator=generator
    )
    arch: dict[str, Any] = {
        "image_shape": list(image_shape),
        "denoiser": denoiser.config(),
        "autoencoder": None,
    }
    enc = dec = None
    if config.uses_ae:
        enc, dec, acfg = make_autoencoder(
            image_shape, latent=config.latent, arch=config.ae_arch, generator=generator
        )
        arch["autoencoder"] = acfg
    return denoiser, enc, dec, arch


class DefenseFront(nn.Module):
    """The defender's white-box part: ``x -> clamp(Dec(Enc(D(x))), 0, 1)`` (AE) or
    ``clamp(D(x), 0, 1)`` (DS). Its output is what the black box scores.

    The clamp is ours, not the paper's: zoattack black boxes accept [0, 1] images only, and a
    clamp is what any real image API would do to an out-of-range input anyway.
    Shapes: ``(N, C, H, W) -> (N, C, H, W)``. No queries.
    """

    def __init__(
        self, denoiser: DnCNN, encoder: Encoder | None = None, decoder: Decoder | None = None
    ) -> None:
        super().__init__()
        if (encoder is None) != (decoder is None):
            raise ValueError("pass both encoder and decoder, or neither")
        self.denoiser, self.encoder, self.decoder = denoiser, encoder, decoder

    def forward(self, x: Tensor) -> Tensor:
        d = self.denoiser(x)
        if self.encoder is not None and self.decoder is not None:
            d = self.decoder(self.encoder(d))
        return d.clamp(0.0, 1.0)


def _batches(n: int, batch: int, generator: torch.Generator, device: torch.device) -> list[Tensor]:
    perm = torch.randperm(n, generator=generator, device=device)
    return list(perm.split(batch))


def _scheduler(
    opt: torch.optim.Optimizer, config: DefenseConfig
) -> torch.optim.lr_scheduler.StepLR:
    step = config.lr_step if config.lr_step is not None else 10**9
    return torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=0.1)


def _check_resume(saved: dict[str, Any], config: DefenseConfig, n: int) -> None:
    now = config.as_dict()
    keys = [*now, *(k for k in saved["config"] if k not in now)]
    diff = [
        k
        for k in keys
        if k not in _RESUMABLE
        and saved["config"].get(k, _OPTIONAL.get(k)) != now.get(k, _OPTIONAL.get(k))
    ]
    if diff:
        k = diff[0]
        raise ValueError(
            f"--resume with different settings: {k} was "
            f"{saved['config'].get(k, _OPTIONAL.get(k))!r}, now "
            f"{now.get(k, _OPTIONAL.get(k))!r}; rerun with the original settings or a new --out"
        )
    if saved["train_images"] != n:
        raise ValueError(
            f"--resume with different training data: {saved['train_images']} images "
            f"before, {n} now; use the same --train-images or a new --out"
        )


@dataclass(eq=False)
class _Training:
    """One training run: the fixed parts (set up by :func:`_setup`) and the progress a
    checkpoint records (``stage``, ``epoch``, ``history``, ``targets``, ``wb_evals``)."""

    config: DefenseConfig
    blackbox: BlackBox
    white_box: nn.Module | None
    x_all: Tensor  # (N, C, H, W) on the training device
    out: Path
    arch: dict[str, Any]
    gen: torch.Generator  # noise, shuffling, estimator directions
    denoiser: DnCNN
    enc: Encoder | None
    dec: Decoder | None
    estimator: GradientEstimator | None
    ae_opt: torch.optim.Optimizer | None
    params: list[nn.Parameter]  # what stage 2 trains: the denoiser (and the encoder)
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    record: dict[str, Any] | None
    on_step: Callable[[int, int, int, int, float, int], None] | None
    on_epoch: Callable[[dict[str, Any]], None] | None
    stage: int = 1
    epoch: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    targets: Tensor | None = None  # (N,) the black box's top-1 on each clean image
    wb_evals: int = 0
    x_val: Tensor | None = None  # (V, C, H, W) held-out images (config.val_images)
    y_val: Tensor | None = None  # (V,) their labels (or the black box's clean top-1)
    best: dict[str, Any] | None = None  # the best validation epoch: number, accuracy, weights
    labels_given: bool = False
    ae_x: Tensor | None = None  # stage-1 images when they differ from the training images

    @property
    def n(self) -> int:
        return self.x_all.shape[0]

    @property
    def ckpt(self) -> Path:
        return self.out / CHECKPOINT

    @property
    def dev(self) -> torch.device:
        return self.x_all.device

    @property
    def queries(self) -> int:
        """Black-box queries plus white-box evaluations so far."""
        return self.blackbox.total_queries + self.wb_evals


def train_defense(
    config: DefenseConfig,
    blackbox: BlackBox,
    images: Tensor,
    out_dir: str | Path,
    *,
    white_box: nn.Module | None = None,
    device: torch.device | str = "cpu",
    resume: bool = False,
    record: dict[str, Any] | None = None,
    on_step: Callable[[int, int, int, int, float, int], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    labels: Tensor | None = None,
    ae_images: Tensor | None = None,
) -> dict[str, Any]:
    """Train a defense for ``blackbox`` on clean ``images`` ``(N, C, H, W)`` in [0, 1].

    Args:
        config: the method and hyperparameters (validated here).
        blackbox: the query-counting wrapper; must return scores. Pseudo-labels (1 query per
            training image, once) and every ZO query go through it, charged to the training
            image's index.
        white_box: the model itself, only for ``fo-*`` (the first-order reference); its
            forward passes are counted separately as ``whitebox_evaluations``.
        out_dir: where checkpoint, weights and card go. ``resume=True`` continues from
            ``out_dir/checkpoint.safetensors`` with nothing lost or redone (same settings;
            only ``epochs`` may grow).
        record: extra JSON facts for the card (black box name/weights, data source...).
        on_step: ``(stage, epoch, step, steps, loss, queries_so_far)`` after every step.
        on_epoch: the history row after every epoch (after the checkpoint is written).
        ae_images: ``(M, C, H, W)`` images for the autoencoder's pretraining (stage 1, white-box
            MSE, no queries) instead of ``images``: the paper pretrains it on the whole
            training set while query-paid stage 2 may afford far fewer images.
        labels: ``(N,)`` true labels, used only to score the validation images when
            ``config.val_images`` > 0 (without them, the black box's top-1 on each clean
            validation image, 1 query each, is the reference).

    With ``config.val_images = V`` the last V images are held out: after every stage-2 epoch
    the defended classifier is scored on them under one Gaussian draw (the same draw every
    epoch; V queries, charged to those images), and ``defense.safetensors`` holds the best
    epoch's weights (the card's ``selection`` says which). The checkpoint keeps the latest
    weights, so ``--resume`` continues training from there.

    Returns:
        The card written to ``defense.json``.
    """
    if ae_images is not None and (
        ae_images.dim() != 4 or tuple(ae_images.shape[1:]) != tuple(images.shape[1:])
    ):
        # Checked before _setup creates out_dir: a refused call leaves nothing behind.
        raise ValueError(
            f"ae_images must be (M, {', '.join(map(str, images.shape[1:]))}), got "
            f"{tuple(ae_images.shape)}"
        )
    t = _setup(
        config,
        blackbox,
        images,
        Path(out_dir),
        white_box=white_box,
        dev=torch.device(device),
        record=record,
        on_step=on_step,
        on_epoch=on_epoch,
        labels=labels,
    )
    if ae_images is not None:
        t.ae_x = ae_images.to(t.dev)
    if resume:
        _restore(t, load_state(t.ckpt))
    elif t.ckpt.exists():
        raise ValueError(
            f"{t.out} already holds a defense checkpoint; pass --resume to continue "
            "it or choose a new --out"
        )
    if t.stage == 1:
        _pretrain_autoencoder(t)
        t.stage, t.epoch = 2, 0
    _freeze_decoder(t)
    if t.targets is None:
        t.targets = _pseudo_labels(t)
    if t.x_val is not None and t.y_val is None:
        t.y_val = _val_reference(t)
    objective = None
    if config.zeroth_order:
        objective = PseudoLabelCE(blackbox, t.targets, post=t.dec if config.uses_ae else None)
    front = DefenseFront(t.denoiser, t.enc, t.dec)
    while t.epoch < config.epochs:
        _train_epoch(t, objective)
        if t.x_val is not None:
            _validate(t, front)
        _checkpoint(t)
        _write_outputs(t, front, done=t.epoch >= config.epochs)
        if on_epoch is not None:
            on_epoch(t.history[-1])
    card = _read_card(t.out / CARD)
    zo_epochs = sum(1 for h in t.history if h["stage"] == 2)
    # A process killed between the last checkpoint and its outputs leaves the previous epoch's
    # card (or a torn one): the checkpoint is the truth, so the outputs are rewritten from it.
    if card is None or not card.get("complete") or card.get("epochs_done") != zo_epochs:
        return _write_outputs(t, front, done=True)
    return card


def _read_card(path: Path) -> dict[str, Any] | None:
    """The card at ``path``, or None when it is missing or unreadable (torn by a crash)."""
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def _setup(
    config: DefenseConfig,
    blackbox: BlackBox,
    images: Tensor,
    out: Path,
    *,
    white_box: nn.Module | None,
    dev: torch.device,
    record: dict[str, Any] | None,
    on_step: Callable[[int, int, int, int, float, int], None] | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    labels: Tensor | None = None,
) -> _Training:
    """Validate the inputs and build fresh networks, optimizers and generators."""
    config.validate()
    check_scores_blackbox(blackbox)
    if not config.zeroth_order and white_box is None:
        raise ValueError(
            f"{config.method} is the first-order reference and needs white_box= (the model itself)"
        )
    out.mkdir(parents=True, exist_ok=True)
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    c, h, w = (int(v) for v in images.shape[1:])
    x_val = y_val = None
    if config.val_images:
        if config.val_images >= images.shape[0]:
            raise ValueError(
                f"--val-images {config.val_images} leaves no training images out of "
                f"{images.shape[0]}; hold out fewer or pass more --train-images"
            )
        if labels is not None and labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        x_val = images[-config.val_images :].to(dev)
        if labels is not None:
            y_val = labels[-config.val_images :].to(dev)
        images = images[: -config.val_images]
    if blackbox.input_shape is not None and tuple(blackbox.input_shape) != (c, h, w):
        raise ValueError(
            f"the black box takes {tuple(blackbox.input_shape)} images but the "
            f"training images are {(c, h, w)}"
        )
    init_gen = make_generator(config.seed)  # weights: CPU, identical on every device
    gen = make_generator(config.seed, dev)
    denoiser, enc, dec, arch = build_defense(config, (c, h, w), init_gen)
    if arch["autoencoder"] is not None and arch["autoencoder"]["latent"] >= c * h * w:
        raise ValueError("latent must be smaller than the image")
    for m in (denoiser, enc, dec):
        if m is not None:
            m.to(dev)
    estimator = None
    if config.zeroth_order:
        from zoattack.estimators import create_estimator

        estimator = create_estimator(
            config.estimator, num_samples=config.samples, mu=config.mu, difference=config.difference
        )
    ae_opt = (
        torch.optim.Adam(
            [*enc.parameters(), *dec.parameters()],
            lr=config.ae_lr,
            weight_decay=config.ae_weight_decay,
        )
        if enc is not None and dec is not None
        else None
    )
    params = list(denoiser.parameters())
    if enc is not None and config.train_encoder:
        params += list(enc.parameters())
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return _Training(
        config=config,
        blackbox=blackbox,
        white_box=white_box,
        x_all=images.to(dev),
        out=out,
        arch=arch,
        gen=gen,
        denoiser=denoiser,
        enc=enc,
        dec=dec,
        estimator=estimator,
        ae_opt=ae_opt,
        params=params,
        opt=opt,
        sched=_scheduler(opt, config),
        record=record,
        on_step=on_step,
        on_epoch=on_epoch,
        x_val=x_val,
        y_val=y_val,
        labels_given=labels is not None,
    )


def _restore(t: _Training, saved: dict[str, Any]) -> None:
    """Load a checkpoint written by :func:`_checkpoint` into a freshly set-up run."""
    # The checkpoint is a file on disk: anything in it may be damaged. Settings that do not
    # match stay _check_resume's own ValueError; any other failure is a bad file.
    how = "delete it and train from scratch (without --resume)"
    what = "a checkpoint of this defense"
    try:
        _check_resume(saved, t.config, t.n)
    except (KeyError, TypeError, AttributeError) as exc:
        raise BadFileError(t.ckpt, what, describe(exc), how) from None
    try:
        t.denoiser.load_state_dict(saved["denoiser"])
        if t.enc is not None and t.dec is not None:
            t.enc.load_state_dict(saved["encoder"])
            t.dec.load_state_dict(saved["decoder"])
        if t.ae_opt is not None:
            t.ae_opt.load_state_dict(saved["ae_optimizer"])
        t.opt.load_state_dict(saved["optimizer"])
        t.sched.load_state_dict(saved["scheduler"])
        t.gen.set_state(saved["generator"].to(t.gen.get_state().device))
        t.blackbox.load_counts(saved["ledger"])
        if t.estimator is not None:
            t.estimator.load_state_dict(saved["estimator"])
        t.stage, t.epoch = int(saved["stage"]), int(saved["epoch"])
        t.history = list(saved["history"])
        t.targets = saved["targets"].to(t.dev) if saved["targets"] is not None else None
        t.wb_evals = int(saved["whitebox_evaluations"])
        if t.x_val is not None:
            t.y_val = (
                saved["val_targets"].to(t.dev) if saved.get("val_targets") is not None else None
            )
            t.best = saved.get("best")
    except Exception as exc:
        raise BadFileError(t.ckpt, what, describe(exc), how) from None


def _checkpoint(t: _Training) -> None:
    """Everything :func:`_restore` needs to continue exactly where this run stands."""
    save_state(
        t.ckpt,
        {
            "format": FORMAT,
            "config": t.config.as_dict(),
            "train_images": t.n,
            "stage": t.stage,
            "epoch": t.epoch,
            "denoiser": t.denoiser.state_dict(),
            "encoder": t.enc.state_dict() if t.enc is not None else None,
            "decoder": t.dec.state_dict() if t.dec is not None else None,
            "ae_optimizer": t.ae_opt.state_dict() if t.ae_opt is not None else None,
            "optimizer": t.opt.state_dict(),
            "scheduler": t.sched.state_dict(),
            "generator": t.gen.get_state(),
            "ledger": t.blackbox.queries,
            "estimator": t.estimator.state_dict() if t.estimator is not None else {},
            "history": t.history,
            "targets": t.targets,
            "whitebox_evaluations": t.wb_evals,
            **({"val_targets": t.y_val, "best": t.best} if t.x_val is not None else {}),
        },
    )


def _pretrain_autoencoder(t: _Training) -> None:
    """Stage 1 (AE methods): encoder+decoder on clean images with MSE; white-box, no queries.
    A checkpoint after every epoch; nothing to do for DS methods."""
    enc, dec, ae_opt = t.enc, t.dec, t.ae_opt
    if enc is None or dec is None or ae_opt is None:
        return
    enc.train()
    dec.train()
    while t.epoch < t.config.ae_epochs:
        t0 = time.perf_counter()
        ae_x = t.ae_x if t.ae_x is not None else t.x_all
        total, batches = 0.0, _batches(ae_x.shape[0], t.config.batch_size, t.gen, t.dev)
        for step, b in enumerate(batches, 1):
            x = ae_x[b]
            loss = F.mse_loss(dec(enc(x)), x)
            ae_opt.zero_grad(set_to_none=True)
            loss.backward()
            ae_opt.step()
            total += float(loss.detach()) * len(b)
            if t.on_step is not None:
                t.on_step(
                    1,
                    t.epoch + 1,
                    step,
                    len(batches),
                    float(loss.detach()),
                    t.blackbox.total_queries,
                )
        t.epoch += 1
        t.history.append(
            {
                "stage": 1,
                "epoch": t.epoch,
                "loss": total / ae_x.shape[0],
                "queries": 0,
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
        _checkpoint(t)
        if t.on_epoch is not None:
            t.on_epoch(t.history[-1])


def _freeze_decoder(t: _Training) -> None:
    """Stage 2 keeps the decoder fixed (and the encoder too unless ``train_encoder``)."""
    if t.dec is not None:
        t.dec.eval()
        t.dec.requires_grad_(False)
        if not t.config.train_encoder and t.enc is not None:
            t.enc.requires_grad_(False)


def _pseudo_labels(t: _Training) -> Tensor:
    """The black box's own top-1 on each clean image ``(N,)`` (1 query per image, once):
    without augmentation it never changes, so re-asking every epoch would only burn queries."""
    all_idx = torch.arange(t.n, device=t.dev)
    with torch.no_grad():
        return torch.cat(
            [
                t.blackbox.query(t.x_all[b], all_idx[b].cpu()).argmax(-1).to(t.dev)
                for b in all_idx.split(1024)
            ]
        )


def _train_epoch(t: _Training, objective: PseudoLabelCE | None) -> None:
    """Stage 2, one epoch: the denoiser (and encoder) on the stability loss, with ZO
    gradients through ``objective`` or, for FO methods, backpropagation through the model."""
    config, dev, gen, targets = t.config, t.dev, t.gen, t.targets
    assert targets is not None
    t.denoiser.train()
    if t.enc is not None:
        t.enc.train(config.train_encoder)
    t0 = time.perf_counter()
    q0 = t.queries
    total, batches = 0.0, _batches(t.n, config.batch_size, gen, dev)
    for step, b in enumerate(batches, 1):
        x = t.x_all[b]
        if config.augment != "none":
            x = augment_images(x, config.augment, gen)
            with torch.no_grad():  # the authors' pseudo-label: f's top-1 on the augmented image
                targets[b] = t.blackbox.query(x, b.cpu()).argmax(-1).to(dev)
        noisy = x + config.sigma * torch.randn(x.shape, generator=gen, device=dev)
        d = t.denoiser(noisy)
        v = t.enc(d) if t.enc is not None else d.clamp(0.0, 1.0)
        if objective is not None and t.estimator is not None:
            per, _ = zo_loss(v, objective, t.estimator, generator=gen, idx=b)
        else:
            assert t.white_box is not None
            img = t.dec(v).clamp(0.0, 1.0) if t.dec is not None else v
            per = F.cross_entropy(t.white_box(img).float(), targets[b], reduction="none")
            t.wb_evals += len(b)
        loss = per.mean()
        if config.mse_weight > 0:
            loss = loss + config.mse_weight * F.mse_loss(d, x)
        grads = torch.autograd.grad(loss, t.params, allow_unused=True)
        for p, g in zip(t.params, grads):
            p.grad = g
        t.opt.step()
        total += float(per.detach().sum())
        if t.on_step is not None:
            t.on_step(2, t.epoch + 1, step, len(batches), float(per.detach().mean()), t.queries)
    t.sched.step()
    t.epoch += 1
    t.history.append(
        {
            "stage": 2,
            "epoch": t.epoch,
            "loss": total / t.n,
            "queries": t.queries - q0,
            "seconds": round(time.perf_counter() - t0, 3),
        }
    )


def augment_images(x: Tensor, mode: str, generator: torch.Generator) -> Tensor:
    """Random crop (zero padding 4 for images 32 pixels or larger, else 2) and/or horizontal
    flip, per image, drawn from ``generator``: the authors' CIFAR-10 augmentation.
    ``(N, C, H, W) -> (N, C, H, W)``."""
    n, _, h, w = x.shape
    if "crop" in mode:
        pad = 4 if min(h, w) >= 32 else 2
        padded = F.pad(x, (pad, pad, pad, pad))
        off = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=x.device)
        x = torch.stack(
            [padded[i, :, oy : oy + h, ox : ox + w] for i, (oy, ox) in enumerate(off.tolist())]
        )
    if "flip" in mode:
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def _val_idx(t: _Training) -> Tensor:
    """Ledger ids of the validation images: right after the training images."""
    assert t.x_val is not None
    return torch.arange(t.n, t.n + t.x_val.shape[0])


def _val_reference(t: _Training) -> Tensor:
    """Without labels: the black box's top-1 on each clean validation image (1 query each)."""
    assert t.x_val is not None
    with torch.no_grad():
        return t.blackbox.query(t.x_val, _val_idx(t)).argmax(-1).to(t.dev)


def _validate(t: _Training, front: DefenseFront) -> None:
    """Score the defended classifier on the held-out images under one Gaussian draw (the same
    draw every epoch, from its own generator, so epochs compare and training is unchanged);
    remember the best epoch's weights."""
    assert t.x_val is not None and t.y_val is not None
    gen = make_generator(t.config.seed + 7919, t.dev)
    front.eval()
    with torch.no_grad():
        noisy = t.x_val + t.config.sigma * torch.randn(t.x_val.shape, generator=gen, device=t.dev)
        pred = t.blackbox.query(front(noisy), _val_idx(t)).argmax(-1).to(t.dev)
    acc = float((pred == t.y_val).float().mean())
    t.history[-1]["val_accuracy"] = round(acc, 6)
    if t.best is None or acc > t.best["accuracy"]:
        t.best = {
            "epoch": t.epoch,
            "accuracy": acc,
            "weights": {
                k: v.detach().clone()
                for k, v in state_dict_prefixed(
                    denoiser=t.denoiser, encoder=t.enc, decoder=t.dec
                ).items()
            },
        }


def _write_outputs(t: _Training, front: DefenseFront, *, done: bool) -> dict[str, Any]:
    """Write ``defense.safetensors`` (weights, the card in its metadata) and ``defense.json``."""
    from safetensors.torch import save_file

    state = state_dict_prefixed(
        denoiser=front.denoiser, encoder=front.encoder, decoder=front.decoder
    )
    if t.best is not None:
        state = dict(t.best["weights"])
    config, history, blackbox = t.config, t.history, t.blackbox
    zo_steps = [h for h in history if h["stage"] == 2]
    card: dict[str, Any] = {
        "format": FORMAT,
        "method": config.method,
        "paper": "Zhang et al., How to Robustify Black-Box ML Models? A Zeroth-Order "
        "Optimization Perspective, ICLR 2022",
        "config": config.as_dict(),
        "architecture": t.arch,
        **(t.record or {}),
        "train_images": t.n,
        "epochs_done": len(zo_steps),
        "complete": done,
        "queries": {
            "train_blackbox": blackbox.total_queries,
            "whitebox_evaluations": t.wb_evals,
            "counting_rule": blackbox.counting_rule,
        },
        "history": history,
        "train_seconds": round(sum(h["seconds"] for h in history), 1),
        "weights_file": WEIGHTS,
    }
    if t.ae_x is not None:
        card["autoencoder_pretraining_images"] = int(t.ae_x.shape[0])
    if t.x_val is not None:
        card["selection"] = {
            "val_images": t.x_val.shape[0],
            "reference": "labels" if t.labels_given else "black box top-1 on clean images",
            "rule": "best smoothed validation accuracy (one fixed Gaussian draw), first best "
            "epoch on ties; defense.safetensors holds that epoch's weights",
            "best_epoch": t.best["epoch"] if t.best is not None else None,
            "best_val_accuracy": t.best["accuracy"] if t.best is not None else None,
        }
    tmp = t.out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"zoattack_defense": json.dumps(card, sort_keys=True)})
    tmp.replace(t.out / WEIGHTS)
    tmp_card = t.out / (CARD + ".tmp")
    tmp_card.write_text(json.dumps(card, indent=2) + "\n")
    tmp_card.replace(t.out / CARD)  # atomic: a crash leaves the old card or the new one
    return card
