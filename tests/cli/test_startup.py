"""The command line starts without torch: `--help`, every `COMMAND --help` and `list` import
only what they show (the timing itself: benchmarks/cli_startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("torch", "torchvision", "numpy", "zoattack.jobs.attack", "zoattack.models")


def _loaded_after(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; return which HEAVY modules it loaded."""
    probe = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_cli_entry_module_does_not_import_torch():
    loaded = _loaded_after("import zoattack.cli.main")
    assert not any(loaded.values()), loaded


def test_import_zoattack_is_lazy_and_names_still_resolve():
    loaded = _loaded_after("import zoattack")
    assert not loaded["torch"]
    loaded = _loaded_after("import zoattack; zoattack.BlackBox; zoattack.create_model")
    assert loaded["torch"]


def test_every_help_and_list_runs_without_torch():
    # Walks the app, so a command added later is held to the same rule.
    loaded = _loaded_after(
        """
        import typer
        from typer.testing import CliRunner
        from zoattack.cli.main import app

        runner = CliRunner()

        def walk(cmd, path):
            yield path
            if hasattr(cmd, "commands"):  # a group (Typer ships its own click)
                for name, sub in cmd.commands.items():
                    yield from walk(sub, [*path, name])

        for path in walk(typer.main.get_command(app), []):
            res = runner.invoke(app, [*path, "--help"])
            assert res.exit_code == 0, (path, res.output)
        for kind in ["", "attacks", "estimators", "optimizers", "functions", "models",
                     "datasets"]:
            res = runner.invoke(app, ["list", *([kind] if kind else [])])
            assert res.exit_code == 0, (kind, res.output)
        for kind in ["optimizers", "models"]:
            res = runner.invoke(app, ["list", kind, "--defaults", "--markdown"])
            assert res.exit_code == 0, (kind, res.output)
        """
    )
    assert not any(loaded.values()), loaded


def test_plugin_models_register_without_the_package_init():
    # `import zoattack` no longer imports remote/defense; the model registry loads them.
    loaded = _loaded_after(
        """
        from zoattack.models import MODELS
        assert "remote" in MODELS and "defended" in MODELS
        """
    )
    assert loaded["torch"]


def test_a_public_name_shadowed_by_its_submodule_stays_the_function():
    # zoattack.minimize is a module and a function; importing the module must not replace
    # the package's public function (as an eager `from ... import` in __init__ once ensured).
    loaded = _loaded_after(
        """
        import zoattack.minimize
        from zoattack import minimize
        assert callable(minimize) and minimize.__module__ == "zoattack.minimize"
        """
    )
    assert loaded["torch"]


def test_plugin_models_list_in_a_fixed_order_whatever_was_imported_first():
    loaded = _loaded_after(
        """
        import zoattack.defense  # registers defended: before remote: is loaded
        from zoattack.models import MODELS
        names = [e.name for e in MODELS]
        assert names[-2:] == ["remote", "defended"], names
        """
    )
    assert loaded["torch"]
