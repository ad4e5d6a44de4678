"""Property: every record survives the store's JSON body encoding exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medtwin.errors import ValidationError
from medtwin.records import Coding, Event, Observation, ObservationComponent, Provenance, Quantity
from medtwin.store import codec

text = st.text(min_size=1, max_size=12)
codings = st.builds(Coding, system=text, code=text, display=st.none() | text)
quantities = st.builds(
    Quantity,
    value=st.floats(allow_nan=False, allow_infinity=False, width=64),
    unit=st.sampled_from(["/min", "mg/dL", "%", "{score}"]),
)
values = st.none() | quantities | codings | text
times = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone(timedelta(hours=-5)))
)


@settings(max_examples=30, deadline=None)
@given(
    code=codings,
    effective=times,
    value=values,
    components=st.lists(st.builds(ObservationComponent, code=codings, value=values), max_size=3),
    alt=st.lists(codings, max_size=2),
    derived=st.lists(text, max_size=2),
    provenance=st.none() | st.builds(Provenance, source_system=text, source_id=text),
)
def test_observation_round_trip(
    code: Coding,
    effective: datetime,
    value: Quantity | Coding | str | None,
    components: list[ObservationComponent],
    alt: list[Coding],
    derived: list[str],
    provenance: Provenance | None,
) -> None:
    obs = Observation(
        patient_id="p",
        code=code,
        effective=effective,
        value=value,
        components=tuple(components),
        alt_codes=tuple(alt),
        derived_from=tuple(derived),
        provenance=provenance,
    )
    back = codec.decode(Observation, codec.encode(obs))
    assert back == obs
    assert back.effective.tzinfo == UTC


@settings(max_examples=25, deadline=None)
@given(
    data=st.dictionaries(
        text,
        st.integers(-(2**63), 2**63 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | text
        | st.lists(st.integers(0, 1000)),
    )
)
def test_event_data_round_trip(data: dict[str, object]) -> None:
    event = Event(kind="derived", code="x", time=datetime(2024, 1, 1, tzinfo=UTC), message="m", data=data)
    back = codec.decode(Event, codec.encode(event))
    assert dict(back.data) == dict(event.data)
    assert back.event_id == event.event_id


def test_infinite_numbers_are_refused_not_nulled() -> None:
    event = Event(
        kind="derived", code="x", time=datetime(2024, 1, 1, tzinfo=UTC), message="m", data={"a": [1.0, float("inf")]}
    )
    with pytest.raises(ValidationError, match="Event: an infinite or NaN number cannot be stored"):
        codec.encode(event)
    obs = Observation(
        patient_id="p",
        code=Coding(system="s", code="c"),
        effective=event.time,
        value=Quantity(value=float("-inf"), unit="1"),
    )
    with pytest.raises(ValidationError, match="Observation: an infinite"):
        codec.encode(obs)


@settings(max_examples=200, deadline=None)
@given(
    code=codings,
    effective=times,
    value=values,
    components=st.lists(st.builds(ObservationComponent, code=codings, value=values), max_size=3),
    alt=st.lists(codings, max_size=2),
    derived=st.lists(text, max_size=2),
    status=st.sampled_from(["final", "preliminary", "entered-in-error"]),
    optional=st.lists(st.none() | text, min_size=3, max_size=3),
    provenance=st.none() | st.builds(Provenance, source_system=text, source_id=text),
)
def test_observation_body_is_orjsons_dataclass_serialisation(
    code: Coding,
    effective: datetime,
    value: Quantity | Coding | str | None,
    components: list[ObservationComponent],
    alt: list[Coding],
    derived: list[str],
    status: str,
    optional: list[str | None],
    provenance: Provenance | None,
) -> None:
    """The observation fast encoder writes exactly the bytes of the generic one (so every stored body reads back)."""
    assert codec._FAST_OBSERVATION, "an Observation field changed: update codec._observation_doc"
    obs = Observation(
        patient_id="p",
        code=code,
        effective=effective,
        value=value,
        components=tuple(components),
        status=status,
        category=optional[0],
        device=optional[1],
        encounter_id=optional[2],
        alt_codes=tuple(alt),
        derived_from=tuple(derived),
        provenance=provenance,
    )
    generic = orjson.dumps(obs, default=codec._default, option=orjson.OPT_PASSTHROUGH_SUBCLASS).decode()
    assert codec.encode(obs) == generic
