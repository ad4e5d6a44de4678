"""Exception types shared by every floor of medtwin."""

__all__ = ["MedtwinError", "UnitError", "ValidationError"]


class MedtwinError(Exception):
    """Base class of every error medtwin raises on purpose."""


class ValidationError(MedtwinError, ValueError):
    """Input that medtwin refuses, with what was wrong and where."""


class UnitError(ValidationError):
    """A unit that is unknown, cannot be parsed or is incompatible with the quantity."""
