"""The result of a batched simulation: times, named states and outputs, convertible to pandas."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd  # type: ignore[import-untyped,unused-ignore]

from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray

__all__ = ["Trajectory"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Trajectory:
    """States ``(n_times, batch, n_states)`` at *times*, with named outputs ``(n_times, batch)``."""

    times: FloatArray
    states: FloatArray
    state_names: tuple[str, ...]
    outputs: dict[str, FloatArray] = field(default_factory=dict)
    time_unit: str = "min"
    rhs_evaluations: int = 0

    @property
    def batch(self) -> int:
        """Number of batch members."""
        return int(self.states.shape[1])

    def state(self, name: str) -> FloatArray:
        """The trajectory ``(n_times, batch)`` of state *name*."""
        try:
            i = self.state_names.index(name)
        except ValueError:
            raise ValidationError(f"unknown state {name!r} (states: {list(self.state_names)})") from None
        return self.states[:, :, i]

    def output(self, name: str) -> FloatArray:
        """The trajectory ``(n_times, batch)`` of output *name*."""
        if name not in self.outputs:
            raise ValidationError(f"unknown output {name!r} (outputs: {sorted(self.outputs)})")
        return self.outputs[name]

    def to_dataframe(self) -> pd.DataFrame:
        """Long table: one row per (member, time) with a column per state and output."""
        n_t, batch, _ = self.states.shape
        data: dict[str, np.ndarray] = {
            "member": np.repeat(np.arange(batch), n_t),
            f"t_{self.time_unit}": np.tile(self.times, batch),
        }
        for i, name in enumerate(self.state_names):
            data[name] = self.states[:, :, i].T.reshape(-1)
        for name, values in self.outputs.items():
            data[name] = values.T.reshape(-1)
        return pd.DataFrame(data)
