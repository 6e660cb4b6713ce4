"""`zoattack.attack` (issue 22): one call from Python, the same rows as the CLI, results that
save and load, and the names `--attack` takes (folded into the recorded settings unchanged)."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

import zoattack
from zoattack.cli.main import app
from zoattack.data import load_dataset
from zoattack.jobs.attack import AttackSpec
from zoattack.models import create_model
from zoattack.results.rows import CSV_FIELDS, rows_of

runner = CliRunner()
N = 5


@pytest.fixture(scope="module")
def data():
    return load_dataset("fashion-mnist", split="test", limit=N)


@pytest.fixture(scope="module")
def victim(data):
    return create_model("small_cnn", dataset=data, pretrained=True, device="cpu")


def _csv_rows(path):
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    ints = {"index", "label", "initial_prediction", "final_prediction", "success", "queries"}
    ints.add("queries_to_eps")
    out = []
    for r in rows:
        out.append(
            {
                k: int(r[k]) if k in ints else (float(r[k]) if k in ("linf", "l2") else r[k])
                for k in CSV_FIELDS
            }
        )
    return out


CASES = {
    "square": (["--attack", "square"], {"attack": "square"}),
    "zo": (
        ["--attack", "zo", "--optimizer", "zo_signsgd", "--norm", "l2"],
        {"attack": "zo", "optimizer": "zo_signsgd", "norm": "l2"},
    ),
    "hsja": (
        ["--attack", "hsja", "--labels-only", "--norm", "l2"],
        {"attack": "hsja", "norm": "l2"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_api_gives_the_cli_rows_for_the_same_images_settings_and_seed(case, data, victim, tmp_path):
    argv, kwargs = CASES[case]
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        ["run", *argv, "--images", str(N), "--budget", "60", "--seed", "4", "--device", "cpu"]
        + ["--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    result = zoattack.attack(
        victim, data.images, data.labels, budget=60, seed=4, dataset="fashion-mnist", **kwargs
    )
    assert rows_of(result, 0) == _csv_rows(out / "per_image.csv")
    stored = zoattack.load_adversarial(out)
    torch.testing.assert_close(stored.x_adv, result.x_adv.float(), rtol=0, atol=1e-6)
    assert torch.equal(stored.final_prediction, result.final_pred)
    # the method line and counting rule are the run's
    import json

    settings = json.loads((out / "run.json").read_text())["settings"]
    assert result.method == settings["method"]
    assert result.counting_rule == settings["counting_rule"]


def test_result_fields_save_and_load_round_trip(data, victim, tmp_path):
    r = zoattack.attack(victim, data.images, data.labels, attack="square", budget=40, seed=1)
    assert r.x_adv.shape == data.images.shape and r.success.dtype == torch.bool
    assert len(r.stop_reason) == N and r.queries.max() <= 40
    assert r.method.startswith("square") and "one query" in r.counting_rule
    assert r.settings["eps"] == 0.1  # the CLI's default for Linf
    path = r.save(tmp_path / "adv.safetensors")
    back = zoattack.load_adversarial(path)
    assert torch.equal(back.x_adv, r.x_adv.float()) and torch.equal(back.success, r.success)
    assert back.index.tolist() == list(range(N)) and torch.equal(back.label, r.label)
    assert torch.equal(back.queries, r.queries) and torch.equal(back.final_prediction, r.final_pred)
    assert back.metadata["method"] == r.method and back.metadata["norm"] == "linf"


def test_hard_label_on_a_callable_answering_labels(data, victim):
    calls = []

    def labels(x):
        calls.append(len(x))
        return victim(x).argmax(dim=1)

    r = zoattack.attack(labels, data.images, data.labels, attack="rays", budget=50, eps=0.2)
    assert r.distance is not None and r.queries_to_eps is not None
    assert int(r.queries.sum()) == sum(calls)  # every answer was counted
    assert "hard-label" in r.method and "membership question" in r.counting_rule
    assert r.queries.max() <= 50


def test_labels_only_without_an_attack_runs_the_hard_label_default(data, victim):
    r = zoattack.attack(victim, data.images, data.labels, labels_only=True, budget=30)
    assert r.method.startswith("rays")  # auto at Linf


def test_targeted_random_hard_label_needs_the_class_count(data, victim):
    with pytest.raises(zoattack.ZOAttackError, match="num_classes"):
        zoattack.attack(victim, data.images, data.labels, attack="hsja", target="random")
    # targeted starts come from the caller's images: a class none of them has is refused
    with pytest.raises(zoattack.ZOAttackError, match="target class 3.*init_from"):
        zoattack.attack(victim, data.images, data.labels, attack="hsja", target=3)
    r = zoattack.attack(
        victim, data.images, data.labels, attack="sign_opt", norm="l2", target=2, budget=40
    )
    assert r.target is not None and r.target.tolist() == [2] * N
    assert r.stop_reason[1] == "misclassified"  # already of the target class: not attacked


def test_import_zoattack_stays_cheap_and_attack_loads_on_use():
    code = textwrap.dedent(
        """
        import sys, zoattack
        assert "zoattack.jobs.api" not in sys.modules
        assert "zoattack.jobs" not in sys.modules
        assert callable(zoattack.attack) and callable(zoattack.load_adversarial)
        assert "zoattack.jobs.api" in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------- one option names the attack
def test_score_attack_names_resolve_to_the_old_specs_and_keys():
    from zoattack.batch.plan import job_key

    pairs = [
        (AttackSpec(attack="square", norm="l2"), AttackSpec(optimizer="square", norm="l2")),
        (AttackSpec(attack="sign"), AttackSpec(optimizer="sign")),
        (AttackSpec(attack="zo", optimizer="lizo"), AttackSpec(optimizer="lizo")),
        (AttackSpec(attack="zo"), AttackSpec(optimizer="zo_adamm")),
        (AttackSpec(attack="Sign"), AttackSpec(optimizer="sign")),
    ]
    for new, old in pairs:
        a, b = new.resolved(), old.resolved()
        assert a == b and a.attack is None
        assert job_key(a) == job_key(b)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (dict(attack="square", optimizer="lizo"), "name two attacks"),
        (dict(attack="zo", optimizer="square"), "--attack square"),
        (dict(attack="lizo"), "--attack zo --optimizer lizo"),
        (dict(attack="sqare"), "did you mean square"),
    ],
)
def test_conflicting_or_unknown_attack_names_are_one_line(spec, message):
    with pytest.raises((ValueError, zoattack.ZOAttackError), match=message) as info:
        AttackSpec(**spec).resolved()
    assert "\n" not in str(info.value)


def test_cli_attack_option_and_the_optimizer_note(tmp_path):
    res = runner.invoke(
        app, ["run", "--optimizer", "square", "--images", "2", "--budget", "20", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert "note: --optimizer square runs the attack square" in res.stderr
    import json

    assert json.loads(res.stdout)["settings"]["optimizer"] == "square"
    res = runner.invoke(app, ["run", "--attack", "lizo", "--images", "2"])
    assert res.exit_code == 2 and "--attack zo --optimizer lizo" in res.stderr
    assert "Traceback" not in res.output


def test_plan_attack_key_equals_the_optimizer_key(tmp_path):
    from zoattack.batch import load_plan

    head = '[defaults]\nimages = 2\nbudget = 20\ndevice = "cpu"\n'
    (tmp_path / "a.toml").write_text(head + '[[job]]\nattack = "square"\n')
    (tmp_path / "b.toml").write_text(head + '[[job]]\noptimizer = "square"\n')
    a, b = load_plan(tmp_path / "a.toml"), load_plan(tmp_path / "b.toml")
    assert a.jobs[0].key == b.jobs[0].key


def test_default_eps_is_one_spot_for_cli_batch_and_api():
    """The data set's conventional threat model reaches every entry point."""
    from zoattack.jobs.resolve import default_eps

    assert default_eps("linf") == 0.1 and default_eps("l2", "fashion-mnist") == 1.5
    assert default_eps("linf", "cifar10") == pytest.approx(8 / 255)
    assert default_eps("l2", "cifar10") == pytest.approx(0.5)
    assert AttackSpec(dataset="cifar10", optimizer="sign").resolved().eps == pytest.approx(8 / 255)
    assert AttackSpec(dataset="cifar10", attack="rays").resolved().eps == pytest.approx(8 / 255)
    assert AttackSpec(dataset="fashion-mnist").resolved().eps == 0.1
