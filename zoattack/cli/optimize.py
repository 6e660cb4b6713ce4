"""`zoattack optimize`: a ZO update rule on a synthetic test function under a query budget."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from zoattack._version import __version__
from zoattack.cli._common import P_OPT, P_PROBLEM, err, guarded, out, resolve_device

# A rule with no tuned step size for the synthetic functions (tuned ones: each rule's registry
# entry, ``optimize_defaults``; `zoattack list optimizers --defaults`).
UNTUNED_LR = 1e-3


@guarded
def optimize_command(
    function: Annotated[
        str,
        typer.Option(
            help="Test function (see `zoattack list functions`).", rich_help_panel=P_PROBLEM
        ),
    ] = "rosenbrock",
    dim: Annotated[int, typer.Option(help="Dimension d.", rich_help_panel=P_PROBLEM)] = 1000,
    seeds: Annotated[
        int,
        typer.Option(
            help="Independent problems (start points), run as one batch.",
            rich_help_panel=P_PROBLEM,
        ),
    ] = 3,
    budget: Annotated[
        int, typer.Option(help="Queries per problem.", rich_help_panel=P_PROBLEM)
    ] = 3000,
    optimizer: Annotated[
        str,
        typer.Option(help="Update rule (see `zoattack list optimizers`).", rich_help_panel=P_OPT),
    ] = "lizo",
    estimator: Annotated[
        str | None,
        typer.Option(
            help="Gradient estimator (default: the rule's paper pairing).",
            rich_help_panel=P_OPT,
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option("--samples", help="Directions K per step.", rich_help_panel=P_OPT),
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Step size (default per rule).", rich_help_panel=P_OPT)
    ] = None,
    mu: Annotated[
        float | None, typer.Option(help="Finite-difference radius.", rich_help_panel=P_OPT)
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the run's generator.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Minimise a synthetic test function with a zeroth-order rule; report loss and queries."""
    # Here, not at the top: `--help` must not import torch (zoattack/cli/_common.py).
    import torch

    from zoattack.blackbox import COUNTING_RULE, BlackBox
    from zoattack.functions import get_function, starts
    from zoattack.minimize import minimize
    from zoattack.objective import FunctionObjective
    from zoattack.optim import OPTIMIZERS, create_optimizer
    from zoattack.registry import Tuned
    from zoattack.seeding import make_generator

    if dim < 2:
        raise ValueError(f"--dim must be >= 2, got {dim}")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if budget < 1:
        raise ValueError(f"--budget must be >= 1, got {budget}")
    dev = resolve_device(device)
    fn = get_function(function)
    entry = OPTIMIZERS.get(optimizer)
    rule_name = entry.name
    if entry.flags.get("search"):
        gradient_rules = [e.name for e in OPTIMIZERS if not e.flags.get("search")]
        raise ValueError(
            f"{rule_name} is a search rule for attacks inside an eps-ball; "
            f"`zoattack optimize` takes {', '.join(gradient_rules)}"
        )
    tuned = entry.optimize_defaults or Tuned()
    rule = create_optimizer(
        rule_name,
        lr=lr if lr is not None else (tuned.lr if tuned.lr is not None else UNTUNED_LR),
        estimator=estimator or tuned.estimator,
        num_samples=samples,
        # mu was tuned with its estimator only (as for attacks).
        mu=mu if mu is not None or (estimator or tuned.estimator) != tuned.estimator else tuned.mu,
    )
    assert rule.estimator is not None  # gradient rules always estimate (search rules refused)
    from zoattack.models.fit import check_memory, optimize_bytes

    directions = rule.estimator.num_samples or dim  # None: one per coordinate
    check_memory(
        f"optimize on {function} with --dim {dim:,}, --seeds {seeds} and {directions:,} "
        "directions per step",
        {"points and directions": optimize_bytes(dim, seeds, directions)},
        hint="pass a smaller --dim, --seeds or --samples",
    )
    gen = make_generator(seed, dev)
    x0 = starts(fn, seeds, dim, gen)
    blackbox = BlackBox(fn, output="scores", bounds=None, budget=budget)
    objective = FunctionObjective(blackbox)
    f0 = fn(x0)
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} queries"),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(
            f"{rule_name}+{rule.estimator.name}", total=budget * seeds, loss=float(f0.mean())
        )

        def show(step: int, queries: torch.Tensor, loss: torch.Tensor) -> None:
            progress.update(task, completed=int(queries.sum()), loss=float(loss.mean()))

        res = minimize(objective, x0, rule, generator=gen, budget=budget, callback=show)
    wall = time.perf_counter() - t0
    final = fn(res.x)  # reported outside the ledger: a bookkeeping check, not a query
    summary = {
        "function": function,
        "dim": dim,
        "seeds": seeds,
        "seed": seed,
        "budget": budget,
        "optimizer": rule_name,
        "estimator": rule.estimator.name,
        "lr": float(rule.lr) if not isinstance(rule.lr, torch.Tensor) else None,
        "num_samples": rule.estimator.num_samples,
        "mu": rule.estimator.mu,
        "initial_loss": f0.tolist(),
        "final_loss": final.tolist(),
        "queries": res.queries.tolist(),
        "steps": res.steps.tolist(),
        "stop_reason": res.stop_reason,
        "wall_seconds": round(wall, 3),
        "queries_per_second": round(int(res.queries.sum()) / max(wall, 1e-9), 1),
        "counting_rule": COUNTING_RULE,
        "zoattack": __version__,
        "torch": torch.__version__,
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    table = Table(
        title=f"{rule_name} + {rule.estimator.name} on {function} (d={dim}), "
        f"budget {budget:,} queries"
    )
    for col in ("problem", "initial loss", "final loss", "queries", "steps", "stop"):
        table.add_column(col, justify="right")
    for i in range(seeds):
        table.add_row(
            str(i),
            f"{float(f0[i]):.4g}",
            f"{float(final[i]):.4g}",
            f"{int(res.queries[i]):,}",
            str(int(res.steps[i])),
            res.stop_reason[i],
        )
    out.print(table)
    out.print(
        f"mean final loss {float(final.mean()):.4g} (from {float(f0.mean()):.4g}); "
        f"{summary['queries_per_second']:,} queries/s; wall {wall:.2f}s"
    )
    out.print(f"[dim]counting rule: {COUNTING_RULE}[/]")
    diverged = res.stop_reason.count("diverged")
    if diverged:
        err.print(
            f"[yellow]warning:[/] {diverged} of {seeds} problems diverged (loss rose above its "
            f"start until the finite differences fell below float resolution); lower --lr "
            f"(this run used {summary['lr']})"
        )
