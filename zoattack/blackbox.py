"""The query-counting black box: the only code in zoattack that calls a model.

Counting rule: one query = one input scored by the model, charged to the example that
input belongs to. Every call is checked against the per-example budget *before* the model
runs, so a refused call costs nothing and an example can never exceed its budget.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from zoattack.errors import (
    InvalidInputError,
    InvalidScoresError,
    LabelsOnlyError,
    QueryBudgetExceeded,
)

Output = Literal["logits", "probs", "labels", "scores"]
COUNTING_RULE = (
    "one query = one input scored by the model, charged to its example; "
    "retries and chunks do not add queries"
)


LABELS_ONLY_HINT = (
    "score-based attacks and defense training need logits or probs; attacking a labels-only "
    "model needs hard-label (decision-based) attacks"
)
DECISION_HINT = "--attack hsja, sign_opt, rays or opt (see `zoattack list attacks`)"


def check_output_kind(model: object, output: str) -> None:
    """Refuse to read scores from a model that only answers top-1 labels.

    Models that know what they really return (a remote server's ``/info``, a ``ScoreAPI``
    configured with ``output="labels"``) say so in ``output_kind``; their labels come back as
    one-hot rows, and a score-based attack on those would spend its budget on flat scores and
    report a meaningless 0% success.
    """
    kind = getattr(model, "output_kind", None)
    if kind == "labels" and output != "labels":
        where = getattr(model, "url", None)
        what = f"the model at {where}" if where else "this model"
        raise LabelsOnlyError(
            f"{what} returns top-1 labels only, not scores; {LABELS_ONLY_HINT}: use {DECISION_HINT}"
        )


class LabelsOnly(nn.Module):
    """A model seen through its top-1 label only (`zoattack run --labels-only`).

    ``forward`` returns one-hot rows of the wrapped model's argmax, so even code holding this
    module cannot read a score; ``output_kind = "labels"`` makes :class:`BlackBox` refuse
    any output but ``"labels"``. Shapes: ``(M, *input_shape)`` -> ``(M, classes)`` in {0, 1}.
    """

    output_kind = "labels"

    def __init__(self, model: nn.Module | Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        # Not registered as a submodule: parameters() of the wrapper expose nothing either.
        object.__setattr__(self, "_inner", model)
        param = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        self._device = param.device if param is not None else torch.device("cpu")
        self._dtype = param.dtype if param is not None else None

    @property
    def device(self) -> torch.device:
        return self._device

    def train(self, mode: bool = True) -> LabelsOnly:
        inner = object.__getattribute__(self, "_inner")
        if isinstance(inner, nn.Module):
            inner.train(mode)
        return super().train(mode)

    def forward(self, x: Tensor) -> Tensor:
        inner = object.__getattribute__(self, "_inner")
        x = x.to(self._device)
        if self._dtype is not None:
            x = x.to(self._dtype)
        raw = inner(x)
        if not isinstance(raw, Tensor):
            raw = torch.as_tensor(raw)
        if raw.dim() != 2:
            raise InvalidScoresError(
                f"a classifier must return (batch, classes) scores, got {tuple(raw.shape)}"
            )
        if raw.is_floating_point() and not bool(torch.isfinite(raw).all()):
            raise InvalidScoresError("model returned NaN/inf scores; check the model")
        return nn.functional.one_hot(raw.argmax(dim=1), raw.shape[1]).to(torch.float32)


class BlackBox:
    """Wraps a model (or any callable scoring a batch) behind a query ledger.

    Args:
        model: an ``nn.Module`` or a callable mapping a batch ``(M, *input_shape)`` to scores
            ``(M, ...)``. Modules are put in eval mode and always run under ``no_grad``.
        output: what callers receive: ``"logits"`` (the model's raw 2-D scores),
            ``"probs"`` (softmax of them), ``"labels"`` (top-1 class, ``int64``), or
            ``"scores"`` (raw output of any shape, e.g. one value per input for a test function).
            A model whose ``output_kind`` is ``"labels"`` allows only ``"labels"``
            (:class:`LabelsOnlyError` otherwise).
        max_batch: largest batch handed to the model in one call; bigger calls are chunked.
        budget: queries allowed per example (None: unlimited).
        input_shape: expected per-input shape; checked on every call when given.
        bounds: inputs must lie in ``[lo, hi]`` (None disables the check, e.g. for test functions).
        device: where inputs are sent; defaults to the module's parameter device, else CPU.
        dtype: dtype inputs are cast to; defaults to the module's parameter dtype, else unchanged.

    Shapes:
        ``query(x, owner)``: ``x`` is ``(M, *input_shape)``, ``owner`` is ``(M,)`` example ids.
        ``__call__(x, idx)``: ``x`` is ``(N, K, *input_shape)``, returns ``(N, K, ...)``.
    """

    counting_rule = COUNTING_RULE

    def __init__(
        self,
        model: nn.Module | Callable[[Tensor], Tensor],
        *,
        output: Output = "logits",
        max_batch: int = 1024,
        budget: int | None = None,
        input_shape: Sequence[int] | None = None,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if output not in ("logits", "probs", "labels", "scores"):
            raise ValueError(f"output must be logits, probs, labels or scores, got {output!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if budget is not None and budget < 1:
            raise ValueError(f"budget must be >= 1 query per example, got {budget}")
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"bounds must satisfy lo < hi, got {bounds}")
        check_output_kind(model, output)
        self._model = model
        self.output = output
        self.max_batch = int(max_batch)
        self.budget = budget
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.bounds = bounds
        param = None
        if isinstance(model, nn.Module):
            if model.training:
                warnings.warn(
                    "BlackBox: model was in training mode; switched to eval()", stacklevel=2
                )
            model.eval()
            param = next(iter(model.parameters()), None)
        self.device = (
            torch.device(device)
            if device is not None
            else (param.device if param is not None else torch.device("cpu"))
        )
        self.dtype = dtype if dtype is not None else (param.dtype if param is not None else None)
        self._counts = torch.zeros(0, dtype=torch.int64)
        self._of_memo: tuple[Tensor, int, int, bool] | None = None  # see queries_of

    # ----------------------------------------------------------------- ledger
    @property
    def queries(self) -> Tensor:
        """Queries used so far per example (a copy, ``int64``)."""
        return self._counts.clone()

    @property
    def total_queries(self) -> int:
        return int(self._counts.sum())

    def queries_of(self, idx: Tensor) -> Tensor:
        idx = idx.cpu()
        if idx.dtype != torch.int64:
            self._grow(int(idx.max()) + 1 if idx.numel() else 0)
            return self._counts[idx]
        # The attack loop asks for the same id tensor every step: its row count (and whether
        # index_select may read it: int64, no negative ids) is remembered, keyed on the
        # tensor and its in-place version, sparing a reduction and a sync per call.
        memo = self._of_memo
        if memo is None or memo[0] is not idx or memo[1] != idx._version:
            if idx.numel():
                lo, hi = (int(t) for t in torch.aminmax(idx))
                memo = (idx, idx._version, hi + 1, lo >= 0)
            else:
                memo = (idx, idx._version, 0, False)
            self._of_memo = memo
        self._grow(memo[2])
        return self._counts.index_select(0, idx) if memo[3] else self._counts[idx]

    def remaining(self, idx: Tensor) -> Tensor:
        """Queries each example in ``idx`` may still spend (a large number when unlimited)."""
        used = self.queries_of(idx)
        if self.budget is None:
            return torch.full_like(used, 2**62)
        return self.budget - used

    def reset_counts(self, mask: Tensor | None = None) -> None:
        if mask is None:
            self._counts.zero_()
        else:
            self._counts[mask.cpu()[: len(self._counts)]] = 0

    def load_counts(self, counts: Tensor) -> None:
        """Restore a ledger saved from :attr:`queries` (resuming a run)."""
        self._counts = counts.detach().to("cpu", torch.int64).clone()

    def _grow(self, size: int) -> None:
        if size > self._counts.shape[0]:
            pad = torch.zeros(size - self._counts.shape[0], dtype=torch.int64)
            self._counts = torch.cat([self._counts, pad])

    # ---------------------------------------------------------------- queries
    def __call__(self, x: Tensor, idx: Tensor | None = None) -> Tensor:
        """Score a grid of candidates ``(N, K, *shape)`` for examples ``idx`` (default 0..N-1)."""
        if x.dim() < 2:
            raise InvalidInputError(f"expected candidates shaped (N, K, ...), got {tuple(x.shape)}")
        n, k = x.shape[:2]
        if idx is None:
            idx = torch.arange(n, device=x.device)
        owner = idx.reshape(n, 1).expand(n, k).reshape(-1)
        out = self.query(x.reshape(n * k, *x.shape[2:]), owner)
        return out.reshape(n, k, *out.shape[1:])

    def query(self, x: Tensor, owner: Tensor | None = None) -> Tensor:
        """Score inputs ``x`` ``(M, *shape)``; input ``i`` is charged to example ``owner[i]``."""
        m = x.shape[0]
        if owner is None:
            owner = torch.arange(m)
        if owner.dim() != 1:
            owner = owner.reshape(-1)
        owner = owner.to("cpu", torch.int64)
        if owner.numel() != m:
            raise InvalidInputError(f"owner has {owner.numel()} entries for {m} inputs")
        self._validate(x)
        if m == 0:
            return self._empty_output(x)
        # Per-example counts of this call (a bincount, cheaper than unique at these sizes).
        # Its length is max(highest id + 1, ledger length), so it also says how far the ledger
        # must grow, and it refuses negative ids itself: no separate min/max pass and sync.
        try:
            add = torch.bincount(owner, minlength=self._counts.shape[0])
        except RuntimeError:
            if bool((owner < 0).any()):
                raise InvalidInputError("example ids in owner must be >= 0") from None
            raise
        self._grow(add.shape[0])
        after: Tensor | None = None
        if self.budget is not None:
            after = self._counts + add
            if int(after.max()) > self.budget:  # then find who (a loaded ledger may be over)
                ids = ((after > self.budget) & (add > 0)).nonzero().flatten()
                if ids.numel():
                    raise QueryBudgetExceeded(ids.tolist(), self.budget, after[ids].tolist())
        if m <= self.max_batch:
            raw = self._score_chunk(x, owner, add, after)
            # A copy for raw outputs, as the chunked path's cat makes: callers own the result.
            return self._convert(raw) if self.output in ("probs", "labels") else raw.clone()
        outs = []
        with torch.no_grad():
            for start in range(0, m, self.max_batch):
                chunk = x if m <= self.max_batch else x[start : start + self.max_batch]
                chunk = chunk.to(self.device)
                if self.dtype is not None:
                    chunk = chunk.to(self.dtype)
                raw = self._model(chunk)
                if not isinstance(raw, Tensor):
                    raw = torch.as_tensor(raw)
                self._check_scores(raw, chunk.shape[0])
                # Charged only once the chunk is scored: a failing model does not eat budget.
                self._counts.index_add_(
                    0,
                    owner[start : start + self.max_batch],
                    torch.ones(chunk.shape[0], dtype=torch.int64),
                )
                outs.append(raw)
        return self._convert(torch.cat(outs))

    def _score_chunk(
        self, x: Tensor, owner: Tensor, add: Tensor, after: Tensor | None = None
    ) -> Tensor:
        """The whole call as one model batch; ``add`` is its per-example row count and
        ``after`` (when given) the ledger plus ``add``, already computed for the budget check."""
        with torch.no_grad():
            chunk = x.to(self.device)
            if self.dtype is not None:
                chunk = chunk.to(self.dtype)
            raw = self._model(chunk)
            if not isinstance(raw, Tensor):
                raw = torch.as_tensor(raw)
            self._check_scores(raw, chunk.shape[0])
        # Charged only once the batch is scored: a failing model does not eat budget.
        if after is not None and after.shape == self._counts.shape:
            self._counts = after  # the same sums; nothing else holds the ledger tensor
        else:
            self._counts += add
        return raw

    def _validate(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise InvalidInputError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise InvalidInputError(f"inputs must be floating point, got {x.dtype}")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise InvalidInputError(
                f"inputs have per-example shape {tuple(x.shape[1:])}, the model expects "
                f"{self.input_shape}"
            )
        if not x.numel():
            return
        # One reduction serves both checks: min and max propagate NaN, and any inf is one
        # of them, so both are finite exactly when every input is.
        x_min, x_max = (float(v) for v in torch.aminmax(x))
        if not (math.isfinite(x_min) and math.isfinite(x_max)):
            raise InvalidInputError("inputs contain NaN or inf")
        if self.bounds is not None:
            lo, hi = self.bounds
            tol = 1e-6 * (hi - lo)
            if x_min < lo - tol or x_max > hi + tol:
                raise InvalidInputError(
                    f"inputs must lie in [{lo}, {hi}], got range [{x_min:.4g}, {x_max:.4g}]"
                )

    def _check_scores(self, raw: Tensor, m: int) -> None:
        if raw.shape[:1] != (m,):
            raise InvalidScoresError(
                f"model returned shape {tuple(raw.shape)} for a batch of {m} inputs"
            )
        if self.output in ("logits", "probs", "labels") and raw.dim() != 2:
            raise InvalidScoresError(
                f"a classifier must return (batch, classes) scores, got {tuple(raw.shape)}"
            )
        if (
            raw.is_floating_point()
            and raw.numel()
            and not all(math.isfinite(float(v)) for v in torch.aminmax(raw))
        ):
            bad = (~torch.isfinite(raw.reshape(m, -1))).any(dim=1).nonzero().flatten()
            raise InvalidScoresError(
                f"model returned NaN/inf scores for {len(bad)} of {m} inputs "
                f"(batch rows {bad[:5].tolist()}); check the model or its input range"
            )

    def _convert(self, raw: Tensor) -> Tensor:
        if self.output == "probs":
            return torch.softmax(raw.float(), dim=-1)
        if self.output == "labels":
            return raw.argmax(dim=-1)
        return raw

    def _empty_output(self, x: Tensor) -> Tensor:
        if self.output == "labels":
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        return torch.zeros(0, device=self.device, dtype=x.dtype)
