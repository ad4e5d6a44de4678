"""`medtwin trial ...` sub-commands: run a virtual trial, compute its power, analyse a hybrid trial.

SPEC is a trial-spec TOML file (docs/trials.md) or the id of a shipped example (``medtwin trial examples``).
Cohorts run in this process by default (the glucose engine uses every core through its own threads);
``--workers N`` starts a local Dask cluster of N worker processes and ``--scheduler ADDRESS`` uses a real
cluster; the numbers are the same everywhere.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medtwin.errors import MedtwinError
from medtwin.sim.runners import DaskRunner, Runner, SequentialRunner
from medtwin.trials.hybrid import hybrid_analysis, read_outcomes, read_run_in
from medtwin.trials.power import power_study
from medtwin.trials.protocol import TrialSpec
from medtwin.trials.report import power_json, trial_json, write_power_report, write_trial_report
from medtwin.trials.spec import example_specs, load_spec
from medtwin.trials.trial import Comparison, analyse, simulate_trial

__all__ = ["app"]

app = typer.Typer(help="Virtual clinical trials: run, power, hybrid.", no_args_is_help=True, add_completion=False)

SpecArg = Annotated[str, typer.Argument(help="Trial spec TOML file, or the id of a shipped example.")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Directory for the report files.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Local Dask worker processes (0: in this process).")]
SchedulerOpt = Annotated[str | None, typer.Option("--scheduler", help="Address of a Dask scheduler (real cluster).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the JSON report instead of tables.")]


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code=1)


@contextmanager
def _runner(workers: int, scheduler: str | None) -> Iterator[Runner]:
    if scheduler is not None:
        with DaskRunner(scheduler, preload=("medtwin.trials",)) as dask_runner:
            yield dask_runner
    elif workers > 0:
        with DaskRunner(n_workers=workers, preload=("medtwin.trials",)) as dask_runner:
            yield dask_runner
    else:
        yield SequentialRunner()


def _load(spec: str) -> TrialSpec:
    try:
        return load_spec(spec)
    except MedtwinError as exc:
        raise _fail(str(exc)) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


def _table(comparisons: list[Comparison], title: str) -> Table:
    table = Table(title=title)
    for col in ("endpoint", "comparison", "control mean", "treated mean", "method", "effect", "95 % CI", "p"):
        table.add_column(col)
    for c in comparisons:
        for k, e in enumerate(c.estimates):
            table.add_row(
                c.endpoint if k == 0 else "",
                f"{c.arm} vs {c.control}" if k == 0 else "",
                f"{c.control_summary.mean:.3g}" if k == 0 else "",
                f"{c.treated_summary.mean:.3g}" if k == 0 else "",
                e.method,
                f"{e.estimate:+.3g}",
                f"[{e.ci_low:.3g}, {e.ci_high:.3g}]",
                f"{e.p_value:.3g}",
            )
    return table


@app.command("examples")
def examples_cmd() -> None:
    """List the example specs shipped with medtwin (use an id as SPEC)."""
    for name in example_specs():
        spec = load_spec(name)
        typer.echo(f"{name:32s} {spec.kind:8s} {spec.design:10s} {spec.description}")


@app.command("check")
def check_cmd(spec: SpecArg) -> None:
    """Validate SPEC and summarise it (population, arms, endpoints, analysis) without running it."""
    s = _load(spec)
    pop = s.population
    who = f"{pop.size} from {pop.source}" + (f" ({pop.model})" if pop.model else "")
    typer.echo(f"{s.name}: {s.kind} trial, {s.design}, seed {s.seed}; population {who}")
    typer.echo(f"arms: {', '.join(a.name + (' (control)' if i == s.control else '') for i, a in enumerate(s.arms))}")
    typer.echo(f"endpoints: primary {s.primary}; secondary {', '.join(s.secondary) or '-'}")
    a = s.analysis
    typer.echo(f"analysis: {', '.join(a.methods)}; baseline {a.baseline or '-'}; prognostic {a.prognostic}")


@app.command("run")
def run_cmd(
    spec: SpecArg,
    out: OutOpt = None,
    size: Annotated[int | None, typer.Option("--size", help="Screen this many patients instead.")] = None,
    workers: WorkersOpt = 0,
    scheduler: SchedulerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the virtual trial of SPEC: flow, arm summaries, effects by each method; reports with --out."""
    s = _load(spec)
    t0 = time.perf_counter()
    try:
        with _runner(workers, scheduler) as runner:
            data = simulate_trial(s, runner, size=size)
        comparisons = analyse(data)
    except MedtwinError as exc:
        raise _fail(str(exc)) from None
    seconds = time.perf_counter() - t0
    if out is not None:
        paths = write_trial_report(out, data, comparisons, seconds=seconds)
    if as_json:
        _print_json(trial_json(data, comparisons, seconds=seconds))
        return
    console = Console()
    console.print(
        " -> ".join(f"{f.stage} {f.remaining}" + (f" (-{f.removed})" if f.removed else "") for f in data.flow)
    )
    console.print(_table(comparisons, f"{s.name}: effects (treated - control), seed {s.seed}, {seconds:.1f} s"))
    if out is not None:
        console.print("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command("power")
def power_cmd(
    spec: SpecArg,
    out: OutOpt = None,
    replicates: Annotated[int | None, typer.Option("--replicates", help="Replicated trials per size.")] = None,
    workers: WorkersOpt = 0,
    scheduler: SchedulerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Power and sample size of SPEC: simulated trials drawn from a simulated pool, and the formulas."""
    s = _load(spec)
    if replicates is not None:
        if replicates < 10:
            raise _fail("--replicates must be >= 10")
        s = replace(s, power=replace(s.power, replicates=replicates))
    t0 = time.perf_counter()
    try:
        with _runner(workers, scheduler) as runner:
            studies = power_study(s, runner)
    except MedtwinError as exc:
        raise _fail(str(exc)) from None
    seconds = time.perf_counter() - t0
    if out is not None:
        write_power_report(out, s, studies, seconds=seconds)
    if as_json:
        _print_json(power_json(s, studies, seconds=seconds))
        return
    console = Console()
    for st in studies:
        table = Table(
            title=f"{st.endpoint}: {st.arm} vs {st.control}, pool effect {st.effect:+.3g} "
            f"({s.power.replicates} trials per size, {seconds:.1f} s)"
        )
        table.add_column("method")
        for n in s.power.sizes:
            table.add_column(f"n={n}")
        table.add_column(f"n for {s.power.target_power:.0%}")
        for c in st.curves:
            cells = [f"{p:.2f} ({q:.2f})" for p, q in zip(c.simulated, c.analytic, strict=True)]
            table.add_row(c.method, *cells, str(c.sample_size) if c.sample_size else "-")
        console.print(table)
        console.print(
            "cells: simulated power (formula)" + (f"; prognostic rho {st.rho:.2f}" if st.rho == st.rho else "")
        )


@app.command("hybrid")
def hybrid_cmd(
    spec: SpecArg,
    run_in: Annotated[Path, typer.Option("--run-in", help="Participants' run-in CGM readings (CSV).")],
    outcomes: Annotated[Path, typer.Option("--outcomes", help="Participants' arms and outcomes (CSV).")],
    workers: WorkersOpt = 0,
    scheduler: SchedulerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Analyse a real trial with twins built from each participant's run-in CGM (PROCOVA's covariate)."""
    s = _load(spec)
    try:
        baseline, skipped = read_run_in(run_in)
        ids, arm, values = read_outcomes(outcomes, s)
        with _runner(workers, scheduler) as runner:
            result = hybrid_analysis(s, baseline, ids, arm, values, runner=runner, skipped_rows=skipped)
    except MedtwinError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        _print_json(result.to_dict())
        return
    table = Table(title=f"{s.name}: hybrid analysis of {len(ids)} participants (twins from run-in CGM)")
    for col in ("endpoint", "arm", "method", "effect", "95 % CI", "p", "twin rho (control)"):
        table.add_column(col)
    for e, arms in result.estimates.items():
        for name, estimates in arms.items():
            for est in estimates:
                table.add_row(
                    e,
                    name,
                    est.method,
                    f"{est.estimate:+.3g}",
                    f"[{est.ci_low:.3g}, {est.ci_high:.3g}]",
                    f"{est.p_value:.3g}",
                    f"{result.rho_control[e]:.2f}",
                )
    Console().print(table)
    if skipped:
        Console(stderr=True).print(
            f"[yellow]warning:[/yellow] {skipped} run-in row(s) skipped: unreadable time or glucose"
        )
