"""Exact solutions of linear compartment systems with piecewise-constant inputs.

A linear compartment system is ``dx/dt = A x + u(t)`` where ``A`` (n x n) holds the first-order
transfer and elimination rates and ``u`` are the inputs: boluses (jumps in one compartment),
zero-order infusions (a constant rate into one compartment for a duration) and, through an extra
depot compartment, first-order absorption.  Lag times and bioavailability are applied by the caller
to the dose times and amounts (the PK layer does this), so this module sees plain inputs.

Two exact methods are provided:

* **modal superposition** (the fast path): ``A = V diag(lambda) V^-1``; the response to every input
  is a sum of exponentials, evaluated for all inputs, all output times and a whole batch of
  parameter sets in one vectorized numpy expression.  Steady state (infinitely many previous doses
  every ``tau`` hours, NONMEM ``SS=1``) is a geometric series summed in closed form.
* **matrix exponential stepping** (the reference and fallback): the state and its running integral
  are propagated between input breakpoints with one block matrix exponential per segment
  (Van Loan 1978, doi:10.1109/TAC.1978.1101743).  It is used automatically for systems whose
  eigenvectors are ill-conditioned (e.g. ``ka`` equal to an elimination eigenvalue), where the
  modal form is not exact.
* **piecewise systems** (:func:`output_piecewise`): the rates change at given times (time-varying
  covariates); each segment is solved modally and the state is carried across exactly.

Time units are whatever the rates use (hours in medtwin.dosing); amounts are whatever the inputs
use.  The output is a weighted sum of compartment amounts, ``y = c . x`` (for a concentration,
``c`` is ``e_central / V_central``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.linalg import expm

from medtwin.errors import ValidationError

__all__ = [
    "InputSchedule",
    "ModalSystem",
    "modal_decomposition",
    "output_integral",
    "output_integral_expm",
    "output_piecewise",
    "output_values",
    "output_values_expm",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_COND_LIMIT = 1e8
_SERIES_LIMIT = 1e-4
_MIN_DURATION = 1e-9


@dataclass(frozen=True, slots=True)
class InputSchedule:
    """Inputs to a linear system: one row per dose.

    *time* and *amount* have shape ``(D,)`` or ``(B, D)`` (per batch member, e.g. a lag time or a
    bioavailability that differs between parameter sets).  *duration* is 0 for a bolus and the
    infusion duration otherwise (durations below 1e-9 time units are boluses); *compartment* is
    the index of the receiving compartment;
    *ss_interval* is 0 for an ordinary dose and the dosing interval ``tau`` for a steady-state dose
    (infinitely many identical doses at ``time - k tau``, ``k >= 1``, before this one).
    """

    time: FloatArray
    amount: FloatArray
    duration: FloatArray
    compartment: IntArray
    ss_interval: FloatArray

    @classmethod
    def build(
        cls,
        time: npt.ArrayLike,
        amount: npt.ArrayLike,
        *,
        duration: npt.ArrayLike | None = None,
        compartment: npt.ArrayLike | None = None,
        ss_interval: npt.ArrayLike | None = None,
    ) -> InputSchedule:
        """Validate and store an input schedule (see the class docstring for the fields)."""
        t = np.asarray(time, dtype=np.float64)
        a = np.asarray(amount, dtype=np.float64)
        n_dose = t.shape[-1] if t.ndim else 1
        t = np.atleast_1d(t)
        a = np.atleast_1d(a)
        dur = np.zeros(n_dose) if duration is None else np.asarray(duration, dtype=np.float64)
        comp = np.zeros(n_dose, dtype=np.int64) if compartment is None else np.asarray(compartment, dtype=np.int64)
        ss = np.zeros(n_dose) if ss_interval is None else np.asarray(ss_interval, dtype=np.float64)
        dur, comp, ss = np.atleast_1d(dur), np.atleast_1d(comp), np.atleast_1d(ss)
        for name, arr in (("duration", dur), ("compartment", comp), ("ss_interval", ss)):
            if arr.shape != (n_dose,):
                raise ValidationError(
                    f"InputSchedule: {name} has shape {arr.shape}, expected ({n_dose},) (one entry per dose)"
                )
        if a.shape[-1] != n_dose:
            raise ValidationError(f"InputSchedule: amount has {a.shape[-1]} doses but time has {n_dose}")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(a))):
            raise ValidationError("InputSchedule: dose times and amounts must be finite")
        if np.any(a < 0):
            raise ValidationError("InputSchedule: dose amounts must be >= 0")
        if np.any(dur < 0) or np.any(ss < 0):
            raise ValidationError("InputSchedule: durations and ss_interval must be >= 0")
        # an infusion shorter than _MIN_DURATION is a bolus (its rate would overflow)
        dur = np.where(dur < _MIN_DURATION, 0.0, dur)
        if np.any((ss > 0) & (dur > ss)):
            raise ValidationError("InputSchedule: a steady-state infusion must not last longer than its interval")
        if np.any(ss > 0):
            first = np.min(t, axis=-1)
            ss_times = np.where(ss > 0, t, np.inf)
            if np.any(np.min(ss_times, axis=-1) > first):
                raise ValidationError(
                    "InputSchedule: a steady-state dose must be the earliest dose "
                    "(earlier doses would be erased by the steady-state reset)"
                )
        return cls(time=t, amount=a, duration=dur, compartment=comp, ss_interval=ss)


@dataclass(frozen=True, slots=True)
class ModalSystem:
    """Eigen-decomposition ``A = V diag(eigenvalues) W`` of a batch of rate matrices.

    Shapes: *eigenvalues* ``(B, n)``, *right* ``V`` and *left* ``W = V^-1`` ``(B, n, n)``.
    *exact* marks the batch members whose decomposition is well conditioned and real; the others
    must be solved with the matrix-exponential path.
    """

    matrix: FloatArray
    eigenvalues: FloatArray
    right: FloatArray
    left: FloatArray
    exact: npt.NDArray[np.bool_]


def modal_decomposition(matrix: npt.ArrayLike) -> ModalSystem:
    """Eigen-decompose rate matrices of shape ``(n, n)`` or ``(B, n, n)``."""
    A = np.asarray(matrix, dtype=np.float64)
    if A.ndim == 2:
        A = A[None]
    if A.ndim != 3 or A.shape[1] != A.shape[2]:
        raise ValidationError(f"rate matrix must be (n, n) or (B, n, n), got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValidationError("rate matrix contains non-finite values (check the parameters)")
    lam_c, V_c = np.linalg.eig(A)
    real = np.all(np.abs(lam_c.imag) <= 1e-12 * (1.0 + np.abs(lam_c.real)), axis=1)
    lam = lam_c.real
    V = V_c.real
    try:
        W = np.linalg.inv(V)
    except np.linalg.LinAlgError:
        W = np.full_like(V, np.inf)
        for b in range(V.shape[0]):
            try:
                W[b] = np.linalg.inv(V[b])
            except np.linalg.LinAlgError:
                continue
    # Frobenius-norm product bounds the 2-norm condition number from above, without an SVD
    with np.errstate(invalid="ignore", over="ignore"):
        cond = np.linalg.norm(V, axis=(1, 2)) * np.linalg.norm(W, axis=(1, 2))
    exact = real & np.isfinite(cond) & (cond < _COND_LIMIT)
    if not np.all(exact):
        eye = np.eye(A.shape[1])[None]
        V = np.where(exact[:, None, None], V, eye)
        W = np.where(exact[:, None, None], W, eye)
    return ModalSystem(matrix=A, eigenvalues=lam, right=V, left=W, exact=exact)


def _q(lam: FloatArray, x: FloatArray) -> FloatArray:
    """Return ``(exp(lam x) - 1) / lam`` for ``x >= 0`` (``x`` at ``lam = 0``), 0 for ``x < 0``."""
    xp = np.maximum(x, 0.0)
    lx = lam * xp
    small = np.abs(lx) < _SERIES_LIMIT
    if not small.any():
        return np.asarray(np.expm1(lx) / lam, dtype=np.float64)
    lam_safe = np.where(small, 1.0, lam)
    exact = np.expm1(lx) / lam_safe
    series = xp * (1.0 + lx / 2.0 + lx**2 / 6.0)
    return np.where(small, series, exact)


def _e(lam: FloatArray, x: FloatArray) -> FloatArray:
    """Return the integral of :func:`_q`: ``(exp(lam x) - 1 - lam x) / lam^2`` for ``x >= 0``."""
    xp = np.maximum(x, 0.0)
    lx = lam * xp
    small = np.abs(lx) < _SERIES_LIMIT
    if not small.any():
        return np.asarray((np.expm1(lx) - lx) / lam**2, dtype=np.float64)
    lam_safe = np.where(small, 1.0, lam)
    exact = (np.expm1(lx) - lx) / lam_safe**2
    series = xp**2 * (0.5 + lx / 6.0 + lx**2 / 24.0)
    return np.where(small, series, exact)


def _as_batch(arr: FloatArray, batch: int, name: str) -> FloatArray:
    if arr.ndim == 1:
        return np.broadcast_to(arr, (batch, arr.shape[0]))
    if arr.shape[0] not in (1, batch):
        raise ValidationError(f"{name} has batch size {arr.shape[0]}, expected {batch}")
    return np.broadcast_to(arr, (batch, arr.shape[1]))


def _weights(weights: npt.ArrayLike, batch: int, n: int) -> FloatArray:
    c = np.asarray(weights, dtype=np.float64)
    if c.ndim == 1:
        c = c[None]
    if c.shape[-1] != n or c.shape[0] not in (1, batch):
        raise ValidationError(f"output weights have shape {c.shape}, expected ({batch}, {n})")
    return np.broadcast_to(c, (batch, n))


def _modal_terms(
    system: ModalSystem,
    inputs: InputSchedule,
    weights: FloatArray,
    times: FloatArray,
    cumulative: bool,
) -> FloatArray:
    """Evaluate the output (or its integral from the first input) at *times*, shape ``(B, T)``."""
    lam = system.eigenvalues
    B = lam.shape[0]
    t0 = _as_batch(inputs.time, B, "dose time")
    amt = _as_batch(inputs.amount, B, "dose amount")
    # modal output coefficients: y = sum_i (c . V[:, i]) W[i, j] g_i, for input compartment j
    cv = np.einsum("bn,bni->bi", weights, system.right)
    coef = cv[:, None, :] * np.transpose(system.left[:, :, inputs.compartment], (0, 2, 1))
    tt = times[None, :] if times.ndim == 1 else _as_batch(times, B, "output times")
    x = tt[:, None, None, :] - t0[:, :, None, None]  # (B, D, 1, T)
    lam4 = lam[:, None, :, None]  # (B, 1, n, 1)
    dur = inputs.duration[None, :, None, None]
    is_inf = dur > 0
    rate = np.where(is_inf, amt[:, :, None, None] / np.where(is_inf, dur, 1.0), 0.0)
    dose = amt[:, :, None, None]
    if cumulative:
        bolus = dose * _q(lam4, x)
        # integral of the infusion response; written without differences of nearly equal terms
        infusion = rate * np.where(x >= dur, _e(lam4, dur) + _q(lam4, dur) * _q(lam4, x - dur), _e(lam4, x))
    else:
        bolus = np.where(x >= 0, dose * np.exp(lam4 * np.maximum(x, 0.0)), 0.0)
        after = np.exp(lam4 * np.maximum(x - dur, 0.0)) * _q(lam4, dur)
        infusion = rate * np.where(x >= dur, after, _q(lam4, x))
    g = np.where(is_inf, infusion, bolus)
    tau = inputs.ss_interval
    if np.any(tau > 0):
        tau4 = tau[None, :, None, None]
        has_ss = tau4 > 0
        tau_s = np.where(has_ss, tau4, 1.0)
        if np.any(has_ss & (lam4 >= 0)):
            raise ValidationError("steady state requested but the system has no elimination (an eigenvalue >= 0)")
        denom = -np.expm1(lam4 * tau_s)  # 1 - exp(lam tau) > 0
        # doses k >= 1 before this one, summed in closed form; y is the time since the previous
        # dose ended (t0 - tau + dur), from where the sum is valid and its integral starts
        y = x + tau_s - dur
        kick = np.where(is_inf, rate * _q(lam4, dur), dose) / denom
        decay = _q(lam4, y) if cumulative else np.where(y >= 0, np.exp(lam4 * np.maximum(y, 0.0)), 0.0)
        past = kick * decay
        g = g + np.where(has_ss, past, 0.0)
    return np.asarray(np.einsum("bdi,bdit->bt", coef, g), dtype=np.float64)


def _check_times(times: npt.ArrayLike) -> FloatArray:
    t = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if t.ndim not in (1, 2) or not np.all(np.isfinite(t)):
        raise ValidationError("output times must be a finite array of shape (T,) or (B, T)")
    return t


def _solve(
    matrix: npt.ArrayLike | ModalSystem,
    inputs: InputSchedule,
    weights: npt.ArrayLike,
    times: FloatArray,
    cumulative: bool,
) -> FloatArray:
    system = matrix if isinstance(matrix, ModalSystem) else modal_decomposition(matrix)
    B, n = system.eigenvalues.shape
    if inputs.compartment.size and (inputs.compartment.min() < 0 or inputs.compartment.max() >= n):
        raise ValidationError(f"input compartment out of range for a {n}-compartment system")
    c = _weights(weights, B, n)
    out = _modal_terms(system, inputs, c, times, cumulative)
    if not np.all(system.exact):
        for b in np.flatnonzero(~system.exact):
            sub = InputSchedule(
                time=_as_batch(inputs.time, B, "dose time")[b],
                amount=_as_batch(inputs.amount, B, "dose amount")[b],
                duration=inputs.duration,
                compartment=inputs.compartment,
                ss_interval=inputs.ss_interval,
            )
            tb = times if times.ndim == 1 else _as_batch(times, B, "output times")[b]
            values, integrals = _expm_path(system.matrix[b], sub, c[b], tb)
            out[b] = integrals if cumulative else values
    return out


def output_values(
    matrix: npt.ArrayLike | ModalSystem,
    inputs: InputSchedule,
    weights: npt.ArrayLike,
    times: npt.ArrayLike,
) -> FloatArray:
    """Output ``y(t) = c . x(t)`` at *times* for a batch of systems, shape ``(B, T)``.

    *times* is ``(T,)`` (shared) or ``(B, T)`` (per batch member).  *matrix* is ``(n, n)``,
    ``(B, n, n)`` or a precomputed :class:`ModalSystem`; *weights* ``c`` is ``(n,)`` or ``(B, n)``.
    Right-continuous: a bolus given at ``t`` is included at ``t``.
    """
    return _solve(matrix, inputs, weights, _check_times(times), cumulative=False)


def output_integral(
    matrix: npt.ArrayLike | ModalSystem,
    inputs: InputSchedule,
    weights: npt.ArrayLike,
    start: npt.ArrayLike,
    end: npt.ArrayLike,
) -> FloatArray:
    """Integral of the output from *start* to *end* (e.g. an AUC), shape ``(B, W)``.

    *start* and *end* are 1-d arrays of window bounds (one window per entry).
    """
    s = _check_times(start)
    e = _check_times(end)
    if s.shape != e.shape:
        raise ValidationError("integral windows: start and end must have the same length")
    w = s.shape[-1]
    both = _solve(matrix, inputs, weights, np.concatenate([s, e], axis=-1), cumulative=True)
    return both[:, w:] - both[:, :w]


def _van_loan(A: FloatArray, b: FloatArray, dt: float) -> tuple[FloatArray, FloatArray]:
    """Propagators over *dt* for ``[x; integral x]`` with constant input *b*."""
    n = A.shape[0]
    M = np.zeros((2 * n + 1, 2 * n + 1))
    M[:n, :n] = A
    M[n : 2 * n, :n] = np.eye(n)
    M[:n, 2 * n] = b
    E = expm(M * dt)
    return E[: 2 * n, : 2 * n], E[: 2 * n, 2 * n]


def _expm_path(A: FloatArray, inputs: InputSchedule, c: FloatArray, times: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Reference solution by stepping between breakpoints: (values, integrals from the start)."""
    n = A.shape[0]
    t0 = np.atleast_1d(inputs.time).astype(np.float64)
    amt = np.atleast_1d(inputs.amount).astype(np.float64)
    dur, comp, ss = inputs.duration, inputs.compartment, inputs.ss_interval
    if t0.size == 0:
        return np.zeros(times.size), np.zeros(times.size)
    z = np.zeros(2 * n)
    ss_doses = np.flatnonzero(ss > 0)
    # steady state: start when the previous (k = 1) dose ended, in the periodic state
    start = float(min([t0.min(), *(t0[d] - ss[d] + dur[d] for d in ss_doses)]))
    for d in ss_doses:
        z[:n] += _steady_state_after_dose(A, float(amt[d]), float(dur[d]), int(comp[d]), ss[d])
    ends = t0 + dur
    points = np.unique(np.concatenate([t0, ends[dur > 0], times[times >= start], [start]]))
    values = np.zeros(times.size)
    integrals = np.zeros(times.size)
    t_prev = start
    for tp in points:
        if tp > t_prev:
            active = (dur > 0) & (t0 <= t_prev) & (ends >= tp)
            b = np.zeros(n)
            np.add.at(b, comp[active], amt[active] / dur[active])
            Phi, gamma = _van_loan(A, b, float(tp - t_prev))
            z = Phi @ z + gamma
            t_prev = float(tp)
        bolus = (dur == 0) & (t0 == tp)
        np.add.at(z, comp[bolus], amt[bolus])
        hit = times == tp
        values[hit] = c @ z[:n]
        integrals[hit] = c @ z[n:]
    return values, integrals


def _steady_state_after_dose(A: FloatArray, amount: float, duration: float, compartment: int, tau: float) -> FloatArray:
    """State at steady state when a dose has just ended: solves ``x = e^{A tau} x + P(dur)``."""
    n = A.shape[0]
    if duration > 0:
        b = np.zeros(n)
        b[compartment] = amount / duration
        x = _van_loan(A, b, duration)[1][:n]
    else:
        x = np.zeros(n)
        x[compartment] = amount
    return np.asarray(np.linalg.solve(np.eye(n) - expm(A * tau), x), dtype=np.float64)


def output_values_expm(
    matrix: npt.ArrayLike, inputs: InputSchedule, weights: npt.ArrayLike, times: npt.ArrayLike
) -> FloatArray:
    """Output at *times* for one ``(n, n)`` system by matrix-exponential stepping (reference)."""
    A = np.asarray(matrix, dtype=np.float64)
    values, _ = _expm_path(A, inputs, np.asarray(weights, dtype=np.float64), _check_times(times))
    return values


def output_integral_expm(
    matrix: npt.ArrayLike,
    inputs: InputSchedule,
    weights: npt.ArrayLike,
    start: npt.ArrayLike,
    end: npt.ArrayLike,
) -> FloatArray:
    """Integral of the output over windows for one system by matrix-exponential stepping."""
    A = np.asarray(matrix, dtype=np.float64)
    s, e = _check_times(start), _check_times(end)
    _, integ = _expm_path(A, inputs, np.asarray(weights, dtype=np.float64), np.concatenate([s, e]))
    return integ[s.size :] - integ[: s.size]


def _clip_inputs(inputs: InputSchedule, lo: float, hi: float, first: bool) -> InputSchedule:
    """The part of *inputs* that enters during ``[lo, hi)`` (infusions cut at the bounds)."""
    t0 = inputs.time
    dur = inputs.duration
    amt = inputs.amount
    is_inf = dur > 0
    rate = np.where(is_inf, amt / np.where(is_inf, dur, 1.0), 0.0)
    start = np.maximum(t0, lo)
    end = np.minimum(t0 + dur, hi)
    keep_inf = is_inf & (end > start)
    keep_bolus = ~is_inf & (t0 >= lo) & (t0 < hi)
    keep = keep_inf | keep_bolus
    if amt.ndim == 2:
        keep_cols = np.flatnonzero(keep)
        new_amt = np.where(keep_inf, rate * (end - start), amt)[:, keep_cols]
    else:
        keep_cols = np.flatnonzero(keep)
        new_amt = np.where(keep_inf, rate * (end - start), amt)[keep_cols]
    ss = inputs.ss_interval[keep_cols] if first else np.zeros(keep_cols.size)
    return InputSchedule(
        time=np.where(keep_inf, start, t0)[keep_cols],
        amount=new_amt,
        duration=np.where(keep_inf, end - start, 0.0)[keep_cols],
        compartment=inputs.compartment[keep_cols],
        ss_interval=ss,
    )


def output_piecewise(
    matrices: list[npt.ArrayLike],
    weights: list[npt.ArrayLike],
    boundaries: npt.ArrayLike,
    inputs: InputSchedule,
    times: npt.ArrayLike,
    *,
    cumulative: bool = False,
) -> FloatArray:
    """Output (or its integral from the first input) of a system whose rates change at *boundaries*.

    Segment ``s`` uses ``matrices[s]`` and ``weights[s]`` on ``[boundaries[s-1], boundaries[s])``
    (the first segment starts with the first input, the last one is open).  The state is carried
    across each boundary exactly (modal solution of each segment), which is how time-varying
    covariates (last observation carried forward) enter a linear PK model.  Dose times must be
    shared by the batch (shape ``(D,)``); steady-state doses must end before the first boundary.
    """
    b = np.atleast_1d(np.asarray(boundaries, dtype=np.float64))
    n_seg = b.size + 1
    if len(matrices) != n_seg or len(weights) != n_seg:
        raise ValidationError(f"output_piecewise: need {n_seg} matrices and weights for {b.size} boundaries")
    if b.size and np.any(np.diff(b) <= 0):
        raise ValidationError("output_piecewise: boundaries must increase")
    if inputs.time.ndim != 1:
        raise ValidationError("output_piecewise: dose times must be shared by the batch (no per-member lag)")
    if b.size and np.any((inputs.ss_interval > 0) & (inputs.time + inputs.duration > b[0])):
        raise ValidationError("output_piecewise: a steady-state dose must end before the first covariate change")
    t = _check_times(times)
    if t.ndim != 1:
        raise ValidationError("output_piecewise: times must be 1-d")
    systems = [modal_decomposition(m) for m in matrices]
    B = max(s.eigenvalues.shape[0] for s in systems)
    n = systems[0].eigenvalues.shape[1]
    if any(not np.all(s.exact) for s in systems):
        raise ValidationError("output_piecewise: a segment has repeated eigenvalues (not diagonalizable)")
    out = np.zeros((B, t.size))
    x0 = np.zeros((B, n))
    integral0 = np.zeros(B)
    lows = np.concatenate([[-np.inf], b])
    highs = np.concatenate([b, [np.inf]])
    for s, system in enumerate(systems):
        lo, hi = lows[s], highs[s]
        lam = np.broadcast_to(system.eigenvalues, (B, n))
        V = np.broadcast_to(system.right, (B, n, n))
        W = np.broadcast_to(system.left, (B, n, n))
        c = _weights(weights[s], B, n)
        seg = _clip_inputs(inputs, lo, hi, first=s == 0)
        z0 = np.einsum("bij,bj->bi", W, x0)  # modal coordinates of the state at lo
        cv = np.einsum("bn,bni->bi", c, V)
        sel = (t >= lo) & (t < hi)
        modal_sys = ModalSystem(system.matrix, lam, V, W, system.exact)
        if sel.any():
            pts = t[sel]
            value = _modal_terms(modal_sys, seg, c, pts, cumulative)
            if s > 0:  # free response of the state carried in at lo (zero in the first segment)
                dt = pts[None, None, :] - lo
                shape = _q(lam[:, :, None], dt) if cumulative else np.exp(lam[:, :, None] * dt)
                value = value + np.einsum("bi,bit->bt", cv * z0, shape)
            out[:, sel] = value + (integral0[:, None] if cumulative else 0.0)
        if s == n_seg - 1:
            break
        x_new = np.zeros((B, n))
        if s > 0:
            span = hi - lo
            x_new += np.einsum("bij,bj->bi", V, np.exp(lam * span) * z0)
            integral0 = integral0 + np.einsum("bi,bi->b", cv * z0, _q(lam, np.full_like(lam, span)))
        for j in range(n):
            e_j = np.zeros((B, n))
            e_j[:, j] = 1.0
            x_new[:, j] += _modal_terms(modal_sys, seg, e_j, np.array([hi]), False)[:, 0]
        integral0 = integral0 + _modal_terms(modal_sys, seg, c, np.array([hi]), True)[:, 0]
        x0 = x_new
    return out
