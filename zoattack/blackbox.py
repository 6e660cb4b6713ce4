"""The query-counting black box: the only code in zoattack that calls a model.

Counting rule: one query = one input scored by the model, charged to the example that
input belongs to. Every call is checked against the per-example budget *before* the model
runs, so a refused call costs nothing and an example can never exceed its budget.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
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
        # An upper bound on the ledger's largest count (None: unknown), kept on the host so
        # the budget check needs no read while no example can reach the budget.
        self._hi: int | None = 0
        self._tally_memo: list[tuple[Tensor, int, Tensor, Tensor, int | None]] = []
        self._deferred = 0  # inside deferred_checks (nesting depth)
        self._pending: list[tuple[Tensor, Tensor, Tensor]] = []  # unread checks

    # ----------------------------------------------------------------- ledger
    @property
    def queries(self) -> Tensor:
        """Queries used so far per example (a copy, ``int64``)."""
        return self._counts.clone()

    @property
    def total_queries(self) -> int:
        return int(self._counts.sum())

    @property
    def deferring(self) -> bool:
        """Inside :meth:`deferred_checks`."""
        return bool(self._deferred)

    @property
    def count_bound(self) -> int | None:
        """An upper bound on the largest per-example count in the ledger, known on the host
        without reading it (None: unknown, e.g. after :meth:`load_counts`)."""
        return self._hi

    def queries_of(self, idx: Tensor) -> Tensor:
        if idx.device.type != "cpu":
            idx = idx.cpu()
        if idx.dtype != torch.int64:
            self._grow(int(idx.max()) + 1 if idx.numel() else 0)
            return self._counts[idx]
        # Ids inside the ledger (the usual case): index_select refuses any other id itself,
        # so no reduction and read decides first.
        if idx.numel():
            try:
                return self._counts.index_select(0, idx)
            except (IndexError, RuntimeError):
                pass
        # Else the row count (and whether index_select may read it: no negative ids) is
        # remembered, keyed on the tensor and its in-place version.
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
        # Resetting only lowers counts: the known maximum stays an upper bound.
        if mask is None:
            self._counts.zero_()
            self._hi = 0
        else:
            self._counts[mask.cpu()[: len(self._counts)]] = 0

    def load_counts(self, counts: Tensor) -> None:
        """Restore a ledger saved from :attr:`queries` (resuming a run)."""
        self._counts = counts.detach().to("cpu", torch.int64).clone()
        self._hi = None

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
        """Score inputs ``x`` ``(M, *shape)``; input ``i`` is charged to example ``owner[i]``.

        Host reads: one before scoring (the input check, joined by the budget check when
        the ledger's known maximum cannot rule an overrun out) and one after (the score
        check). Inside :meth:`deferred_checks` both checks are read after scoring, with the
        caller's own flags, by :meth:`settle`; the budget check stays before scoring.
        """
        self._validate_kind(x)
        m = x.shape[0]
        if owner is None:
            owner = torch.arange(m)
        if owner.dim() != 1:
            owner = owner.reshape(-1)
        if owner.numel() != m:
            raise InvalidInputError(f"owner has {owner.numel()} entries for {m} inputs")
        if self._pending:  # an earlier call's checks pass before another call is made
            self.settle()
        if m == 0:
            return self._empty_output(x)
        owner_cpu, add, add_max = self._tally(owner)
        self._grow(add.shape[0])
        # A call too big for one model batch is checked at once, chunk by chunk.
        now = not self._deferred or m > self.max_batch
        reads: list[Tensor] = [self._input_stats(x)] if now else []
        after: Tensor | None = None
        if self.budget is not None and (
            self._hi is None or add_max is None or self._hi + add_max > self.budget
        ):
            after = self._counts.clone()
            after[: add.shape[0]] += add
            reads.append(after.max().to(torch.float64).view(1))
        hi_after = None if self._hi is None or add_max is None else self._hi + add_max
        if reads:
            values = (torch.cat(reads) if len(reads) > 1 else reads[0]).tolist()
            if after is not None and self.budget is not None:
                hi_after = int(values.pop())
                if hi_after > self.budget:  # then find who (a loaded ledger may be over)
                    add_all = self._pad(add)
                    ids = ((after > self.budget) & (add_all > 0)).nonzero().flatten()
                    if ids.numel():
                        raise QueryBudgetExceeded(ids.tolist(), self.budget, after[ids].tolist())
            if values:
                self._raise_bad_inputs(*values)
        if m <= self.max_batch:
            with torch.no_grad():
                raw = self._forward(x)
            self._check_shape(raw, m)
            if self._deferred:
                self._pending.append((self._call_stats(x, raw), raw, add))
            else:
                self._check_scores(raw, m)
            # Charged only once the batch is scored: a failing model does not eat budget.
            if after is not None and after.shape == self._counts.shape:
                self._counts = after  # the same sums; nothing else holds the ledger tensor
            else:
                self._counts[: add.shape[0]] += add
            self._hi = hi_after
            # A copy for raw outputs, as the chunked path's cat makes: callers own the result.
            return self._convert(raw) if self.output in ("probs", "labels") else raw.clone()
        outs = []
        with torch.no_grad():
            for start in range(0, m, self.max_batch):
                chunk = x[start : start + self.max_batch]
                raw = self._forward(chunk)
                self._check_shape(raw, chunk.shape[0])
                self._check_scores(raw, chunk.shape[0])
                # Charged only once the chunk is scored: a failing model does not eat budget.
                self._counts.index_add_(
                    0,
                    owner_cpu[start : start + self.max_batch],
                    torch.ones(chunk.shape[0], dtype=torch.int64),
                )
                outs.append(raw)
        self._hi = hi_after
        raw = torch.cat(outs)
        if self._deferred:  # checked already; listed so that pending calls stay in order
            self._pending.append((self._call_stats(x, raw), raw, add))
        return self._convert(raw)

    # ------------------------------------------------------------- deferred checks
    @contextlib.contextmanager
    def deferred_checks(self) -> Iterator[BlackBox]:
        """Within the block, the input and score checks of a call are read after scoring,
        together with the caller's flags, by :meth:`settle` (one host read per step of an
        attack loop instead of two per call). What stays: the budget is checked before
        scoring; a call's checks pass before the next call is made; a failing check raises
        the same error as outside the block and the calls it covers are not charged. What
        differs: the model may see an input the check then rejects, and the caller holds
        unchecked scores until it settles (the block's end settles too)."""
        self._deferred += 1
        try:
            yield self
        finally:
            self._deferred -= 1
            if not self._deferred and self._pending:
                if sys.exc_info()[1] is None:
                    self.settle()
                else:  # already failing: the checks still run, a failure among them
                    with contextlib.suppress(InvalidInputError, InvalidScoresError):
                        self.settle()  # uncharges its calls; the first error propagates

    def settle(self, extra: Tensor | None = None) -> list[float]:
        """Read the pending checks and ``extra`` (any tensor; flattened) in one host read;
        raise if a check fails (its calls uncharged), else return ``extra``'s values."""
        pending, self._pending = self._pending, []
        parts = [stats for stats, _, _ in pending]
        if extra is not None:
            parts.append(extra.detach().flatten())
        if not parts:
            return []
        values = (torch.cat(parts) if len(parts) > 1 else parts[0]).tolist()
        for i, (_, raw, _) in enumerate(pending):
            x_min, x_max, s_sum = values[3 * i : 3 * i + 3]
            try:
                self._raise_bad_inputs(x_min, x_max)
                if not math.isfinite(s_sum):  # or a sum overflowing: then look row by row
                    self._check_scores(raw, raw.shape[0])
            except (InvalidInputError, InvalidScoresError) as exc:
                # As if checked at once: this call raised, so it and the calls after it
                # (which would never have been made) are not charged.
                setattr(exc, "failed_call", i)  # noqa: B010  (an attribute of this raise only)
                self._uncharge(pending[i:])
                raise
        return values[3 * len(pending) :]

    def _uncharge(self, pending: list[tuple[Tensor, Tensor, Tensor]]) -> None:
        for _, _, add in pending:
            self._counts[: add.shape[0]] -= add

    # --------------------------------------------------- checks and the ledger's tally
    def _tally(self, owner: Tensor) -> tuple[Tensor, Tensor, int | None]:
        """``(owner on the CPU as int64, per-example counts of this call, their maximum or
        None when unknown)``. The counts of an id tensor seen before (the same tensor,
        unmodified: the attack loop's ids step after step) are remembered, and from its
        second call on so is their maximum, so the budget check can usually be decided on
        the host."""
        memos = self._tally_memo
        for i, memo in enumerate(memos):
            if memo[0] is owner and memo[1] == owner._version:
                if memo[4] is None:
                    memo = memos[i] = (*memo[:4], int(memo[3].max()))
                return memo[2], memo[3], memo[4]
        owner_cpu = owner.to("cpu", torch.int64)
        # A bincount, cheaper than unique at these sizes. Its length is max(highest id + 1,
        # ledger length), so it also says how far the ledger must grow, and it refuses
        # negative ids itself: no separate min/max pass and read.
        try:
            add = torch.bincount(owner_cpu, minlength=self._counts.shape[0])
        except RuntimeError:
            if bool((owner_cpu < 0).any()):
                raise InvalidInputError("example ids in owner must be >= 0") from None
            raise
        # A few owners take turns (a step's probe grid, then its iterate check).
        self._tally_memo = [(owner, owner._version, owner_cpu, add, None), *memos[:3]]
        return owner_cpu, add, None

    def _pad(self, add: Tensor) -> Tensor:
        if add.shape[0] == self._counts.shape[0]:
            return add
        return torch.cat([add, add.new_zeros(self._counts.shape[0] - add.shape[0])])

    def _forward(self, x: Tensor) -> Tensor:
        chunk = x.to(self.device)
        if self.dtype is not None:
            chunk = chunk.to(self.dtype)
        raw = self._model(chunk)
        return raw if isinstance(raw, Tensor) else torch.as_tensor(raw)

    def _validate_kind(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise InvalidInputError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise InvalidInputError(f"inputs must be floating point, got {x.dtype}")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise InvalidInputError(
                f"inputs have per-example shape {tuple(x.shape[1:])}, the model expects "
                f"{self.input_shape}"
            )

    @staticmethod
    def _input_stats(x: Tensor) -> Tensor:
        """``[min, max]`` of the inputs: min and max propagate NaN, and any inf is one of
        them, so both are finite exactly when every input is."""
        return torch.stack(torch.aminmax(x))

    @staticmethod
    def _call_stats(x: Tensor, raw: Tensor) -> Tensor:
        """``[input min, input max, score sum]``: the sum is finite when every score is
        (or it overflowed, which the exact check then clears)."""
        x_min, x_max = torch.aminmax(x)
        return torch.stack([x_min, x_max, raw.sum()])

    def _raise_bad_inputs(self, x_min: float, x_max: float) -> None:
        if not (math.isfinite(x_min) and math.isfinite(x_max)):
            raise InvalidInputError("inputs contain NaN or inf")
        if self.bounds is not None:
            lo, hi = self.bounds
            tol = 1e-6 * (hi - lo)
            if x_min < lo - tol or x_max > hi + tol:
                raise InvalidInputError(
                    f"inputs must lie in [{lo}, {hi}], got range [{x_min:.4g}, {x_max:.4g}]"
                )

    def _check_shape(self, raw: Tensor, m: int) -> None:
        if raw.shape[:1] != (m,):
            raise InvalidScoresError(
                f"model returned shape {tuple(raw.shape)} for a batch of {m} inputs"
            )
        if self.output in ("logits", "probs", "labels") and raw.dim() != 2:
            raise InvalidScoresError(
                f"a classifier must return (batch, classes) scores, got {tuple(raw.shape)}"
            )

    def _check_scores(self, raw: Tensor, m: int) -> None:
        # One sum is finite when every score is; only then (or when it overflowed) are the
        # rows looked at one by one.
        if raw.is_floating_point() and raw.numel() and not math.isfinite(float(raw.sum())):
            bad = (~torch.isfinite(raw.reshape(m, -1))).any(dim=1).nonzero().flatten()
            if bad.numel():
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
