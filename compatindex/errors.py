"""The error hierarchy of compatindex.

Every error subclasses :class:`CompatIndexError` and, where one fits, the built-in exception a
caller already catches (``ValueError``, ``KeyError``, ...). Messages name the parameter and echo
the value; ``hint`` says what to do about it. Errors pickle (they cross process boundaries in
multiprocessing and in the CLI's subprocess tests).
"""

from __future__ import annotations

__all__ = [
    "CompatIndexError",
    "InvalidInputError",
    "DimensionMismatchError",
    "VersionRequiredError",
    "RawRequiredError",
    "UnknownVersionError",
    "UnknownIdError",
    "DuplicateIdError",
    "VersionExistsError",
    "NotOrthogonalError",
    "IndexLockedError",
    "ReadOnlyError",
    "FormatVersionError",
    "CorruptIndexError",
    "StoreFullError",
    "NotAnIndexError",
    "IncompatibleVersionError",
]


class CompatIndexError(Exception):
    """Base class of every error raised by compatindex.

    Parameters
    ----------
    message:
        What went wrong, naming the parameter and the value.
    hint:
        What the caller can do about it (may be empty).
    """

    default_hint = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def __reduce__(self) -> tuple[type[CompatIndexError], tuple[str, str]]:  # keeps subclasses with extra base classes picklable
        return (self.__class__, (self.message, self.hint))

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class InvalidInputError(CompatIndexError, ValueError):
    """A parameter has a value the call cannot accept (NaN, wrong dtype, k < 1, ...)."""


class DimensionMismatchError(InvalidInputError):
    """Vectors do not have the dimension of the version they are given for."""

    default_hint = "check `version=`: each version has its own dim (see Index.versions())"


class VersionRequiredError(InvalidInputError):
    """A call left out ``version=`` on an index that holds several versions and has none pinned.

    An index never guesses which version's space a vector or a query belongs to: after an
    upgrade that keeps the dim, the newest version would accept an old client's vectors silently.
    """

    default_hint = "pass version=NAME, or pin a default with compatindex.open(path, version=NAME)"


class RawRequiredError(InvalidInputError):
    """A call left out ``raw=`` for a version whose raw transform (head, ``Q``) is not the identity."""

    default_hint = ("raw=True: encoder outputs, mapped by the version's head and Q; "
                    "raw=False: vectors already in version space")


class UnknownVersionError(CompatIndexError, KeyError):
    """A version name that the index does not hold."""

    default_hint = "list the versions with Index.versions() or `compatindex versions INDEX`"


class UnknownIdError(CompatIndexError, KeyError):
    """Item ids that the index does not hold."""


class DuplicateIdError(InvalidInputError):
    """Ids repeated inside one batch, or ids that already exist where new ones are required."""


class VersionExistsError(CompatIndexError, ValueError):
    """A version with that name is already registered."""


class NotOrthogonalError(InvalidInputError):
    """An extension matrix that is not square, of the wrong size, or not orthogonal."""


class IndexLockedError(CompatIndexError, RuntimeError):
    """Another process holds the index's writer lock."""

    default_hint = (
        "only one writer at a time: wait for the other process to close the index, "
        "or open it with readonly=True to search"
    )


class ReadOnlyError(CompatIndexError, RuntimeError):
    """A write on an index opened with readonly=True."""


class FormatVersionError(CompatIndexError, RuntimeError):
    """The index folder was written by a format this release cannot read."""

    default_hint = "upgrade compatindex to a release that knows this format"


class CorruptIndexError(CompatIndexError, RuntimeError):
    """A file or record of the index is damaged."""

    default_hint = "run `compatindex verify INDEX`; restore the folder from a backup if the store is damaged"


class StoreFullError(CompatIndexError, OSError):
    """The disk (or a file-size limit) is full; the failed write left the index unchanged."""

    default_hint = "free disk space or move the index to a larger volume, then retry the write"


class NotAnIndexError(CompatIndexError, FileNotFoundError):
    """A path that does not hold a compatindex index."""


class IncompatibleVersionError(CompatIndexError, ValueError):
    """A trained version failed the compatibility gate and was not registered."""
