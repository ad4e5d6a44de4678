"""`medtwin glucose twin ...`: a person's glucose twin from their CGM, insulin and meal records.

    medtwin glucose twin fit DATA --weight-kg 70 --twin me.json --plot fit.png
    medtwin glucose twin replay me.json --bolus-scale 1.3 --plot replay.png
    medtwin glucose twin forecast me.json [NEW_DATA] --plot forecast.png
    medtwin glucose twin advise me.json --carbs 60

DATA is the documented CSV (see medtwin.glucose.therapy_data) or a Nightscout ``entries.json`` with
``--treatments`` (and ``--profile`` for the scheduled basal). The twin file (JSON) holds the data, the posterior and
the filter state; ``forecast`` writes its updated state back.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medtwin.errors import MedtwinError, ValidationError
from medtwin.glucose.advise import CALIBRATED_LOW_PROBABILITY
from medtwin.glucose.data_quality import assess_quality
from medtwin.glucose.identify import ConvergenceError, FitSettings
from medtwin.glucose.personal_twin import BolusSettings, PersonalGlucoseTwin
from medtwin.glucose.therapy import Therapy, parse_basal_profile
from medtwin.glucose.therapy_data import TherapyData, read_nightscout, read_therapy_csv
from medtwin.glucose.twin_model import population_prior
from medtwin.glucose.twin_plots import plot_fit, plot_forecast, plot_replay

__all__ = ["app"]

app = typer.Typer(
    help="A person's glucose twin: identify it from CGM, insulin and meals; replay, forecast, advise.",
    no_args_is_help=True,
    add_completion=False,
)

_TwinFile = Annotated[Path, typer.Argument(help="The twin file written by `fit` (JSON).")]
_Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
_Cr = Annotated[float | None, typer.Option("--cr", help="Carbohydrate ratio (g/U).")]
_Cf = Annotated[float | None, typer.Option("--cf", help="Correction factor (mg/dL per U).")]
_Target = Annotated[float | None, typer.Option("--target", help="Bolus calculator target (mg/dL).")]


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


def _fail(message: str, code: int = 1) -> typer.Exit:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code=code)


def _load(path: Path) -> PersonalGlucoseTwin:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"{path}: cannot read the twin file ({exc.strerror or exc})") from None
    return PersonalGlucoseTwin.restore(blob)


def _save(twin: PersonalGlucoseTwin, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(twin.snapshot())
        tmp.replace(path)  # a crash mid-write leaves the previous twin intact
    except OSError as exc:
        raise ValidationError(f"{path}: cannot write the twin file ({exc.strerror or exc})") from None


def _read_data(
    data: Path, treatments: Path | None, profile: Path | None, timezone: str | None, basal_u_h: float | None,
    weight_kg: float | None,
) -> TherapyData:  # fmt: skip
    if not data.exists():
        raise ValidationError(f"{data}: no such file")
    if data.suffix.lower() == ".json":
        if treatments is None:
            raise ValidationError(f"{data}: a Nightscout entries export needs --treatments (treatments.json)")
        return read_nightscout(data, treatments, profile=profile, basal_u_h=basal_u_h, body_weight_kg=weight_kg)
    return read_therapy_csv(data, timezone=timezone, body_weight_kg=weight_kg, basal_u_h=basal_u_h)


def _bolus_settings(cr: float | None, cf: float | None, target: float | None,
                    base: BolusSettings | None) -> BolusSettings | None:  # fmt: skip
    """Options override the settings kept in the twin; None when neither gives CR and CF."""
    cr = cr if cr is not None else (base.cr_g_per_u if base else None)
    cf = cf if cf is not None else (base.cf_mg_dl_per_u if base else None)
    if cr is None and cf is None:
        return None
    if cr is None or cf is None:
        raise ValidationError("give both --cr and --cf (the bolus calculator needs both)")
    target = target if target is not None else (base.target_mg_dl if base else 110.0)
    return BolusSettings(cr_g_per_u=cr, cf_mg_dl_per_u=cf, target_mg_dl=target)


def _after(minutes: float) -> timedelta:
    return timedelta(minutes=float(minutes))


def _check_output(*paths: Path | None) -> None:
    for p in paths:
        if p is not None and not p.resolve().parent.is_dir():
            raise ValidationError(f"{p}: no such folder {p.resolve().parent}")


@app.command("fit")
def fit_command(
    data: Annotated[
        Path, typer.Argument(help="CSV (time, cgm_mg_dl, bolus_u, basal_u_h, carbs_g) or Nightscout entries.json.")
    ],
    twin: Annotated[Path, typer.Option("--twin", "-o", help="Twin file to write (JSON).")] = Path("twin.json"),
    weight_kg: Annotated[float | None, typer.Option(help="Body weight (kg); required unless --from has it.")] = None,
    treatments: Annotated[Path | None, typer.Option(help="Nightscout treatments.json.")] = None,
    profile: Annotated[Path | None, typer.Option(help="Nightscout profile.json (scheduled basal).")] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA zone of CSV times written without an offset.")] = None,
    basal_u_h: Annotated[float | None, typer.Option(help="Constant basal rate (U/h) when the data have none.")] = None,
    population: Annotated[str, typer.Option(help="Prior population: all, adult, adolescent, child.")] = "all",
    start_from: Annotated[
        Path | None, typer.Option("--from", help="Earlier twin file: its posterior is the prior.")
    ] = None,
    cr: _Cr = None,
    cf: _Cf = None,
    target: _Target = None,
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 1,
    max_steps: Annotated[int, typer.Option(min=250, help="Most sampler steps before giving up (>= 250).")] = 1500,
    allow_unconverged: Annotated[bool, typer.Option(help="Keep a posterior that missed R-hat/ESS (marked).")] = False,
    keep_unexplained: Annotated[bool, typer.Option(help="Fit also the hours after unexplained rises.")] = False,
    plot: Annotated[Path | None, typer.Option(help="PNG of the data with the twin's fit band.")] = None,
    json: _Json = False,
) -> None:
    """Identify a person's twin from DATA (Bayesian, population prior) and write the twin file."""
    try:
        _check_output(twin, plot)
        earlier = _load(start_from) if start_from is not None else None
        weight = weight_kg if weight_kg is not None else (earlier.posterior.body_weight_kg if earlier else None)
        if weight is None:
            raise ValidationError("--weight-kg is required (the model works per kg of body weight)")
        records = _read_data(data, treatments, profile, timezone, basal_u_h, weight)
        settings = FitSettings(seed=seed, max_steps=max_steps, require_convergence=not allow_unconverged,
                               exclude_unexplained_rises=not keep_unexplained)  # fmt: skip
        bolus = _bolus_settings(cr, cf, target, earlier.bolus_settings if earlier else None)
        if earlier is not None:
            result = PersonalGlucoseTwin(earlier.data, earlier.posterior, bolus_settings=bolus).refit(
                records, settings=settings
            )
        else:
            result = PersonalGlucoseTwin.fit(records, population_prior(population), settings=settings,
                                             bolus_settings=bolus)  # fmt: skip
        _save(result, twin)
        recorded = result.replay([Therapy()], draws=100)[0] if plot is not None else None
        if plot is not None and recorded is not None:
            plot_fit(
                plot,
                records,
                recorded,
                assess_quality(records, exclude_unexplained_rises=not keep_unexplained, fit_sensor_limits=True),
            )
    except ConvergenceError as exc:
        raise _fail(f"{exc} (nothing written)", code=2) from None
    except MedtwinError as exc:
        raise _fail(str(exc)) from None
    post = result.posterior
    report = {
        "twin": str(twin), "data": post.data_summary, "parameters": post.summary(),
        "diagnostics": post.diagnostics.to_dict(), "residual_sd_mg_dl": post.residual_sd_mg_dl,
        "residual_tau_min": post.residual_tau_min,
        "skipped": [{"where": s.where, "reason": s.reason} for s in records.skipped], "notes": list(records.notes),
        "plot": str(plot) if plot else None,
    }  # fmt: skip
    if json:
        _print_json(report)
        return
    console = Console()
    d = post.diagnostics
    table = Table(title=f"twin of {escape(records.source)}: {post.data_summary['readings']} readings, "
                  f"{records.duration_min / 1440:.1f} days")  # fmt: skip
    for col in ("parameter", "median", "95 % interval", "R-hat", "ESS"):
        table.add_column(col)
    for name, s in post.summary().items():
        table.add_row(name, f"{s['median']:.4g}", f"{s['lo95']:.4g} - {s['hi95']:.4g}", f"{d.rhat[name]:.3f}",
                      f"{min(d.ess_bulk[name], d.ess_tail[name]):.0f}")  # fmt: skip
    table.caption = (f"{d.walkers} walkers x {d.steps} steps, {d.simulations} simulations, {d.seconds:.1f} s; "
                     f"{'converged' if d.converged else 'NOT converged'}; written to {twin}")  # fmt: skip
    if d.dropped:
        table.caption += (f"; {', '.join(d.dropped)} held at population values (the fit identifying them did not "
                          "converge)")  # fmt: skip
    console.print(table)
    for issue in post.data_summary["quality"]["issues"]:
        console.print(
            f"[yellow]data:[/yellow] {issue['kind']} at {issue['start_min'] / 60:.1f} h: {escape(issue['detail'])}"
        )
    if records.skipped:
        Console(stderr=True).print(f"[yellow]warning:[/yellow] {len(records.skipped)} record(s) not used "
                                   f"(first: {escape(records.skipped[0].where)}: {escape(records.skipped[0].reason)}); "
                                   "--json lists them all")  # fmt: skip


@app.command("replay")
def replay_command(
    twin: _TwinFile,
    bolus_scale: Annotated[float, typer.Option(help="Multiply every recorded bolus.")] = 1.0,
    bolus_shift_min: Annotated[float, typer.Option(help="Move every bolus (minutes; negative = earlier).")] = 0.0,
    basal_scale: Annotated[float, typer.Option(help="Multiply the basal rate.")] = 1.0,
    meal_scale: Annotated[float, typer.Option(help="Multiply every recorded meal's carbohydrate.")] = 1.0,
    basal_profile: Annotated[
        str | None, typer.Option(help="Daily basal profile, e.g. 00:00=0.8,06:00=1.1 (U/h).")
    ] = None,
    controller: Annotated[
        str | None, typer.Option(help="Replace the insulin by a controller: basal-bolus or basal.")
    ] = None,
    cr: _Cr = None,
    cf: _Cf = None,
    target: _Target = None,
    name: Annotated[str | None, typer.Option(help="Name of the alternative therapy in the output.")] = None,
    draws: Annotated[int, typer.Option(min=10, max=2000, help="Posterior draws simulated.")] = 200,
    plot: Annotated[Path | None, typer.Option(help="PNG of both replays.")] = None,
    json: _Json = False,
) -> None:
    """Replay the recorded days under the recorded therapy and one alternative, with consensus metrics."""
    try:
        _check_output(plot)
        t = _load(twin)
        bolus = _bolus_settings(cr, cf, target, t.bolus_settings)
        if controller not in (None, "basal-bolus", "basal"):
            raise ValidationError(f"--controller {controller!r}: use basal-bolus or basal")
        alternative = Therapy(
            name=name or "alternative", bolus_scale=bolus_scale, bolus_shift_min=bolus_shift_min,
            basal_scale=basal_scale, meal_scale=meal_scale,
            basal_profile=parse_basal_profile(basal_profile) if basal_profile else None,
            controller=controller,  # type: ignore[arg-type]
            cr_g_per_u=bolus.cr_g_per_u if bolus else None, cf_mg_dl_per_u=bolus.cf_mg_dl_per_u if bolus else None,
            target_mg_dl=bolus.target_mg_dl if bolus and controller else 140.0,
        )  # fmt: skip
        results = t.replay([Therapy(), alternative], draws=draws)
        if plot is not None:
            plot_replay(plot, t.data, results)
    except MedtwinError as exc:
        raise _fail(str(exc)) from None
    if json:
        _print_json({"twin": str(twin), "replays": [r.to_dict() for r in results], "plot": str(plot) if plot else None})
        return
    table = Table(title=f"replay of {escape(t.data.source)} ({t.data.duration_min / 1440:.1f} days, {draws} draws)")
    table.add_column("metric")
    for r in results:
        table.add_column(escape(r.therapy.name))
    for metric in results[0].metrics:
        table.add_row(metric, *(f"{r.metrics[metric][0]:.1f} [{r.metrics[metric][1]:.1f}-{r.metrics[metric][2]:.1f}]"
                                for r in results))  # fmt: skip
    table.add_row("insulin (U)", *(f"{r.insulin_u[0]:.1f}" for r in results))
    table.caption = "median [95 % interval] over the posterior; Battelino 2019 consensus ranges"
    console = Console()
    console.print(table)
    for r in results:
        if r.zero_pct > 0:
            name = escape(r.therapy.name)
            console.print(f"[bold red]warning:[/] under {name} {r.zero_pct:.0f} % of the twin's draws reach 0 mg/dL: "
                          "severe hypoglycaemia; the model (no counter-regulation) holds them there, so the metrics "
                          "say nothing reliable about the hours after it")  # fmt: skip


@app.command("forecast")
def forecast_command(
    twin: _TwinFile,
    data: Annotated[
        Path | None, typer.Argument(help="New readings and treatments (CSV) since the last update.")
    ] = None,
    horizons: Annotated[str, typer.Option(help="Minutes ahead, comma-separated.")] = "30,60,120",
    timezone: Annotated[str | None, typer.Option(help="IANA zone of CSV times written without an offset.")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of the recent readings and the forecast.")] = None,
    json: _Json = False,
) -> None:
    """Assimilate new readings (if any), forecast, raise low-glucose alerts; the twin file keeps the state."""
    try:
        _check_output(plot)
        try:
            hs = tuple(int(h) for h in horizons.split(","))
        except ValueError:
            raise ValidationError(f"--horizons {horizons!r}: comma-separated whole minutes, e.g. 30,60,120") from None
        t = _load(twin)
        f = t.forecaster
        events = []
        skipped_old = 0
        recent_t = list(t.data.cgm_t_min[t.data.cgm_t_min >= f.t_min - 360.0])
        recent_g = list(t.data.cgm_mg_dl[t.data.cgm_t_min >= f.t_min - 360.0])
        if data is not None:
            if data.suffix.lower() == ".json":
                raise ValidationError(f"{data}: forecast reads new data as the documented CSV")
            new = read_therapy_csv(data, timezone=timezone, basal_u_h=f.basal[-1][1])
            offset = (new.start - f.start).total_seconds() / 60.0
            for tm, u in zip(new.basal_t_min, new.basal_u_h, strict=True):
                f.set_basal(new.start + _after(tm), float(u))
            for tm, u in zip(new.bolus_t_min, new.bolus_u, strict=True):
                f.add_bolus(new.start + _after(tm), float(u))
            for tm, g in zip(new.carbs_t_min, new.carbs_g, strict=True):
                f.add_carbs(new.start + _after(tm), float(g))
            for tm, g, censored in zip(new.cgm_t_min, new.cgm_mg_dl, new.cgm_censored, strict=True):
                if tm + offset <= f.t_min:
                    skipped_old += 1
                    continue
                if censored:  # a Low / High: the glucose at or beyond the sensor's limit
                    events += t.observe_limit(new.start + _after(tm), float(g))
                else:
                    events += t.observe(new.start + _after(tm), float(g))
                recent_t.append(tm + offset)
                recent_g.append(float(g))
        fc = t.forecast(hs)
        _save(t, twin)
        if plot is not None:
            keep = np.asarray(recent_t) >= f.t_min - 360.0
            plot_forecast(plot, np.asarray(recent_t)[keep], np.asarray(recent_g)[keep], fc, f.t_min)
    except MedtwinError as exc:
        raise _fail(str(exc)) from None
    report = {"twin": str(twin), "forecast": fc.to_dict(), "skipped_readings": skipped_old,
              "alerts": [{"time": e.time.isoformat(), "code": e.code, "severity": e.severity, "status": e.status,
                          "message": e.message} for e in events]}  # fmt: skip
    if json:
        _print_json(report)
        return
    table = Table(title=f"forecast from {fc.at:%Y-%m-%d %H:%M} UTC")
    for col in ("minutes", "median (mg/dL)", "95 % interval"):
        table.add_column(col)
    for h, m, lo, hi in zip(fc.horizons_min, fc.median_mg_dl, fc.lo95_mg_dl, fc.hi95_mg_dl, strict=True):
        table.add_row(str(h), f"{m:.0f}", f"{lo:.0f} - {hi:.0f}")
    table.caption = f"P(CGM < 70 mg/dL within 30 min) = {fc.hypo_probability_30min:.0%} (as the predicted-low alert)"
    Console().print(table)
    for e in events:
        Console().print(f"[red]alert[/red] {e.time:%H:%M} {escape(e.message)} ({e.status})")
    if skipped_old:
        Console(stderr=True).print(f"note: {skipped_old} reading(s) at or before the twin's state not used")


@app.command("advise")
def advise_command(
    twin: _TwinFile,
    carbs: Annotated[float, typer.Option(help="Carbohydrate of the meal eaten now (g).")],
    cr: _Cr = None,
    cf: _Cf = None,
    target: _Target = None,
    policy: Annotated[
        str,
        typer.Option(
            help="Advice policy. robust (default): the dose of least predicted risk index within 0.6-1.3 x the "
            "calculator's, moved off the calculator's only where it lowers the risk in every dose-response "
            "scenario (the change acting 0.5, 1 or 2 x as the twin predicts) with P(<70) <= 5 % in the worst; "
            "guard: the calculator's dose, lowered only as far as P(<70) <= 5 % needs; "
            "calibrated: the calculator's dose, lowered only when a low is more likely than not (P(<70) > 50 %) "
            "with the twin's own post-meal error measured on the last recorded day (in-sample here), to the "
            "largest dose where it is not; risk: the dose of least predicted risk with P(<70) <= 5 %, up to twice "
            "the calculator's (in silico it gave more lows than the calculator)."
        ),
    ] = "robust",
    json: _Json = False,
) -> None:
    """A meal bolus chosen on the twin (default: the ``robust`` policy, medtwin.glucose.advise) next to the bolus
    calculator."""
    try:
        t = _load(twin)
        bolus = _bolus_settings(cr, cf, target, t.bolus_settings)
        if bolus is None:
            raise ValidationError("give --cr and --cf (or store them in the twin with `fit --cr --cf`)")
        advice = t.advise(carbs, bolus_settings=bolus, policy=policy)
        _save(t, twin)
    except MedtwinError as exc:
        raise _fail(str(exc)) from None
    if json:
        _print_json({"twin": str(twin), **advice.to_dict()})
        return
    table = Table(title=f"meal bolus for {carbs:g} g at {advice.glucose_mg_dl:.0f} mg/dL (IOB {advice.iob_u:.2f} U)")
    q = CALIBRATED_LOW_PROBABILITY if policy == "calibrated" else 0.05
    for col in ("", "bolus (U)", "P(<70)", "TIR %", "nadir", f"{q:.0%} nadir", "peak", "risk index"):
        table.add_column(col)
    for label, o in (("twin", advice.twin), ("calculator", advice.calculator)):
        table.add_row(label, f"{o.bolus_u:.2f}", f"{o.hypo_probability:.0%}", f"{o.tir_pct:.0f}",
                      f"{o.median_nadir_mg_dl:.0f}", f"{o.low_nadir_mg_dl:.0f}", f"{o.median_peak_mg_dl:.0f}",
                      f"{o.risk_index:.2f}")  # fmt: skip
    table.caption = f"predicted by the twin over {advice.horizon_min // 60} h" + (
        "" if advice.feasible else f"; no dose keeps P(<70) <= {q:.0%}: the safest is shown"
    )
    Console().print(table)
