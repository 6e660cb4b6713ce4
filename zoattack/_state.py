"""Per-example state shared by stateful estimators and update rules.

Rows are indexed by *global* example id so an attack may pass any subset of examples
(finished ones drop out) and state follows each example. Grows lazily; resettable by mask.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class PerExampleState:
    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        self.fills: dict[str, float | bool] = {}
        # A rule reads and writes several tensors with the same ``idx`` each step; its row
        # count is remembered (keyed on the tensor and its in-place version) to spare a
        # reduction and a sync per access. The last field says whether ``idx`` is every row
        # 0..need-1 in order (the usual step), which :meth:`set` writes with a plain copy.
        self._need: tuple[Tensor, int, int, bool] | None = None

    @property
    def size(self) -> int:
        return max((len(t) for t in self.tensors.values()), default=0)

    def get(
        self,
        name: str,
        idx: Tensor,
        shape: tuple[int, ...],
        *,
        dtype: torch.dtype,
        device: torch.device,
        fill: float | bool = 0.0,
    ) -> Tensor:
        """Rows ``idx`` of ``name`` (allocated with ``fill`` on first use or growth)."""
        need = self._rows_needed(idx)
        t = self.tensors.get(name)
        if t is None or tuple(t.shape[1:]) != tuple(shape):
            t = torch.full((need, *shape), fill, dtype=dtype, device=device)
            self.fills[name] = fill
        elif t.shape[0] < need:
            pad = torch.full((need - t.shape[0], *shape), fill, dtype=t.dtype, device=t.device)
            t = torch.cat([t, pad])
        self.tensors[name] = t
        ids = idx if idx.device == t.device else idx.to(t.device)
        # index_select: the rows t[ids] gives, without advanced indexing's overhead.
        return t.index_select(0, ids) if ids.dtype == torch.int64 else t[ids]

    def _rows_needed(self, idx: Tensor) -> int:
        memo = self._need
        if memo is not None and memo[0] is idx and memo[1] == idx._version:
            return memo[2]
        need = int(idx.max()) + 1 if idx.numel() else 0
        whole = need == idx.numel() and torch.equal(
            idx, torch.arange(need, dtype=idx.dtype, device=idx.device)
        )
        self._need = (idx, idx._version, need, whole)
        return need

    def set(self, name: str, idx: Tensor, value: Tensor) -> None:
        t = self.tensors[name]
        memo = self._need
        if (
            memo is not None
            and memo[3]
            and memo[0] is idx
            and memo[1] == idx._version
            and t.shape[0] == memo[2]
            and value.shape == t.shape
        ):
            t.copy_(value)  # rows 0..len(t)-1 in order: the same values, without indexing
            return
        t[idx.to(t.device)] = value.to(t.dtype)

    def reset(self, mask: Tensor | None = None) -> None:
        """Reset all rows (``mask=None``), rows where a bool ``mask`` is True, or listed ids."""
        if mask is None:
            self.tensors.clear()
            return
        for name, t in self.tensors.items():
            if mask.dtype == torch.bool:
                m = mask.to(t.device)[: len(t)]
                t[: len(m)][m] = self.fills[name]
            else:
                ids = mask.to(t.device)
                t[ids[ids < len(t)]] = self.fills[name]

    def state_dict(self) -> dict[str, Any]:
        return {
            "tensors": {k: v.clone() for k, v in self.tensors.items()},
            "fills": dict(self.fills),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tensors = {k: v.clone() for k, v in state["tensors"].items()}
        self.fills = dict(state["fills"])
