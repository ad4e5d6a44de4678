"""The one entry point of the engine: ``simulate(model, params, schedule, times, solver=...)``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray, Model, Params
from medtwin.sim.schedule import Bolus, Infusion, Meal, PiecewiseConstant, Schedule, _per_member
from medtwin.sim.solvers import RK4, ExactLinear, Solver
from medtwin.sim.trajectory import Trajectory

__all__ = ["simulate"]


def simulate(
    model: Model,
    params: Params | Mapping[str, ArrayLike],
    schedule: Schedule | None,
    times: ArrayLike,
    *,
    x0: ArrayLike,
    solver: Solver | None = None,
) -> Trajectory:
    """Integrate *model* for every batch member and return the states at *times*.

    Parameters
    ----------
    model
        The model (declares states, parameters and inputs).
    params
        :class:`Params` or a mapping of scalars / per-member vectors.
    schedule
        Inputs and boluses; integration stops at each of its breakpoints. A bolus at the first output
        time is applied to the initial state (the first row of the result includes it).
    times
        Strictly increasing output times; the first is the start time.
    x0
        Initial state ``(n_states,)`` (same for every member) or ``(batch, n_states)``.
    solver
        A :class:`Solver`; default ``RK4(dt=1.0)``.
    """
    solver = solver if solver is not None else RK4(dt=1.0)
    schedule = schedule if schedule is not None else Schedule()
    p = params if isinstance(params, Params) else model.make_params(params)
    t_out = np.asarray(times, dtype=np.float64)
    if t_out.ndim != 1 or t_out.size == 0 or np.any(np.diff(t_out) <= 0):
        raise ValidationError("simulate: times must be a non-empty, strictly increasing 1-D array")
    n_s = len(model.state_names)
    x_init = np.asarray(x0, dtype=np.float64)
    if x_init.shape == (n_s,):
        x = np.tile(x_init, (p.batch, 1))
    elif x_init.shape == (p.batch, n_s):
        x = x_init.copy()
    else:
        raise ValidationError(f"simulate: x0 must be ({n_s},) or ({p.batch}, {n_s}), got {x_init.shape}")
    batch = p.batch
    early = [ev.time for ev in schedule.events if isinstance(ev, Bolus) and ev.time < t_out[0]]
    if early:
        raise ValidationError(f"simulate: bolus at t={min(early)} is before the start time {t_out[0]}")
    if isinstance(solver, ExactLinear) and solver.method == "modal":
        out_modal = _simulate_modal(model, p, schedule, t_out, x)
        return Trajectory(
            times=t_out,
            states=out_modal,
            state_names=model.state_names,
            outputs=model.outputs(out_modal, p),
            time_unit=model.time_unit,
        )
    t0, t_end = float(t_out[0]), float(t_out[-1])
    bps = schedule.breakpoints()
    grid = np.unique(np.concatenate([t_out, bps[(bps > t0) & (bps < t_end)]]))
    out = np.empty((t_out.size, batch, n_s))
    evals0 = solver.rhs_evaluations
    k_out = 0
    for i, t in enumerate(grid):
        jump = schedule.jumps(model, float(t), batch)
        if jump is not None:
            x = x + jump
        if k_out < t_out.size and t == t_out[k_out]:
            out[k_out] = x
            k_out += 1
        if i + 1 < grid.size:
            t_next = float(grid[i + 1])
            u = schedule.inputs(model, float(t), batch)
            x = solver.advance(model, float(t), t_next, x, p, u)
    outputs = model.outputs(out, p)
    return Trajectory(
        times=t_out,
        states=out,
        state_names=model.state_names,
        outputs=outputs,
        time_unit=model.time_unit,
        rhs_evaluations=solver.rhs_evaluations - evals0,
    )


def _simulate_modal(model: Model, p: Params, schedule: Schedule, t_out: FloatArray, x0: FloatArray) -> FloatArray:
    """All states at *t_out* by modal superposition (:mod:`medtwin.sim.linear`), shape (T, batch, S)."""
    from medtwin.sim import linear  # the dosing engine's exact solutions; imported only when asked for

    system = model.linear_system(p)
    if system is None:
        raise ValidationError(f"ExactLinear: {type(model).__name__} does not declare a linear system")
    a, b = system
    batch, n_s = x0.shape
    feeds: list[int] = []
    for i in range(b.shape[2]):
        col = b[:, :, i]
        target = int(np.argmax(np.abs(col[0])))
        unit = np.zeros(n_s)
        unit[target] = 1.0
        if not np.allclose(col, unit):
            raise ValidationError(
                f"ExactLinear(method='modal'): input {model.input_names[i]!r} must feed one state with coefficient 1"
            )
        feeds.append(target)
    if np.any(x0 < 0):
        raise ValidationError("ExactLinear(method='modal'): the initial state must be >= 0")
    t0 = float(t_out[0])
    times: list[float] = []
    amounts: list[FloatArray] = []
    durations: list[float] = []
    compartments: list[int] = []

    def add(time: float, amount: FloatArray, duration: float, compartment: int) -> None:
        times.append(time)
        amounts.append(amount)
        durations.append(duration)
        compartments.append(compartment)

    for s in range(n_s):
        if np.any(x0[:, s] != 0):
            add(t0, x0[:, s], 0.0, s)
    t_end = float(t_out[-1])
    for ev in schedule.events:
        if isinstance(ev, Meal):
            ev = ev.as_infusion()
        if isinstance(ev, Bolus):
            add(ev.time, _per_member(ev.amount, batch, ev.member, "Bolus"), 0.0, model.state_index(ev.state))
        elif isinstance(ev, Infusion):
            rate = _per_member(ev.rate, batch, ev.member, "Infusion rate")
            add(ev.start, rate * (ev.end - ev.start), ev.end - ev.start, feeds[model.input_index(ev.input)])
        elif isinstance(ev, PiecewiseConstant):
            knots = [*np.asarray(ev.times, dtype=np.float64).tolist(), max(t_end, float(ev.times[-1]))]
            values = np.asarray(ev.values, dtype=np.float64)
            for k in range(len(knots) - 1):
                span = knots[k + 1] - knots[k]
                if span > 0:
                    rate = _per_member(values[k], batch, None, "PiecewiseConstant")
                    add(knots[k], rate * span, span, feeds[model.input_index(ev.input)])
    if any(t < t0 for t in times):
        raise ValidationError("ExactLinear(method='modal'): inputs before the first output time are not supported")
    out = np.zeros((t_out.size, batch, n_s))
    if not times:
        return out
    inputs = linear.InputSchedule.build(
        np.array(times),
        np.stack(amounts, axis=1),
        duration=np.array(durations),
        compartment=np.array(compartments),
    )
    modal = linear.modal_decomposition(a)
    for s in range(n_s):
        weights = np.zeros(n_s)
        weights[s] = 1.0
        out[:, :, s] = linear.output_values(modal, inputs, weights, t_out).T
    return out
