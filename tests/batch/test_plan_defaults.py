"""Plan jobs take unset settings from the rules' registry entries, as `zoattack run` does."""

from __future__ import annotations

from zoattack.batch.plan import load_plan
from zoattack.norms import DEFAULT_EPS
from zoattack.optim import OPTIMIZERS


def test_bare_jobs_use_each_norms_default_attack(plan_file):
    plan = load_plan(
        plan_file("""
        [grid]
        norm = ["linf", "l2"]
    """)
    )
    for job in plan.jobs:
        norm = job.spec.norm
        entry = OPTIMIZERS.default_for(norm)
        assert job.spec.optimizer == entry.name
        assert job.spec.eps == DEFAULT_EPS[norm]
        assert job.spec.lr == (entry.tuned(norm).lr or 1.0) * DEFAULT_EPS[norm]


def test_gradient_rules_get_their_tuned_settings_per_norm(plan_file):
    rules = [e.name for e in OPTIMIZERS if not e.flags.get("search")]
    plan = load_plan(
        plan_file(f"""
        [grid]
        norm = ["linf", "l2"]
        optimizer = {rules!r}
        eps = [0.05]
    """)
    )
    assert len(plan.jobs) == 2 * len(rules)
    for job in plan.jobs:
        tuned = OPTIMIZERS.get(str(job.spec.optimizer)).tuned(job.spec.norm)
        assert tuned.lr is not None
        assert job.spec.lr == tuned.lr * 0.05
        assert job.spec.subspace == (tuned.subspace or "full")
        assert job.spec.estimator == tuned.estimator
