"""The error FHIR input raises: it names the file, the entry, the resource and the field."""

from __future__ import annotations

from medtwin.errors import ValidationError

__all__ = ["FhirInputError"]


class FhirInputError(ValidationError):
    """FHIR input medtwin refuses (invalid JSON, unknown resourceType, missing element, bad date or unit).

    The message reads ``file: entry N (Type/id): field: problem`` (``line N`` for NDJSON, ``line N: entry M``
    for a Bundle on an NDJSON line); the parts are also attributes.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        entry: int | None = None,
        resource: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.problem = problem
        self.line = line
        self.file = file
        self.entry = entry
        self.resource = resource
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        # an NDJSON line may hold a whole Bundle: then both the line and the entry in it are named
        if self.line is not None:
            where.append(f"line {self.line}" + (f" ({self.resource})" if self.resource and self.entry is None else ""))
        if self.entry is not None:
            where.append(f"entry {self.entry}" + (f" ({self.resource})" if self.resource else ""))
        elif self.resource and self.line is None:
            where.append(self.resource)
        if self.field:
            where.append(self.field)
        return ": ".join([*where, self.problem])

    def located(self, *, file: str | None = None, entry: int | None = None, line: int | None = None) -> FhirInputError:
        """A copy with the file and entry (or NDJSON line) filled in when not already known."""
        return FhirInputError(
            self.problem,
            file=self.file or file,
            entry=self.entry if self.entry is not None else entry,
            resource=self.resource,
            field=self.field,
            line=self.line if self.line is not None else line,
        )
