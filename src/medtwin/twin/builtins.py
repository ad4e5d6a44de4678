"""The twin components shipped with medtwin: vitals (always), glucose and drug (when the record calls for them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from medtwin.monitoring import DEFAULT_FRESHNESS, AlertRules
from medtwin.twin.component import Component, ComponentSpec, Consumes
from medtwin.twin.drug_component import DRUG_SPEC
from medtwin.twin.glucose_component import GLUCOSE_SPEC
from medtwin.twin.patient import VitalsComponent

__all__ = ["VITALS_SPEC", "builtin_specs"]


def _vitals(patient_id: str, settings: Mapping[str, Any]) -> Component:
    component = VitalsComponent(
        patient_id,
        freshness=settings.get("freshness", DEFAULT_FRESHNESS),
        rules=settings.get("rules", AlertRules()),
    )
    return cast(Component, component)


VITALS_SPEC = ComponentSpec(
    name="vitals",
    consumes=(Consumes("Observation", description="vital signs; other observations are ignored"),),
    factory=_vitals,
    summary="NEWS2, qSOFA, MEWS, trends and de-duplicated alerts from vital signs (part of every twin)",
)


def builtin_specs() -> list[ComponentSpec]:
    """vitals, glucose, drug."""
    return [VITALS_SPEC, GLUCOSE_SPEC, DRUG_SPEC]
