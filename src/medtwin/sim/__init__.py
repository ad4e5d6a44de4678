"""medtwin.sim: the batched simulation engine (floor 0, numbers only, no I/O).

Models declare named states, parameters and inputs and a right-hand side vectorized over a batch of patients;
schedules describe boluses, infusions, meals and piecewise-constant inputs; solvers (RK4, Dormand-Prince 5(4),
exact linear) integrate; :func:`simulate` ties them together and returns a :class:`Trajectory`.
Whole-regimen exact solutions of linear compartment systems live in :mod:`medtwin.sim.linear` (the dosing
engine); ``ExactLinear(method="modal")`` hands a schedule to it, imported only when asked for.
"""

from medtwin.sim.model import FloatArray, Model, Params, make_params
from medtwin.sim.models import MichaelisMentenElimination, TwoCompartmentLinear
from medtwin.sim.schedule import Bolus, Infusion, Meal, PiecewiseConstant, Schedule, ScheduleEvent
from medtwin.sim.simulate import simulate
from medtwin.sim.solvers import RK4, DormandPrince, ExactLinear, IntegrationError, Solver
from medtwin.sim.trajectory import Trajectory

__all__ = [
    "RK4",
    "Bolus",
    "DormandPrince",
    "ExactLinear",
    "FloatArray",
    "Infusion",
    "IntegrationError",
    "Meal",
    "MichaelisMentenElimination",
    "Model",
    "Params",
    "PiecewiseConstant",
    "Schedule",
    "ScheduleEvent",
    "Solver",
    "Trajectory",
    "TwoCompartmentLinear",
    "make_params",
    "simulate",
]
