"""The twin contract for one part of a patient twin, and the registry of parts (built-ins and entry points).

A :class:`Component` keeps one aspect of one patient in sync with the record (vital signs, glucose, a drug regimen)
and offers what it can of the twin contract (docs/architecture.md, "The twin contract")::

    component.observe(records) -> list[Record]     new alerts and derived records (proposals, scores)
    component.forecast(horizon) -> object | None  predict forward (None: nothing to say yet)
    component.what_if(scenario) -> object          simulate an alternative
    component.recommend(goal) -> object | None     a proposal (a dose, a bolus)
    component.snapshot() -> dict / restore(state)  JSON-ready state, and loading it into a fresh component

Each component declares what it consumes (:class:`Consumes`: a record kind and, for observations, the codes), so
the :class:`~medtwin.twin.PatientTwin` adds a component the first time a record it consumes arrives for that
patient and routes each record only to the components that consume it. The :class:`ComponentRegistry` holds the
:class:`ComponentSpec` of every component: the built-ins and those other packages declare as Python entry points
in the group ``medtwin.components`` (an entry point names a :class:`ComponentSpec` or a function returning one).
Components must be deterministic given their inputs and their snapshot: a twin restored after a crash and fed the
same records again gives the same events, with the same ids (the store keeps an event id once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

from medtwin.errors import ValidationError
from medtwin.records import Coding, Observation, Record

__all__ = [
    "ENTRY_POINT_GROUP",
    "Component",
    "ComponentRegistry",
    "ComponentSpec",
    "Consumes",
    "UnsupportedQuestionError",
    "record_kind",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "medtwin.components"


class UnsupportedQuestionError(ValidationError):
    """A component was asked a part of the contract it does not offer (or cannot answer yet), with the reason."""


def record_kind(record: Record) -> str:
    """The kind of *record* as components declare it: its class name (``Observation``, ``MedicationAdministration``)."""
    return type(record).__name__


@dataclass(frozen=True, slots=True)
class Consumes:
    """One kind of record a component consumes: *kind* (a record class name) and, when given, only these *codes*.

    *codes* are ``(system, code)`` pairs matched against an observation's code and its alternative codes; empty
    means every record of the kind. *test* narrows further (e.g. a medication that has a library model).
    """

    kind: str
    codes: frozenset[tuple[str, str]] = frozenset()
    test: Callable[[Record], bool] | None = field(default=None, compare=False)
    description: str = ""

    @classmethod
    def observations(cls, codings: Iterable[Coding], description: str = "") -> Consumes:
        """Observations coded with any of *codings*."""
        return cls("Observation", frozenset((c.system, c.code) for c in codings), description=description)

    def matches(self, record: Record) -> bool:
        """Whether *record* is of this kind (and code, and passes the test)."""
        if type(record).__name__ != self.kind:
            return False
        if self.codes and isinstance(record, Observation):
            code = record.code
            if (code.system, code.code) not in self.codes and not any(
                (a.system, a.code) in self.codes for a in record.alt_codes
            ):
                return False
        return self.test is None or self.test(record)

    def describe(self) -> str:
        """``Observation 99504-3, 2339-0`` or ``MedicationAdministration (drugs with a library model)``."""
        codes = ", ".join(sorted(code for _, code in self.codes))
        text = f"{self.kind} {codes}".strip()
        return f"{text} ({self.description})" if self.description else text


@runtime_checkable
class Component(Protocol):
    """One part of a patient twin (see the module docstring)."""

    name: str

    def observe(self, records: Sequence[Record]) -> list[Record]:
        """Take in *records* of this patient that the component consumes; return new events and derived records."""
        ...

    def forecast(self, horizon: timedelta) -> Any:
        """A forecast *horizon* ahead (None when there is nothing to forecast from yet)."""
        ...

    def what_if(self, scenario: Mapping[str, Any]) -> Any:
        """The outcome of *scenario* beside the current course (:class:`UnsupportedQuestionError` if not offered)."""
        ...

    def recommend(self, goal: Mapping[str, Any] | None = None) -> Any:
        """A recommendation toward *goal* (None: nothing to recommend yet)."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state."""
        ...

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load :meth:`snapshot` state into this (fresh) component."""
        ...


ComponentFactory = Callable[[str, Mapping[str, Any]], Component]


@dataclass(frozen=True, slots=True)
class ComponentSpec:
    """A kind of component: its *name*, what it *consumes*, and a *factory* ``(patient_id, settings) -> Component``.

    *starts_on*: which consumed records start the component in a twin (default: any); records it consumes that
    arrive before are kept for it (a weight before the first dose). *flush_many*: the batched form of the
    components' ``flush()`` over many twins at once (the glucose filter of every patient with a new reading in one
    kernel call); it must give what calling ``flush()`` on each would. *summary*: one line for ``medtwin twin``.
    """

    name: str
    consumes: tuple[Consumes, ...]
    factory: ComponentFactory
    starts_on: Callable[[Record], bool] | None = None
    flush_many: Callable[[Sequence[Any]], list[Record]] | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValidationError(f"ComponentSpec: name {self.name!r} must be letters, digits, '-' or '_'")
        if not self.consumes:
            raise ValidationError(f"ComponentSpec {self.name!r}: declare at least one kind of record it consumes")

    def wants(self, record: Record) -> bool:
        """Whether this component consumes *record*."""
        return any(c.matches(record) for c in self.consumes)

    def starts(self, record: Record) -> bool:
        """Whether *record* (one it consumes) starts this component in a twin that has none yet."""
        return self.starts_on is None or self.starts_on(record)


def _entry_point_specs(group: str) -> list[ComponentSpec]:
    """The specs other packages declare in the entry-point *group* (a broken one is logged and left out)."""
    specs: list[ComponentSpec] = []
    for ep in metadata.entry_points(group=group):
        try:
            loaded = ep.load()
            spec = loaded() if callable(loaded) and not isinstance(loaded, ComponentSpec) else loaded
            if not isinstance(spec, ComponentSpec):
                raise ValidationError(f"it gave a {type(spec).__name__}, not a ComponentSpec")
        except Exception as exc:  # a third-party package must not stop the twins: say which and why
            log.error("twin component entry point %r (%s) cannot be used: %s", ep.name, ep.value, exc)
            continue
        specs.append(spec)
    return specs


class ComponentRegistry:
    """The component specs a runtime composes twins from, by name (a later spec of the same name is refused)."""

    def __init__(self, specs: Iterable[ComponentSpec] = ()) -> None:
        self._specs: dict[str, ComponentSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ComponentSpec) -> None:
        """Add *spec* (a name already registered is a :class:`ValidationError`)."""
        if spec.name in self._specs:
            raise ValidationError(f"twin component {spec.name!r} is registered twice")
        self._specs[spec.name] = spec

    @classmethod
    def default(cls, *, entry_points: bool = True, group: str = ENTRY_POINT_GROUP) -> ComponentRegistry:
        """The built-in components (vitals, glucose, drug) and, with *entry_points*, those of installed packages
        (a third-party spec named like a built-in is logged and left out)."""
        from medtwin.twin.builtins import builtin_specs  # the built-ins import this module

        registry = cls(builtin_specs())
        if entry_points:
            for spec in _entry_point_specs(group):
                try:
                    registry.register(spec)
                except ValidationError as exc:
                    log.error("twin component entry point: %s; left out", exc)
        return registry

    def specs(self) -> list[ComponentSpec]:
        """Every spec, in registration order."""
        return list(self._specs.values())

    def get(self, name: str) -> ComponentSpec:
        """The spec called *name* (an unknown name is a :class:`ValidationError` listing the known ones)."""
        try:
            return self._specs[name]
        except KeyError:
            raise ValidationError(
                f"no twin component {name!r} (registered: {', '.join(self._specs) or 'none'})"
            ) from None

    def names(self) -> list[str]:
        """The registered names."""
        return list(self._specs)

    def wanting(self, record: Record) -> list[ComponentSpec]:
        """The specs that consume *record*."""
        return [s for s in self._specs.values() if s.wants(record)]

    def consumes(self, record: Record) -> bool:
        """Whether any component consumes *record*."""
        return any(s.wants(record) for s in self._specs.values())
