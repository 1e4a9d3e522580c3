"""Register SQL functions whose Python exceptions become the SQL error message.

Python's ``sqlite3`` turns every exception raised in a user function into the same text, "user-defined
function raised exception", so a person who mistypes a query in Datasette never learns what was
wrong. This module registers the function through SQLite's own C API (``sqlite3_create_function_v2``
and ``sqlite3_result_error``, via ctypes, on the very library Python's ``_sqlite3`` uses), so the error
reads, for example, ``imgsearch(): k must be between 1 and 1000, not 0``.

Where that is not possible (another Python implementation, a statically linked SQLite without exported
symbols, or a connection whose handle cannot be confirmed) it falls back to ``create_function``, and
only the message is lost.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sqlite3
from typing import Any, Callable

SQLITE_UTF8 = 1
SQLITE_DETERMINISTIC = 0x800
SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB, SQLITE_NULL = 1, 2, 3, 4, 5
SQLITE_TRANSIENT = ctypes.c_void_p(-1)

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p))
_keep_alive: list[Any] = []  # SQLite holds raw pointers to these callbacks for the connection's lifetime


def _load_library() -> Any:
    try:
        import _sqlite3

        library = ctypes.CDLL(_sqlite3.__file__)  # symbol lookup reaches the libsqlite3 it is linked to
        c = ctypes
        library.sqlite3_create_function_v2.argtypes = [
            c.c_void_p, c.c_char_p, c.c_int, c.c_int, c.c_void_p, _CALLBACK, c.c_void_p, c.c_void_p, c.c_void_p,
        ]
        library.sqlite3_create_function_v2.restype = c.c_int
        library.sqlite3_db_filename.argtypes = [c.c_void_p, c.c_char_p]
        library.sqlite3_db_filename.restype = c.c_char_p
        library.sqlite3_value_type.argtypes = [c.c_void_p]
        library.sqlite3_value_int64.argtypes = [c.c_void_p]
        library.sqlite3_value_int64.restype = c.c_int64
        library.sqlite3_value_double.argtypes = [c.c_void_p]
        library.sqlite3_value_double.restype = c.c_double
        library.sqlite3_value_bytes.argtypes = [c.c_void_p]
        library.sqlite3_value_text.argtypes = [c.c_void_p]
        library.sqlite3_value_text.restype = c.c_void_p
        library.sqlite3_value_blob.argtypes = [c.c_void_p]
        library.sqlite3_value_blob.restype = c.c_void_p
        library.sqlite3_result_null.argtypes = [c.c_void_p]
        library.sqlite3_result_int64.argtypes = [c.c_void_p, c.c_int64]
        library.sqlite3_result_double.argtypes = [c.c_void_p, c.c_double]
        library.sqlite3_result_text.argtypes = [c.c_void_p, c.c_char_p, c.c_int, c.c_void_p]
        library.sqlite3_result_blob.argtypes = [c.c_void_p, c.c_char_p, c.c_int, c.c_void_p]
        library.sqlite3_result_error.argtypes = [c.c_void_p, c.c_char_p, c.c_int]
        return library
    except (ImportError, OSError, AttributeError):
        return None


_library = _load_library()


def _handle(conn: sqlite3.Connection, path: str) -> int | None:
    """The connection's ``sqlite3*``, confirmed by asking SQLite for the file it has open."""
    if _library is None or not path or platform.python_implementation() != "CPython":
        return None
    try:
        # CPython's connection object keeps ``sqlite3 *db`` right after its object header.
        pointer = ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value
        if not pointer:
            return None
        filename = _library.sqlite3_db_filename(pointer, b"main")
    except (ValueError, OSError):
        return None
    if not filename or os.path.realpath(os.fsdecode(filename)) != os.path.realpath(path):
        return None
    return pointer


def _argument(value: int) -> Any:
    kind = _library.sqlite3_value_type(value)
    if kind == SQLITE_INTEGER:
        return _library.sqlite3_value_int64(value)
    if kind == SQLITE_FLOAT:
        return _library.sqlite3_value_double(value)
    if kind == SQLITE_TEXT:
        pointer = _library.sqlite3_value_text(value)
        return ctypes.string_at(pointer, _library.sqlite3_value_bytes(value)).decode("utf-8", "replace") if pointer else ""
    if kind == SQLITE_BLOB:
        pointer = _library.sqlite3_value_blob(value)
        return ctypes.string_at(pointer, _library.sqlite3_value_bytes(value)) if pointer else b""
    return None


def _set_result(context: int, result: Any) -> None:
    if result is None:
        _library.sqlite3_result_null(context)
    elif isinstance(result, bool) or isinstance(result, int):
        _library.sqlite3_result_int64(context, int(result))
    elif isinstance(result, float):
        _library.sqlite3_result_double(context, result)
    elif isinstance(result, str):
        data = result.encode("utf-8")
        _library.sqlite3_result_text(context, data, len(data), SQLITE_TRANSIENT)
    elif isinstance(result, bytes):
        _library.sqlite3_result_blob(context, result, len(result), SQLITE_TRANSIENT)
    else:
        raise TypeError(f"cannot return a {type(result).__name__} to SQL")


def create_function(
    conn: sqlite3.Connection, path: str, name: str, arguments: int, function: Callable[..., Any],
    expected: tuple[type[Exception], ...] = (ValueError,),
) -> bool:
    """Register ``function`` as ``name`` on ``conn``; True when errors will carry their message.

    Exceptions of the ``expected`` types are shown as they are; anything else is shown with its type,
    since it is a bug rather than a bad query.
    """
    pointer = _handle(conn, path)
    if pointer is None:
        conn.create_function(name, arguments, function)
        return False

    def call(context: int, count: int, values: Any) -> None:
        try:
            _set_result(context, function(*[_argument(values[i]) for i in range(count)]))
        except expected as error:
            message = f"{name}(): {error}".encode("utf-8")
            _library.sqlite3_result_error(context, message, len(message))
        except Exception as error:  # a bug: still say what happened rather than crash the query
            message = f"{name}() failed: {type(error).__name__}: {error}".encode("utf-8")
            _library.sqlite3_result_error(context, message, len(message))

    callback = _CALLBACK(call)
    status = _library.sqlite3_create_function_v2(
        pointer, name.encode(), arguments, SQLITE_UTF8, None, callback, None, None, None
    )
    if status != 0:
        conn.create_function(name, arguments, function)
        return False
    _keep_alive.append(callback)
    return True
