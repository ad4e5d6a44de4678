"""Cohort files: a Parquet (or CSV) cohort read straight into the columns the equations take, converted once.

:func:`read_cohort` reads with pyarrow and hands over numpy arrays without a per-column pandas step: numbers (and
yes/no columns) as float64 (``NaN`` where the file has a null), zero-copy where the file's column already is
float64 without nulls in one chunk (such arrays are read-only: the equations never write to their inputs); text
as a ``pandas.Categorical`` read from the file's own dictionary encoding, so a million ``"male"``/``"female"``
values are a million small integer codes and two words, and each equation maps the two words, not a million
strings. Any other column type (dates, times) comes as numpy makes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medtwin.errors import ValidationError, did_you_mean

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["CohortColumns", "read_cohort"]

CohortColumns = dict[str, "npt.NDArray[Any] | pd.Categorical"]
_CSV = (".csv", ".txt")


def read_cohort(path: str | Path, columns: Sequence[str] | None = None) -> CohortColumns:
    """The cohort in *path* (Parquet; ``.csv``/``.txt`` as CSV) as ``{column: array}`` ready for the equations.

    Parameters
    ----------
    path
        The file; a missing or unreadable file is a :class:`~medtwin.errors.ValidationError` naming it.
    columns
        Read only these columns (default: all); a name the file does not have is an error with the closest one.
    """
    p = Path(path)
    if not p.is_file():
        raise ValidationError(f"{p}: no such file")
    table = _read_csv(p, columns) if p.suffix.lower() in _CSV else _read_parquet(p, columns)
    return {name: _column(table.column(name)) for name in (columns or table.column_names)}


def _check_columns(p: Path, names: Sequence[str], wanted: Sequence[str] | None) -> list[str] | None:
    if wanted is None:
        return None
    for name in wanted:
        if name not in names:
            raise ValidationError(f"{p}: no column {name!r}{did_you_mean(name, names)} (columns: {', '.join(names)})")
    return list(wanted)


def _read_parquet(p: Path, columns: Sequence[str] | None) -> pa.Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(p)
        wanted = _check_columns(p, schema.names, columns)
        text = [
            f.name
            for f in schema
            if (wanted is None or f.name in wanted)
            and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_string_view(f.type))
        ]
        # text read as the file's dictionary pages: codes, never one Python string per row; one chunk per row group
        with pq.ParquetFile(p, read_dictionary=text or None) as parquet:
            return parquet.read(columns=wanted)
    except (OSError, pa.ArrowException) as exc:
        raise ValidationError(f"{p}: cannot read as Parquet ({exc})") from None


def _read_csv(p: Path, columns: Sequence[str] | None) -> pa.Table:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(p)
    except (OSError, pa.ArrowException) as exc:
        raise ValidationError(f"{p}: cannot read as CSV ({exc})") from None
    wanted = _check_columns(p, table.column_names, columns)
    return table if wanted is None else table.select(wanted)


def _column(col: pa.ChunkedArray) -> npt.NDArray[Any] | pd.Categorical:
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = col.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        col = pc.dictionary_encode(col)
        kind = col.type
    if pa.types.is_dictionary(kind):
        return _categorical(col)
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_floating(kind):
        if kind != pa.float64():
            col = col.cast(pa.float64())
        if col.num_chunks == 1 and col.null_count == 0:
            return np.asarray(col.chunk(0).to_numpy(zero_copy_only=True))
        return np.asarray(col.to_numpy())  # a copy; nulls become NaN
    return np.asarray(col.to_numpy())


def _categorical(col: pa.ChunkedArray) -> pd.Categorical:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if col.num_chunks == 0:
        return pd.Categorical([])
    if col.num_chunks > 1:  # each row group may carry its own dictionary: one dictionary for the whole column
        col = pa.Table.from_arrays([col], names=["c"]).unify_dictionaries().column(0)
    arr = pa.concat_arrays(col.chunks) if col.num_chunks > 1 else col.chunk(0)
    categories = arr.dictionary.to_pylist()
    codes = pc.fill_null(arr.indices, -1).to_numpy(zero_copy_only=False)
    if any(c is None for c in categories) or len(set(categories)) != len(categories):
        # a null or repeated dictionary entry: renumber so each word has one code and null is -1
        unique = list(dict.fromkeys(c for c in categories if c is not None))
        position = {c: i for i, c in enumerate(unique)}
        remap = np.array([position[c] if c is not None else -1 for c in categories] + [-1], dtype=np.int64)
        codes, categories = remap[codes], unique
    return pd.Categorical.from_codes(codes, categories=categories, validate=False)
