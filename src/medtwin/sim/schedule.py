"""Input schedules for batched simulation: boluses, infusions, meals and piecewise-constant inputs.

Times are in the model's time unit (minutes for the built-in models) from the simulation start. Every event
applies to all batch members or, with ``member=i``, to one; amounts and rates may be per-member vectors.
The solver integrates between consecutive *breakpoints* so that no step straddles an input change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray, Model

__all__ = ["Bolus", "Infusion", "Meal", "PiecewiseConstant", "Schedule", "ScheduleEvent"]


def _per_member(value: ArrayLike, batch: int, member: int | None, what: str) -> FloatArray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        full = np.full(batch, float(arr))
    elif arr.shape == (batch,):
        full = arr.copy()
    else:
        raise ValidationError(f"{what}: expected a scalar or {batch} values, got shape {arr.shape}")
    if member is not None:
        if not 0 <= member < batch:
            raise ValidationError(f"{what}: member {member} outside the batch of {batch}")
        mask = np.zeros(batch, dtype=bool)
        mask[member] = True
        full = np.where(mask, full, 0.0)
    return full


@dataclass(frozen=True, slots=True, kw_only=True)
class Bolus:
    """An instantaneous *amount* added to *state* at *time*."""

    time: float
    state: str
    amount: float | Sequence[float]
    member: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Infusion:
    """A constant *rate* added to *input* on ``[start, end)``."""

    start: float
    end: float
    input: str
    rate: float | Sequence[float]
    member: int | None = None

    def __post_init__(self) -> None:
        if not self.end > self.start:
            raise ValidationError(f"Infusion into {self.input!r}: end {self.end} must be after start {self.start}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Meal:
    """A meal of *amount* eaten at a constant *rate* into *input* from *time* (an infusion of amount/rate)."""

    time: float
    amount: float
    rate: float
    input: str
    member: int | None = None

    def __post_init__(self) -> None:
        if self.amount < 0 or self.rate <= 0:
            raise ValidationError(f"Meal at {self.time}: amount {self.amount} must be >= 0, rate {self.rate} > 0")

    def as_infusion(self) -> Infusion:
        """The equivalent infusion."""
        return Infusion(
            start=self.time,
            end=self.time + max(self.amount / self.rate, 1e-12),
            input=self.input,
            rate=self.rate if self.amount > 0 else 0.0,
            member=self.member,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PiecewiseConstant:
    """*input* equals ``values[k]`` on ``[times[k], times[k+1])``; the last value holds afterwards.

    ``values`` is shaped ``(K,)`` (same for every member) or ``(K, batch)``.
    """

    input: str
    times: Sequence[float]
    values: ArrayLike

    def __post_init__(self) -> None:
        t = np.asarray(self.times, dtype=np.float64)
        if t.ndim != 1 or t.size == 0 or np.any(np.diff(t) <= 0):
            raise ValidationError(f"PiecewiseConstant {self.input!r}: times must be 1-D, strictly increasing")
        if np.asarray(self.values).shape[0] != t.size:
            raise ValidationError(f"PiecewiseConstant {self.input!r}: need one value row per time ({t.size})")


ScheduleEvent = Bolus | Infusion | Meal | PiecewiseConstant


@dataclass(frozen=True, slots=True)
class Schedule:
    """An ordered collection of input events for one batched simulation."""

    events: tuple[ScheduleEvent, ...] = field(default=())

    def __init__(self, events: Sequence[ScheduleEvent] = ()) -> None:
        object.__setattr__(self, "events", tuple(events))

    def breakpoints(self) -> FloatArray:
        """Every time at which an input changes or a bolus is given, sorted and unique."""
        times: list[float] = []
        for ev in self.events:
            if isinstance(ev, Bolus):
                times.append(ev.time)
            elif isinstance(ev, Infusion):
                times += [ev.start, ev.end]
            elif isinstance(ev, Meal):
                inf = ev.as_infusion()
                times += [inf.start, inf.end]
            else:
                times += list(np.asarray(ev.times, dtype=np.float64))
        return np.unique(np.asarray(times, dtype=np.float64))

    def inputs(self, model: Model, t: float, batch: int) -> FloatArray:
        """Input values ``(batch, n_inputs)`` in force at time *t* (intervals are closed on the left)."""
        u = np.zeros((batch, len(model.input_names)))
        for ev in self.events:
            if isinstance(ev, Meal):
                ev = ev.as_infusion()
            if isinstance(ev, Infusion):
                if ev.start <= t < ev.end:
                    u[:, model.input_index(ev.input)] += _per_member(ev.rate, batch, ev.member, "Infusion rate")
            elif isinstance(ev, PiecewiseConstant):
                times = np.asarray(ev.times, dtype=np.float64)
                k = int(np.searchsorted(times, t, side="right")) - 1
                if k >= 0:
                    row = np.asarray(ev.values, dtype=np.float64)[k]
                    u[:, model.input_index(ev.input)] += _per_member(row, batch, None, "PiecewiseConstant")
        return u

    def jumps(self, model: Model, t: float, batch: int) -> FloatArray | None:
        """State increments ``(batch, n_states)`` from boluses given exactly at *t*, or None."""
        dx: FloatArray | None = None
        for ev in self.events:
            if isinstance(ev, Bolus) and ev.time == t:
                if dx is None:
                    dx = np.zeros((batch, len(model.state_names)))
                dx[:, model.state_index(ev.state)] += _per_member(ev.amount, batch, ev.member, "Bolus")
        return dx
