"""Register SQL functions whose Python exceptions become the SQL error message.

Python's ``sqlite3`` turns every exception raised in a user function into the same text, "user-defined
function raised exception", so a person who mistypes a query in Datasette never learns what was
wrong. Here the function is registered through SQLite's own C API (``sqlite3_create_function_v2`` and
``sqlite3_result_error``, via ctypes), so the error reads, for example,
``imgsearch(): k must be between 1 and 1000, not 0``.

That needs the connection's ``sqlite3*`` handle, which Python does not expose. It is never read out of
Python's objects: at import, if the standard library's ``_sqlite3`` is linked to a libsqlite3 that
ctypes can reach and that reports the module's own version, an SQLite *auto-extension* (a public C
API) gives every connection later opened through that library a function returning a random token,
and remembers the handle SQLite passed in under that token. A connection answers with its token only
if it was opened by that very library; a connection from pysqlite3, sqlean or any other build has no
such function, and gets Python's ``create_function`` instead: the function works, only its messages
are generic.
"""

from __future__ import annotations

import ctypes
import secrets
import sqlite3
import threading
from collections import OrderedDict
from typing import Any, Callable

SQLITE_UTF8 = 1
SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB, SQLITE_NULL = 1, 2, 3, 4, 5
SQLITE_TRANSIENT = ctypes.c_void_p(-1)
TOKEN_FUNCTION = "imgsearch_connection_token"
MAX_REMEMBERED_CONNECTIONS = 100_000  # older ones fall back to create_function, messages lost

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p))
_ENTRY_POINT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
_keep_alive: list[Any] = []  # SQLite holds raw pointers to these callbacks for the connection's lifetime
_handles: OrderedDict[int, int] = OrderedDict()  # token → sqlite3*, as SQLite passed it to the auto-extension
_handles_lock = threading.Lock()


def _load_library() -> Any:
    """The libsqlite3 the standard library's ``_sqlite3`` uses, if ctypes can reach it and it is that one."""
    try:
        import _sqlite3

        library = ctypes.CDLL(_sqlite3.__file__)  # symbol lookup reaches the libsqlite3 it is linked to
        c = ctypes
        library.sqlite3_libversion.restype = c.c_char_p
        if library.sqlite3_libversion().decode() != sqlite3.sqlite_version:
            return None
        library.sqlite3_auto_extension.argtypes = [c.c_void_p]
        library.sqlite3_create_function_v2.argtypes = [
            c.c_void_p, c.c_char_p, c.c_int, c.c_int, c.c_void_p, _CALLBACK, c.c_void_p, c.c_void_p, c.c_void_p,
        ]
        library.sqlite3_create_function_v2.restype = c.c_int
        library.sqlite3_user_data.argtypes = [c.c_void_p]
        library.sqlite3_user_data.restype = c.c_void_p
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
    except (ImportError, OSError, AttributeError, UnicodeDecodeError):
        return None


def _return_token(context: int, count: int, values: Any) -> None:
    _library.sqlite3_result_int64(context, _library.sqlite3_user_data(context) or 0)


def _on_open(db: int, error_message: int, api: int) -> int:
    """SQLite calls this for each new connection through its library: remember the handle under a token."""
    try:
        token = secrets.randbits(62) + 1
        status = _library.sqlite3_create_function_v2(
            db, TOKEN_FUNCTION.encode(), 0, SQLITE_UTF8, ctypes.c_void_p(token), _token_callback, None, None, None
        )
        if status == 0:
            with _handles_lock:
                _handles[token] = db
                while len(_handles) > MAX_REMEMBERED_CONNECTIONS:
                    _handles.popitem(last=False)
    except Exception:  # never let a failure here break the opening of a connection
        pass
    return 0


_library = _load_library()
_token_callback = _CALLBACK(_return_token)
_entry_point = _ENTRY_POINT(_on_open)
if _library is not None and _library.sqlite3_auto_extension(ctypes.cast(_entry_point, ctypes.c_void_p)) != 0:
    _library = None


def connection_handle(conn: Any) -> int | None:
    """The ``sqlite3*`` of ``conn``, only when it was opened by the library ctypes reaches (else None)."""
    if _library is None:
        return None
    try:
        token = conn.execute(f"select {TOKEN_FUNCTION}()").fetchone()[0]
    except Exception:  # another sqlite3 module's connection (its own error classes), or opened before import
        return None
    with _handles_lock:
        return _handles.get(token) if isinstance(token, int) else None


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
    conn: Any, name: str, arguments: int, function: Callable[..., Any],
    expected: tuple[type[Exception], ...] = (ValueError,),
) -> bool:
    """Register ``function`` as ``name`` on ``conn``; True when errors will carry their message.

    Exceptions of the ``expected`` types are shown as they are; anything else is shown with its type,
    since it is a bug rather than a bad query.
    """
    pointer = connection_handle(conn)
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
