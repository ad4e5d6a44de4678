"""Model declarations for the batched engine: named states, parameters, inputs and a vectorized RHS.

A model describes *what* evolves (diffrax's "term"); solvers in :mod:`medtwin.sim.solvers` decide *how*.
Every array is shaped ``(batch, ...)``: the state ``x`` is ``(batch, n_states)``, the inputs ``u`` are
``(batch, n_inputs)`` and each parameter is a ``(batch,)`` vector, one value per batch member.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medtwin.errors import ValidationError

__all__ = ["FloatArray", "Model", "Params", "make_params"]

FloatArray = NDArray[np.float64]


class Params(Mapping[str, FloatArray]):
    """Per-batch-member parameter vectors, one contiguous ``(batch,)`` float array per name."""

    __slots__ = ("_batch", "_values")

    def __init__(self, values: Mapping[str, FloatArray], batch: int) -> None:
        self._values = dict(values)
        self._batch = batch

    @property
    def batch(self) -> int:
        """Number of batch members."""
        return self._batch

    def __getitem__(self, name: str) -> FloatArray:
        try:
            return self._values[name]
        except KeyError:
            raise ValidationError(f"parameter {name!r} is not set (have {sorted(self._values)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def take(self, index: NDArray[np.intp] | slice) -> Params:
        """Return the parameters of the batch members selected by *index*."""
        picked = {k: np.ascontiguousarray(v[index]) for k, v in self._values.items()}
        batch = len(next(iter(picked.values()))) if picked else 0
        return Params(picked, batch)


def make_params(names: tuple[str, ...], values: Mapping[str, ArrayLike], batch: int | None = None) -> Params:
    """Build :class:`Params` for *names* from scalars or per-member sequences.

    Parameters
    ----------
    names
        The parameter names the model declares; every one must be present in *values*.
    values
        A scalar (broadcast to every member) or a ``(batch,)`` sequence per name.
    batch
        Batch size; inferred from the longest vector when omitted.
    """
    missing = [n for n in names if n not in values]
    if missing:
        raise ValidationError(f"parameters missing: {missing} (model declares {list(names)})")
    arrays = {n: np.asarray(values[n], dtype=np.float64) for n in names}
    sizes = {a.shape[0] for a in arrays.values() if a.ndim == 1}
    for n, a in arrays.items():
        if a.ndim > 1:
            raise ValidationError(f"parameter {n!r}: expected a scalar or 1-D array, got shape {a.shape}")
    if batch is None:
        batch = max(sizes) if sizes else 1
    bad = {n: a.shape[0] for n, a in arrays.items() if a.ndim == 1 and a.shape[0] not in (1, batch)}
    if bad:
        raise ValidationError(f"parameter lengths {bad} do not match the batch size {batch}")
    out = {n: np.ascontiguousarray(np.broadcast_to(a, (batch,)), dtype=np.float64) for n, a in arrays.items()}
    for n, a in out.items():
        if not np.all(np.isfinite(a)):
            raise ValidationError(f"parameter {n!r} has non-finite values")
    return Params(out, batch)


class Model(ABC):
    """A system of ODEs vectorized over a batch of patients.

    Subclasses declare ``state_names``/``state_units``, ``param_names``/``param_units`` and
    ``input_names``/``input_units`` (all tuples of equal length per kind) and implement :meth:`rhs`.
    Linear models may also implement :meth:`linear_system` so the exact solver can be used.
    """

    state_names: ClassVar[tuple[str, ...]]
    state_units: ClassVar[tuple[str, ...]]
    param_names: ClassVar[tuple[str, ...]]
    param_units: ClassVar[tuple[str, ...]]
    input_names: ClassVar[tuple[str, ...]] = ()
    input_units: ClassVar[tuple[str, ...]] = ()
    time_unit: ClassVar[str] = "min"

    @abstractmethod
    def rhs(self, t: float, x: FloatArray, p: Params, u: FloatArray) -> FloatArray:
        """Return dx/dt, shaped like *x* ``(batch, n_states)``, at time *t* with inputs *u*."""

    def outputs(self, x: FloatArray, p: Params) -> dict[str, FloatArray]:
        """Named derived quantities of the state ``(n_times, batch, n_states)`` (none by default)."""
        return {}

    def linear_system(self, p: Params) -> tuple[FloatArray, FloatArray] | None:
        """For a linear model return ``(A, B)`` with dx/dt = A x + B u, shaped (batch,S,S), (batch,S,I)."""
        return None

    def state_index(self, name: str) -> int:
        """Position of the state *name*."""
        try:
            return self.state_names.index(name)
        except ValueError:
            raise ValidationError(
                f"{type(self).__name__}: unknown state {name!r} (states: {list(self.state_names)})"
            ) from None

    def input_index(self, name: str) -> int:
        """Position of the input *name*."""
        try:
            return self.input_names.index(name)
        except ValueError:
            raise ValidationError(
                f"{type(self).__name__}: unknown input {name!r} (inputs: {list(self.input_names)})"
            ) from None

    def make_params(self, values: Mapping[str, ArrayLike], batch: int | None = None) -> Params:
        """Build :class:`Params` for this model's declared parameter names."""
        return make_params(self.param_names, values, batch)
