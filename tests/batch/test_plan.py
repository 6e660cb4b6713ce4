"""Plan files: grid expansion, explicit jobs, defaults, stable keys, and one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from zoattack.batch.plan import job_key, load_plan
from zoattack.jobs.attack import AttackSpec


def test_grid_expands_to_the_cartesian_product_over_defaults(plan_file):
    path = plan_file("""
        [grid]
        optimizer = ["sign", "zo_signsgd", "zo_adamm"]
        eps = [0.05, 0.1]
        seed = 3

        [[job]]
        norm = "l2"
        optimizer = "square"
        chunk-size = 3
    """)
    plan = load_plan(path)
    assert len(plan.jobs) == 3 * 2 + 1
    combos = {(j.spec.optimizer, j.spec.eps) for j in plan.jobs[:6]}
    assert combos == {(o, e) for o in ("sign", "zo_signsgd", "zo_adamm") for e in (0.05, 0.1)}
    assert all(
        j.spec.seed == 3 and j.spec.images == 6 and j.spec.budget == 40 for j in plan.jobs[:6]
    )
    last = plan.jobs[-1]
    assert (last.spec.norm, last.spec.optimizer, last.spec.chunk_size, last.spec.seed) == (
        "l2",
        "square",
        3,
        0,
    )
    assert last.origin.endswith("plan.toml:15")  # the [[job]] header line
    assert [j.position for j in plan.jobs] == list(range(7))
    assert plan.name == "plan" and plan.out is None


def test_specs_are_exactly_what_run_would_resolve(plan_file):
    plan = load_plan(
        plan_file("""
        [grid]
        optimizer = ["zo_signsgd", "lizo"]
    """)
    )
    for job, opt in zip(plan.jobs, ("zo_signsgd", "lizo")):
        expected = AttackSpec.from_dict(
            dict(
                model="small_cnn",
                dataset="fashion-mnist",
                images=6,
                budget=40,
                chunk_size=2,
                device="cpu",
                optimizer=opt,
            )
        ).resolved()
        assert job.spec == expected
        assert job.key == job_key(expected)


def test_several_grids_duplicates_and_relative_paths(plan_file, tmp_path):
    (tmp_path / "data").mkdir()
    path = plan_file("""
        [batch]
        name = "two grids"
        out = "results"

        [[grid]]
        seed = [0, 1]

        [[grid]]
        seed = [1, 2]
        data_dir = "data"
    """)
    plan = load_plan(path)
    # the results folder is relative to the current folder (inputs stay relative to the plan)
    assert plan.name == "two grids" and plan.out == Path("results")
    # seed 1 appears in both grids, but data_dir differs, so it is a different job
    assert len(plan.jobs) == 4 and plan.duplicates == 0
    assert plan.jobs[-1].spec.data_dir == str(tmp_path / "data")
    dup = load_plan(
        plan_file(
            """
        [[grid]]
        seed = [0, 1]
        [[grid]]
        seed = [1, 2]
    """,
            name="dup.toml",
        )
    )
    assert len(dup.jobs) == 3 and dup.duplicates == 1


def test_key_ignores_device_and_max_batch_only():
    spec = AttackSpec(images=6, budget=40).resolved()
    assert job_key(spec) == job_key(dataclasses.replace(spec, device="cuda", max_batch=7))
    assert job_key(spec) != job_key(dataclasses.replace(spec, seed=1))
    assert job_key(spec) != job_key(dataclasses.replace(spec, chunk_size=3))
    assert len(job_key(spec)) == 16


def test_overrides_replace_settings_in_every_job(plan_file):
    plan = load_plan(
        plan_file("""
        [grid]
        seed = [0, 1]
    """),
        overrides={"device": "cuda"},
    )
    assert {j.spec.device for j in plan.jobs} == {"cuda"}


def test_int_for_float_setting_gives_the_same_key(plan_file):
    a = load_plan(plan_file('[[job]]\nnorm = "l2"\neps = 1\n', name="a.toml")).jobs[0]
    b = load_plan(plan_file('[[job]]\nnorm = "l2"\neps = 1.0\n', name="b.toml")).jobs[0]
    assert a.key == b.key and a.spec.eps == 1.0


@pytest.mark.parametrize(
    "body,needle",
    [
        (
            "[grid]\nseed = [0]\nbudgt = 10\n",
            r"plan.toml:11: unknown setting 'budgt' in \[grid\]; "
            "did you mean budget",
        ),
        (
            '[[job]]\noptimizer = "lizzo"\n',
            r"plan.toml:10: job 1: unknown optimizer 'lizzo'; "
            "did you mean lizo",
        ),
        (
            '[[job]]\nmodel = "resnt20"\n',
            r"plan.toml:10: job 1: unknown model 'resnt20'; "
            "did you mean resnet20",
        ),
        ('[[job]]\ndataset = "fashion_mnst"\n', r"plan.toml:10: job 1: unknown dataset"),
        ('[[job]]\nbudget = "many"\n', r"plan.toml:10: budget must be an integer, got str 'many'"),
        ("[[job]]\nimages = 2.5\n", r"plan.toml:10: images must be an integer, got float 2.5"),
        (
            "[[job]]\ntarget = 3\n",
            r"plan.toml:10: target must be a string, got int 3 \(quote it: "
            r'target = "3"\)',
        ),
        (
            "[[job]]\nseed = [1, 2]\n",
            r"seed must be an integer, got list \[1, 2\]; lists expand "
            r"only inside \[grid\]",
        ),
        ("[grid]\nseed = []\n", r"plan.toml:10: seed = \[\] in \[grid\] expands to no jobs"),
        ("[[job]]\nbudget = 1\n", r"plan.toml:9: job 1 \(defaults only\): --budget must be >= 2"),
        ("[grid]\neps = [0.1, 2.0]\n", r"plan.toml:9: job 2 \(eps=2.0\): .*eps"),
        ("[job]\nseed = 1\n", r"plan.toml:9: write explicit jobs as \[\[job\]\] tables"),
        (
            "[grids]\nseed = [1]\n",
            r"plan.toml:9: unknown table or key 'grids'; did you mean "
            r"\[grid\]",
        ),
        ("[batch]\nworkers = 2\n", r"plan.toml:10: unknown key 'workers' in \[batch\]"),
        (
            '[[job]]\nweights = "nope.safetensors"\n',
            r"weights file .*nope.safetensors does not "
            "exist",
        ),
        ('[[job]]\nmodel = "torchvision"\n', r"adapter prefix; write torchvision:NAME"),
        ("", r"the plan has no jobs; add a \[grid\] table or \[\[job\]\] tables"),
        ("[[job]]\nseed = \n", r"plan.toml: not valid TOML: .*line 10"),
    ],
)
def test_bad_plans_fail_with_one_line_naming_file_and_line(plan_file, body, needle):
    with pytest.raises(ValueError, match=needle) as info:
        load_plan(plan_file(body))
    assert "\n" not in str(info.value)


def test_errors_in_defaults_and_missing_plan(plan_file, tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[defaults]\nbudget = 40\noptimiser = "sign"\n[grid]\nseed = [0]\n')
    with pytest.raises(
        ValueError,
        match=r"p.toml:3: unknown setting 'optimiser' in "
        r"\[defaults\]; did you mean optimizer",
    ):
        load_plan(path)
    with pytest.raises(ValueError, match="plan file .*missing.toml does not exist"):
        load_plan(tmp_path / "missing.toml")


def test_device_is_checked_only_when_asked(plan_file):
    import torch

    path = plan_file('[[job]]\ndevice = "cuda"\n')
    assert load_plan(path).jobs[0].spec.device == "cuda"  # a Ray cluster may have GPUs
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            load_plan(path, check_device=True)
