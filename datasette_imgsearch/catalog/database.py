"""sqlite-utils, and the sqlite3 module it picked (pysqlite3 where installed), imported without pandas.

sqlite-utils imports pandas whenever pandas is installed (the ``ray`` extra brings it), only to give
pandas' ``Timestamp`` a column type when one is inserted. This package never inserts pandas values, and
that import was half a second of every cold command (docs/onnx.md). So while pandas is not loaded yet,
sqlite-utils is imported with pandas hidden, as Python's import system documents: a ``None`` in
``sys.modules`` makes ``import pandas`` raise ImportError. A process that loaded pandas or sqlite-utils
first (Datasette imports sqlite-utils itself) keeps sqlite-utils exactly as it is. Every module of this
package takes sqlite-utils and sqlite3 from here."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


@contextlib.contextmanager
def pandas_hidden() -> Iterator[None]:
    """Within it, ``import pandas`` fails, unless pandas or sqlite-utils is loaded already."""
    if "pandas" in sys.modules or "sqlite_utils" in sys.modules:
        yield
        return
    sys.modules["pandas"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        del sys.modules["pandas"]


with pandas_hidden():
    import sqlite_utils
    from sqlite_utils.utils import sqlite3  # pysqlite3 where sqlite-utils picked it, so its errors are the ones raised

__all__ = ["sqlite3", "sqlite_utils"]
