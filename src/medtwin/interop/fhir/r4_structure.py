"""FHIR R4 (4.0.1) structural validation of parsed JSON: unknown elements, JSON types, cardinality, required elements.

The rules are tables generated from the R4 definitions: fhirclient's R4 models (``fhirclient.models``, generated
from FHIR 4.0.1 StructureDefinitions) name, for every resource, data type and backbone element, each element's
type, whether it repeats, its choice group (``value[x]``) and whether it is required. :func:`generate_tables` reads
them into ``r4_structure.json`` (shipped with medtwin; fhirclient is needed only to generate it, and a test checks
the shipped file is what fhirclient gives). Validating with those tables is a walk over the parsed JSON with dict
lookups, about 10x faster than building fhirclient's model objects for the same check (``bench/fhir_validation.py``,
docs/fhir.md), which is what lets FHIR ingest validate every resource and stay 3x faster than fhir.resources.

Checked: every key is an element of its type (or ``resourceType``, or ``_x`` primitive extensions of a primitive
``x``); JSON types (string, boolean, integer, decimal, object, array; date, dateTime, instant and time formats);
arrays only where the element repeats, never empty; no ``null``; at most one element of a choice group; required
elements present; resources in ``contained`` and ``Bundle.entry.resource`` by their own type. Not checked (as in
fhirclient's models): value-set bindings, invariants (FHIRPath constraints), the formats of ``id``, ``uri`` and
``code``. Errors name the element path (``Observation.effectivePeriod.stop: unknown element``).
"""

from __future__ import annotations

import json
import re
from datetime import date
from functools import cache
from importlib import resources
from typing import Any

__all__ = [
    "PRIMITIVES",
    "ElementSpec",
    "StructureError",
    "generate_tables",
    "is_resource_type",
    "tables",
    "validate_bundle_shell",
    "validate_resource",
]

# element -> (type, repeats, choice group, required); type is a primitive kind (below), "Resource" (any resource,
# by its resourceType) or the name of a complex type or backbone element in the tables
ElementSpec = tuple[str, bool, str, bool]

PRIMITIVES = frozenset({"string", "integer", "decimal", "boolean", "date", "dateTime", "instant", "time"})
_MAX_DEPTH = 64
_MAX_ERRORS = 20

_DATE = re.compile(r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?$")
_DATETIME = re.compile(
    r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01])(T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?"
    r"(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00)))?)?)?$"
)
_INSTANT = re.compile(
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?"
    r"(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00))$"
)
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?$")
_FORMATS = {"date": _DATE, "dateTime": _DATETIME, "instant": _INSTANT, "time": _TIME}


def _well_formed(value: str, kind: str) -> bool:
    """*value* matches the R4 pattern of *kind* and, when it names a day, that day exists (2019-02-30 does not)."""
    if _FORMATS[kind].match(value) is None:
        return False
    if kind == "time" or len(value) < 10:
        return True
    try:
        date(int(value[:4]), int(value[5:7]), int(value[8:10]))
    except ValueError:
        return False
    return True


class StructureError(ValueError):
    """One place where a resource is not valid R4: the element *path* and the *problem*."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


_STRING, _BOOLEAN, _INTEGER, _DECIMAL, _FORMATTED, _RESOURCE, _COMPLEX = range(7)
_CODES = {"string": _STRING, "boolean": _BOOLEAN, "integer": _INTEGER, "decimal": _DECIMAL, "Resource": _RESOURCE}


class _Tables:
    """The loaded tables: the elements of each type, which types are resources, and each type's requirements.

    ``fast`` holds, per type, each element as (kind code, repeats, choice group, type name): what the first pass
    (:func:`_valid`, which only answers yes or no) needs, with the kind already decided.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.elements: dict[str, dict[str, ElementSpec]] = {
            name: {key: (e[0], bool(e[1]), e[2], bool(e[3])) for key, e in spec["elements"].items()}
            for name, spec in data["types"].items()
        }
        self.resources: frozenset[str] = frozenset(data["resources"])
        self.required: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {}
        self.fast: dict[str, dict[str, tuple[int, bool, str, str]]] = {}
        self.required_keys: dict[str, tuple[tuple[str, ...], ...]] = {}
        for name, elements in self.elements.items():
            groups: dict[str, list[str]] = {}
            for key, (_, _, choice, required) in elements.items():
                if required:
                    groups.setdefault(choice or key, []).append(key)
            self.required[name] = tuple((group, tuple(keys)) for group, keys in groups.items())
            self.required_keys[name] = tuple(tuple(keys) for keys in groups.values())
            self.fast[name] = {
                key: (_CODES.get(t, _FORMATTED if t in _FORMATS else _COMPLEX), repeats, choice, t)
                for key, (t, repeats, choice, _) in elements.items()
            }


@cache
def tables() -> _Tables:
    """The R4 tables shipped with medtwin (``r4_structure.json``), loaded once."""
    text = resources.files("medtwin.interop.fhir").joinpath("r4_structure.json").read_text(encoding="utf-8")
    return _Tables(json.loads(text))


def is_resource_type(name: object) -> bool:
    """Whether *name* is an R4 resource type."""
    return isinstance(name, str) and name in tables().resources


_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
_EXPECTED = {"integer": "an integer", "decimal": "a number", "boolean": "true or false"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return names.get(type(value), type(value).__name__)


class _Walk:
    """One validation: the tables, the size limit for strings, the errors found, and the references seen."""

    __slots__ = ("elements", "errors", "max_string", "references", "required", "resources")

    def __init__(self, max_string: int | None) -> None:
        t = tables()
        self.elements, self.required, self.resources = t.elements, t.required, t.resources
        self.max_string = max_string
        self.errors: list[StructureError] = []
        self.references: list[dict[str, Any]] = []

    def fail(self, path: str, problem: str) -> None:
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(StructureError(path, problem))

    def resource(self, value: Any, path: str, depth: int) -> None:
        if not isinstance(value, dict):
            self.fail(path, f"expected a resource (a JSON object), got {_kind(value)}")
            return
        rtype = value.get("resourceType")
        if not isinstance(rtype, str) or rtype not in self.resources:
            self.fail(f"{path}.resourceType", f"{rtype!r} is not an R4 resource type")
            return
        self.complex(value, rtype, path if path.endswith(rtype) else f"{path}({rtype})", depth)

    def complex(self, obj: Any, type_name: str, path: str, depth: int, skip: str = "") -> None:
        if not isinstance(obj, dict):
            self.fail(path, f"expected an object ({type_name}), got {_kind(obj)}")
            return
        if depth > _MAX_DEPTH:
            self.fail(path, f"nested more than {_MAX_DEPTH} levels deep")
            return
        if type_name == "FHIRReference":
            self.references.append(obj)
        spec = self.elements[type_name]
        chosen: dict[str, str] | None = None
        for key, value in obj.items():
            element = spec.get(key)
            if element is None:
                if key == "resourceType" and type_name in self.resources:
                    continue
                if key[:1] == "_" and (base := spec.get(key[1:])) is not None and base[0] in PRIMITIVES:
                    self.primitive_extension(value, base[1], f"{path}.{key}", depth)
                    continue
                self.fail(f"{path}.{key}", "unknown element")
                continue
            etype, repeats, choice, _ = element
            if choice:
                if chosen is None:
                    chosen = {}
                other = chosen.setdefault(choice, key)
                if other != key:
                    self.fail(f"{path}.{key}", f"only one {choice}[x] is allowed; {other} is given too")
            if key == skip:
                continue
            where = f"{path}.{key}"
            if repeats:
                if not isinstance(value, list):
                    self.fail(where, f"expected an array (the element repeats), got {_kind(value)}")
                elif not value:
                    self.fail(where, "an empty array (FHIR JSON leaves an element without values out)")
                else:
                    for i, item in enumerate(value):
                        self.value(item, etype, f"{where}[{i}]", depth)
            elif isinstance(value, list):
                self.fail(where, "expected one value, got an array (the element does not repeat)")
            else:
                self.value(value, etype, where, depth)
        for group, keys in self.required[type_name]:
            if not any(k in obj for k in keys):
                self.fail(f"{path}.{group}{'[x]' if keys[0] != group else ''}", "missing required element")

    def value(self, value: Any, etype: str, path: str, depth: int) -> None:
        if etype in PRIMITIVES:
            self.primitive(value, etype, path)
        elif etype == "Resource":
            self.resource(value, path, depth + 1)
        else:
            self.complex(value, etype, path, depth + 1)

    def primitive(self, value: Any, etype: str, path: str) -> None:
        if etype == "boolean":
            ok = isinstance(value, bool)
        elif etype == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif etype == "decimal":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
            if ok and self.max_string is not None and len(value) > self.max_string:
                self.fail(path, f"a string of {len(value)} characters, over the limit of {self.max_string}")
                return
            if ok and etype in _FORMATS and not _well_formed(value, etype):
                self.fail(path, f"{value[:40]!r} is not an R4 {etype}")
                return
        if not ok:
            expected = {"integer": "an integer", "decimal": "a number", "boolean": "true or false"}.get(
                etype, "a string"
            )
            self.fail(path, f"expected {expected} ({etype}), got {_kind(value)}")

    def primitive_extension(self, value: Any, repeats: bool, path: str, depth: int) -> None:
        if repeats:
            if not isinstance(value, list):
                self.fail(path, f"expected an array of objects or nulls, got {_kind(value)}")
                return
            for i, item in enumerate(value):
                if item is not None:
                    self.complex(item, "Element", f"{path}[{i}]", depth + 1)
        else:
            self.complex(value, "Element", path, depth + 1)


def _valid(obj: Any, type_name: str, t: _Tables, refs: list[dict[str, Any]], max_string: int, depth: int) -> bool:
    """True when *obj* is a valid *type_name* (the first pass: no paths, no messages; any doubt answers False and the
    second pass, :class:`_Walk`, says where and why). Collects the Reference objects into *refs*."""
    if type(obj) is not dict or depth > 64:  # _MAX_DEPTH, inlined: this runs once per JSON object
        return False
    if type_name == "FHIRReference":
        refs.append(obj)
    spec = t.fast[type_name]
    get = spec.get
    chosen: set[str] | None = None
    for key, value in obj.items():
        element = get(key)
        if element is None:
            if key == "resourceType" and type_name in t.resources:
                continue
            return False  # an unknown element, or a primitive extension (_x): the second pass decides
        code, repeats, choice, etype = element
        if choice:
            if chosen is None:
                chosen = {choice}
            elif choice in chosen:
                return False
            else:
                chosen.add(choice)
        if not repeats:  # most elements: one value, most of them strings or objects
            if code == _STRING:
                if type(value) is not str or len(value) > max_string:
                    return False
            elif code == _COMPLEX:
                if not _valid(value, etype, t, refs, max_string, depth + 1):
                    return False
            elif not _valid_item(value, code, etype, t, refs, max_string, depth):
                return False
            continue
        if type(value) is not list or not value:
            return False
        if code == _COMPLEX:
            for item in value:
                if not _valid(item, etype, t, refs, max_string, depth + 1):
                    return False
        else:
            for item in value:
                if not _valid_item(item, code, etype, t, refs, max_string, depth):
                    return False
    required = t.required_keys[type_name]
    if required:
        for keys in required:
            if not any(k in obj for k in keys):
                return False
    return True


def _valid_item(
    item: Any, code: int, etype: str, t: _Tables, refs: list[dict[str, Any]], max_string: int, depth: int
) -> bool:
    if code == _STRING:
        return type(item) is str and len(item) <= max_string
    if code == _COMPLEX:
        return _valid(item, etype, t, refs, max_string, depth + 1)
    if code == _FORMATTED:
        return type(item) is str and _well_formed(item, etype)
    if code == _BOOLEAN:
        return type(item) is bool
    if code == _INTEGER:
        return type(item) is int
    if code == _DECIMAL:
        return type(item) is int or type(item) is float
    # a resource (contained, Bundle.entry.resource, Parameters.parameter.resource)
    rtype = item.get("resourceType") if type(item) is dict else None
    return rtype in t.resources and _valid(item, rtype, t, refs, max_string, depth + 1)


def validate_resource(
    resource: Any, *, max_string: int | None = None
) -> tuple[list[StructureError], list[dict[str, Any]]]:
    """The R4 structure errors of one resource (at most 20) and its Reference objects (for resolving them).

    *max_string*: strings longer than this many characters are an error too (a configurable size limit).
    """
    t = tables()
    refs: list[dict[str, Any]] = []
    rtype = resource.get("resourceType") if type(resource) is dict else None
    limit = max_string if max_string is not None else 1 << 62
    if isinstance(rtype, str) and rtype in t.resources and _valid(resource, rtype, t, refs, limit, 0):
        return [], refs
    walk = _Walk(max_string)
    walk.resource(resource, rtype if isinstance(rtype, str) else "resource", 0)
    if not walk.errors:  # the first pass refused what the second accepts: a primitive extension (_x), say
        return [], walk.references
    return walk.errors, walk.references


def validate_bundle_shell(bundle: Any, *, max_string: int | None = None) -> list[StructureError]:
    """The R4 structure errors of a Bundle outside its entries' resources (checked one by one with
    :func:`validate_resource`): ``type``, ``entry`` as an array of objects, ``fullUrl`` a string...)."""
    t, limit = tables(), max_string if max_string is not None else 1 << 62
    refs: list[dict[str, Any]] = []
    if type(bundle) is dict:
        entries = bundle.get("entry")
        shell = {k: v for k, v in bundle.items() if k != "entry"}
        if _valid(shell, "Bundle", t, refs, limit, 0) and (
            entries is None
            or (
                type(entries) is list
                and all(
                    type(e) is dict and _valid({k: v for k, v in e.items() if k != "resource"}, "BundleEntry", t,
                                               refs, limit, 1)
                    for e in entries
                )
            )
        ):  # fmt: skip
            return []
    walk = _Walk(max_string)
    walk.complex(bundle, "Bundle", "Bundle", 0, skip="entry")
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if entries is not None:
        if not isinstance(entries, list):
            walk.fail("Bundle.entry", f"expected an array (the element repeats), got {_kind(entries)}")
        else:
            for i, entry in enumerate(entries):
                walk.complex(entry, "BundleEntry", f"Bundle.entry[{i}]", 1, skip="resource")
    return walk.errors


def generate_tables() -> dict[str, Any]:
    """The tables, read from fhirclient's R4 models (needs ``fhirclient``, a development dependency).

    Raises
    ------
    ImportError
        fhirclient is not installed.
    """
    import importlib
    import inspect
    import pkgutil

    import fhirclient.models as models
    from fhirclient.models.fhirabstractbase import FHIRAbstractBase
    from fhirclient.models.fhirdate import FHIRDate
    from fhirclient.models.fhirdatetime import FHIRDateTime
    from fhirclient.models.fhirinstant import FHIRInstant
    from fhirclient.models.fhirtime import FHIRTime
    from fhirclient.models.resource import Resource

    primitive = {
        str: "string",
        int: "integer",
        float: "decimal",
        bool: "boolean",
        FHIRDate: "date",
        FHIRDateTime: "dateTime",
        FHIRInstant: "instant",
        FHIRTime: "time",
    }
    classes: dict[str, Any] = {}
    for info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"fhirclient.models.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, FHIRAbstractBase) and cls.__module__ == module.__name__:
                classes[name] = cls
    types: dict[str, Any] = {}
    resource_types = []
    for name in sorted(classes):
        cls = classes[name]
        rtype = getattr(cls, "resource_type", None)
        if rtype == name and issubclass(cls, Resource) and name not in ("Resource", "DomainResource"):
            resource_types.append(name)
        elements = {}
        for _, jsname, typ, is_list, of_many, not_optional in cls().elementProperties():
            kind = "Resource" if typ is Resource else primitive.get(typ) or typ.__name__
            elements[jsname] = [kind, int(is_list), of_many or "", int(not_optional)]
        types[name] = {"elements": dict(sorted(elements.items()))}
    return {"fhir_version": "4.0.1", "source": "fhirclient.models", "resources": resource_types, "types": types}
