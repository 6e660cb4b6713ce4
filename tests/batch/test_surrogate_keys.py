"""Plans with a ``surrogates`` key (issue 25): jobs without it keep their keys."""

from __future__ import annotations

import dataclasses

from zoattack.batch.plan import job_key
from zoattack.jobs.attack import AttackSpec


def test_surrogates_key_jobs_apart_and_leave_the_others_alone() -> None:
    plain = AttackSpec(device="cpu", optimizer="zo_adamm").resolved()
    with_surr = AttackSpec(device="cpu", optimizer="zo_adamm", surrogates="resnet20").resolved()
    assert "surrogates" not in plain.as_dict() or plain.surrogates is None
    assert job_key(with_surr) != job_key(plain)
    assert job_key(dataclasses.replace(plain, surrogates=None)) == job_key(plain)


def test_a_plan_entry_names_surrogates_like_the_cli() -> None:
    spec = AttackSpec.from_dict(
        {"attack": "transfer", "surrogates": "resnet20,small_cnn", "norm": "l2"}
    ).resolved()
    assert spec.attack == "transfer"
    assert spec.surrogates == "resnet20,small_cnn"
    assert spec.lr is not None and spec.eps is not None
    assert abs(spec.lr - spec.eps / 4) < 1e-12
