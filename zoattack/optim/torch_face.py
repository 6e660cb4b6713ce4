"""The torch.optim face: ``optimizer.step(closure)`` over ordinary parameters.

The closure is the black box: every parameter vector it is evaluated at is one query,
counted by a :class:`~zoattack.BlackBox` (so ``max_queries`` is a hard budget). All
parameters of all groups form one vector x; the estimate is joint, the step uses each
group's own ``lr``. The closure is called under ``torch.no_grad()``: no graph is built, and
it must not cache inputs (parameters are perturbed in place between calls).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from zoattack.blackbox import BlackBox
from zoattack.objective import FunctionObjective
from zoattack.optim.base import ZORule, check_lr
from zoattack.seeding import make_generator

Closure = Callable[[], Any]


class ZOOptimizer(torch.optim.Optimizer):
    """Base of the torch.optim faces; subclasses name their rule and map their arguments.

    Extra keyword arguments shared by every face:
        estimator: registered estimator name (default: the rule's paper pairing).
        seed: seed of the optimizer's own generator (default: OS entropy). torch's global RNG
            is never used, so ``torch.manual_seed`` does not fix these runs; pass ``seed``.
        generator: a ready ``torch.Generator`` on the parameters' device (overrides ``seed``).
        max_queries: closure evaluations allowed over the optimizer's life (None: unlimited).
    """

    rule_name: ClassVar[str] = ""
    # Constructor arguments of the rule that come from the first param group.
    rule_keys: ClassVar[tuple[str, ...]] = ()
    # Rule/estimator argument names -> this face's constructor names, for error messages.
    arg_names: ClassVar[dict[str, str]] = {"num_samples": "n_samples"}

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        estimator: str | None = None,
        estimator_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        max_queries: int | None = None,
    ) -> None:
        check_lr(defaults["lr"])
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_lr(group["lr"])
        self._estimator = estimator
        self._estimator_kwargs = dict(estimator_kwargs or {})
        self._seed = seed
        self._generator = generator
        self._rule: ZORule | None = None
        self._closure: Closure | None = None
        self._blackbox = BlackBox(
            self._score, output="scores", bounds=None, budget=max_queries, max_batch=1 << 30
        )
        self._objective = FunctionObjective(self._blackbox)
        # Check every rule and estimator option now rather than at the first step; the rule
        # that steps is still built lazily.
        try:
            self._build_rule(self._lr_vector(parameters_to_vector(self._params()).detach()))
        except ValueError as exc:  # speak in this constructor's argument names
            msg = str(exc)
            for inner, outer in self.arg_names.items():
                msg = re.sub(rf"\b{inner}\b", outer, msg)
            raise ValueError(msg) from None

    # The README of R-AdaZO calls this before every step; directions are drawn fresh from
    # the optimizer's generator each step, so there is nothing to reset.
    def _reset_seeds(self) -> None:
        """Kept for R-AdaZO-style code; harmless, and never calling it is fine too."""

    @property
    def queries(self) -> int:
        """Closure evaluations so far (the counting rule: one per parameter vector scored)."""
        return self._blackbox.total_queries

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _lr_vector(self, like: Tensor) -> Tensor:
        parts = [
            torch.full((p.numel(),), float(check_lr(g["lr"])), dtype=like.dtype, device=like.device)
            for g in self.param_groups
            for p in g["params"]
        ]
        return torch.cat(parts)

    def _build_rule(self, lr: Tensor) -> ZORule:
        from zoattack.optim.registry import OPTIMIZERS

        group = self.param_groups[0]
        kwargs = {k: group[k] for k in self.rule_keys}
        kwargs.update(self._rule_extra(group))
        return OPTIMIZERS.create(
            self.rule_name,
            lr=lr,
            estimator=self._estimator,
            estimator_kwargs=self._estimator_kwargs or None,
            **kwargs,
        )

    def _rule_extra(self, group: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _score(self, points: Tensor) -> Tensor:
        assert self._closure is not None
        params = self._params()
        saved = parameters_to_vector(params).clone()
        out = torch.empty(points.shape[0], dtype=torch.float64)
        try:
            for i, point in enumerate(points):
                vector_to_parameters(point.to(saved.dtype), params)
                value = self._closure()
                out[i] = float(value.item() if isinstance(value, Tensor) else value)
        finally:
            vector_to_parameters(saved, params)
        return out

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """One ZO step; ``closure()`` must return the loss. Returns the loss at the start."""
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure that returns the loss")
        params = self._params()
        x = parameters_to_vector(params).detach().unsqueeze(0)
        if self._generator is None:
            self._generator = make_generator(self._seed, x.device)
        lr = self._lr_vector(x[0])
        if self._rule is None:
            self._rule = self._build_rule(lr)
        self._rule.lr = lr  # groups' lr may change between steps (schedulers)
        self._closure = closure
        try:
            res = self._rule.step(self._objective, x, generator=self._generator)
            loss = res.loss
            if loss is None:
                loss = self._objective(x, torch.zeros(1, dtype=torch.int64)).double()
        finally:
            self._closure = None
        vector_to_parameters(res.x_next[0].to(x.dtype), params)
        return torch.as_tensor(float(loss[0]))

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["zo"] = {
            "rule": self._rule.state_dict() if self._rule is not None else None,
            "generator": self._generator.get_state() if self._generator is not None else None,
            "queries": self._blackbox.queries,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo", None)
        super().load_state_dict(state_dict)
        if zo is None:
            return
        params = self._params()
        x = parameters_to_vector(params).detach()
        if zo["rule"] is not None:
            self._rule = self._build_rule(self._lr_vector(x))
            self._rule.load_state_dict(zo["rule"])
        if zo["generator"] is not None:
            self._generator = torch.Generator(device=x.device)
            self._generator.set_state(zo["generator"])
        self._blackbox.load_counts(zo["queries"])


def _estimator_args(kwargs: dict[str, Any], n_samples: int, mu: float) -> dict[str, Any]:
    """Fold the face's sample count and radius into the estimator options."""
    est_kwargs = {"num_samples": n_samples, "mu": mu, **kwargs.pop("estimator_kwargs", {})}
    return {**kwargs, "estimator_kwargs": est_kwargs}
