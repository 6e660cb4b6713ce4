"""Published weights fetched on request (``--download``): pinned URL and SHA-256, verified, cached.

Only what a user asks for is fetched, only from the URL pinned here, and only a file whose
SHA-256 matches the pin is kept: the download goes to a ``.part`` file beside the target,
hashed as it streams, and replaces the target in one ``os.replace`` after the check, so an
interrupted or tampered download never replaces a good file. Files are cached where torch hub
caches checkpoints (``$TORCH_HOME/hub/checkpoints``), so other tools find them too.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from zoattack.data.files import MissingFileError, shown
from zoattack.errors import ZOAttackError
from zoattack.models.weights import _ship_hint


class DownloadError(ZOAttackError):
    """A download failed (offline, HTTP error) or its checksum did not match the pin."""


@dataclass(frozen=True)
class Published:
    """A published checkpoint for one zoo architecture on one data set."""

    url: str
    sha256: str | None  # None: the pin is missing, and --download refuses to fetch
    filename: str
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rename: tuple[tuple[str, str], ...] = ()  # key prefixes: theirs -> ours

    def convert(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for k, v in state.items():
            for theirs, ours in self.rename:
                if k.startswith(theirs):
                    k = ours + k[len(theirs) :]
                    break
            out[k] = v
        return out


# Yerlan Idelbayev's CIFAR-10 ResNets (He et al. 2016, option-A shortcuts), the usual reference
# checkpoints for these architectures: repository akamaster/pytorch_resnet_cifar10, folder
# pretrained_models/, BSD 2-Clause. They were trained on inputs normalised with ImageNet
# statistics (the repository's trainer.py). Each SHA-256 is that of the published file; its
# first 8 hex digits are the file name's suffix (torch hub's convention), published test errors
# 8.27%, 7.37%, 6.90%, 6.61%.
_IDELBAYEV = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_IDELBAYEV_PINS = {
    "resnet20": ("12fca82f", "0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", "20"),
    "resnet32": ("d509ac18", "20d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", "32"),
    "resnet44": ("014dd654", "1728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4", "44"),
    "resnet56": ("4bfd9763", "1478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", "56"),
}
PUBLISHED: dict[tuple[str, str], Published] = {
    (name, "cifar10"): Published(
        url=f"{_IDELBAYEV}{name}-{head}.th",
        sha256=head + tail,
        filename=f"{name}-{head}.th",
        source=f"akamaster/pytorch_resnet_cifar10 (Idelbayev), He et al. CVPR 2016 ResNet-{depth}",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        rename=(("linear.", "fc."),),
    )
    for name, (head, tail, depth) in _IDELBAYEV_PINS.items()
}


def hub_checkpoint_dir() -> Path:
    """Where torch hub caches checkpoints (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(
    url: str,
    dest: str | Path,
    sha256: str,
    *,
    timeout: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` if ``dest`` is not already a file with that SHA-256.

    Raises:
        DownloadError: offline or HTTP failure (says where the file was expected), or a
            checksum mismatch; in both cases ``dest`` is left as it was.
    """
    dest = Path(dest).expanduser()
    sha256 = sha256.lower()
    if dest.is_file() and sha256_of(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + f".{os.getpid()}.part")
    h = hashlib.sha256()
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as fh:
                total = resp.headers.get("Content-Length")
                size = int(total) if total and total.isdigit() else None
                done = 0
                while chunk := resp.read(1 << 16):
                    fh.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, size)
                fh.flush()
                os.fsync(fh.fileno())
            if size is not None and done != size:
                raise DownloadError(
                    f"download of {url} stopped at {done:,} of {size:,} bytes; {dest} was not "
                    "changed, run again"
                )
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DownloadError(
                f"cannot download {url} ({reason}); offline? put the file at {shown(dest)} "
                f"(SHA-256 {sha256})"
            ) from None
        got = h.hexdigest()
        if got != sha256:
            raise DownloadError(
                f"checksum mismatch for {url}: expected SHA-256 {sha256}, got {got}; "
                f"the file was discarded and {shown(dest)} was not changed"
            )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def check_sha256(text: str) -> str:
    """``text`` as a lower-case SHA-256 hex digest; ValueError naming the problem otherwise."""
    digest = text.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(
            f"--sha256 must be 64 hex digits (the output of `sha256sum FILE`), got {text!r}"
        )
    return digest


def published_file(
    model: str,
    dataset: str,
    *,
    download: bool,
    model_dir: str | Path | None = None,
    also_expected: Sequence[Path] = (),
    sha256: str | None = None,
) -> tuple[Path, Published] | None:
    """The local file of a published checkpoint, fetched when ``download``; None if none is
    published for ``(model, dataset)``.

    ``sha256`` is the user's own checksum (``--sha256``): it stands in for a missing pin and
    must agree with a pinned one. A file already at ``model_dir/FILENAME`` or in the torch hub
    cache is used as is, checked against the pin or ``sha256`` when there is one (a file the
    user placed there without either is theirs, like ``--weights FILE``).
    """
    pub = PUBLISHED.get((model, dataset))
    if pub is None:
        if sha256 is not None:
            raise ValueError(
                f"--sha256 applies to published weights ({published_list()}), not {model} on "
                f"{dataset}"
            )
        return None
    mine = check_sha256(sha256) if sha256 is not None else None
    if pub.sha256 is not None and mine is not None and mine != pub.sha256:
        raise DownloadError(
            f"--sha256 {mine} disagrees with the SHA-256 pinned for {pub.url} ({pub.sha256}); "
            "drop --sha256 to use the pin"
        )
    expected = pub.sha256 or mine
    candidates = [Path(model_dir).expanduser() / pub.filename] if model_dir is not None else []
    cached = hub_checkpoint_dir() / pub.filename
    candidates.append(cached)
    for path in candidates:
        if path.is_file():
            if expected is not None and sha256_of(path) != expected:
                how = "the pinned" if pub.sha256 is not None else "the --sha256"
                raise DownloadError(
                    f"{shown(path)} does not match {how} SHA-256 {expected}; delete it and "
                    "rerun with --download"
                )
            return path, pub
    if not download:
        raise MissingFileError(
            f"pretrained {model} weights for {dataset}",
            [shown(p) for p in [*also_expected, *candidates]],
            (
                f"rerun with --download to fetch {pub.url} (checked against its pinned SHA-256); "
                if pub.sha256
                else f"rerun with --download --sha256 HEX to fetch {pub.url} (no SHA-256 is "
                "pinned for it: HEX is the checksum of a copy you trust); "
            )
            + _ship_hint(model, dataset),
        )
    if expected is None:
        raise DownloadError(
            f"no SHA-256 is pinned for {pub.url}, so zoattack will not download it "
            "unverified; pass --sha256 HEX (the checksum of a copy you trust) with --download, "
            f"or fetch it yourself and put it at {shown(cached)}"
        )
    return fetch(pub.url, cached, expected), pub


def published_list() -> str:
    return ", ".join(f"{m} on {d}" for m, d in PUBLISHED)


__all__ = [
    "PUBLISHED",
    "DownloadError",
    "Published",
    "check_sha256",
    "fetch",
    "hub_checkpoint_dir",
    "published_file",
    "published_list",
    "sha256_of",
]
