"""Register SQL functions whose Python exceptions become the SQL error message.

Python's ``sqlite3`` turns every exception raised in a user function into the same text, "user-defined
function raised exception", so a person who mistypes a query in Datasette never learns what was
wrong. Here the function is registered through SQLite's own C API (``sqlite3_create_function_v2`` and
``sqlite3_result_error``, via ctypes), so the error reads, for example,
``imgsearch(): k must be between 1 and 1000, not 0``.

That needs the connection's ``sqlite3*`` handle, which Python does not expose, and it must be used
with the very SQLite library that opened the connection. Neither is guessed: for each sqlite3 module
present (the standard library's ``_sqlite3``, and ``pysqlite3``'s when installed), ctypes loads the
extension, and only if it exports the SQLite API and reports the module's own ``sqlite_version`` is
an SQLite *auto-extension* (a public C API) installed in it. That gives every connection the library
opens afterwards a function returning a random token, and remembers the handle SQLite passed in under
that token, with the library it belongs to, until the connection is looked up (once, when its functions
are registered) or a bounded number of newer connections push it out. A connection answers with a token
only if one of those libraries opened it after :func:`install` ran (the plugin's ``startup`` runs it);
any other (sqlean, a module loaded later, a statically linked build without exported symbols) gets
Python's ``create_function`` instead: the function works, only its messages are generic. No SQLite
destructor calls back into Python: connections closed while the interpreter shuts down would call into
code already torn down.
"""

from __future__ import annotations

import ctypes
import importlib
import secrets
import threading
from collections import OrderedDict
from typing import Any, Callable

SQLITE_UTF8 = 1
SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB, SQLITE_NULL = 1, 2, 3, 4, 5
SQLITE_TRANSIENT = ctypes.c_void_p(-1)
TOKEN_FUNCTION = "imgsearch_connection_token"
MAX_REMEMBERED_CONNECTIONS = 1_000  # connections opened but not (yet) looked up; older ones fall back to create_function
# (extension module holding the C library, Python module whose sqlite_version it must report)
MODULES = (("_sqlite3", "sqlite3"), ("pysqlite3._sqlite3", "pysqlite3"))

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p))
_ENTRY_POINT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
# SQLite holds raw pointers to these callbacks for its connections' lifetimes: they are never freed.
_keep_alive: list[Any] = []
_handles: OrderedDict[int, tuple["Library", int]] = OrderedDict()  # token → (library, sqlite3*)
_lock = threading.Lock()


class Library:
    """One SQLite C library, reached through ctypes, proven to be the one its Python module uses."""

    def __init__(self, extension: str, module: str) -> None:
        c = ctypes
        self.api = api = ctypes.CDLL(importlib.import_module(extension).__file__)
        api.sqlite3_libversion.restype = c.c_char_p
        if api.sqlite3_libversion().decode() != importlib.import_module(module).sqlite_version:
            raise ImportError(f"{extension} does not export the SQLite that {module} reports")
        api.sqlite3_auto_extension.argtypes = [c.c_void_p]
        api.sqlite3_create_function_v2.argtypes = [
            c.c_void_p, c.c_char_p, c.c_int, c.c_int, c.c_void_p, _CALLBACK, c.c_void_p, c.c_void_p, c.c_void_p,
        ]
        api.sqlite3_create_function_v2.restype = c.c_int
        api.sqlite3_user_data.argtypes = [c.c_void_p]
        api.sqlite3_user_data.restype = c.c_void_p
        api.sqlite3_value_type.argtypes = [c.c_void_p]
        api.sqlite3_value_int64.argtypes = [c.c_void_p]
        api.sqlite3_value_int64.restype = c.c_int64
        api.sqlite3_value_double.argtypes = [c.c_void_p]
        api.sqlite3_value_double.restype = c.c_double
        api.sqlite3_value_bytes.argtypes = [c.c_void_p]
        api.sqlite3_value_text.argtypes = [c.c_void_p]
        api.sqlite3_value_text.restype = c.c_void_p
        api.sqlite3_value_blob.argtypes = [c.c_void_p]
        api.sqlite3_value_blob.restype = c.c_void_p
        api.sqlite3_result_null.argtypes = [c.c_void_p]
        api.sqlite3_result_int64.argtypes = [c.c_void_p, c.c_int64]
        api.sqlite3_result_double.argtypes = [c.c_void_p, c.c_double]
        api.sqlite3_result_text.argtypes = [c.c_void_p, c.c_char_p, c.c_int, c.c_void_p]
        api.sqlite3_result_blob.argtypes = [c.c_void_p, c.c_char_p, c.c_int, c.c_void_p]
        api.sqlite3_result_error.argtypes = [c.c_void_p, c.c_char_p, c.c_int]
        self._token_callback = _CALLBACK(self._return_token)
        self._entry_point = _ENTRY_POINT(self._on_open)
        if api.sqlite3_auto_extension(ctypes.cast(self._entry_point, ctypes.c_void_p)) != 0:
            raise ImportError(f"{extension} refused the auto-extension")

    def _return_token(self, context: int, count: int, values: Any) -> None:
        self.api.sqlite3_result_int64(context, self.api.sqlite3_user_data(context) or 0)

    def _on_open(self, db: int, error_message: int, routines: int) -> int:
        """SQLite calls this for each new connection it opens: remember the handle under a token."""
        try:
            token = secrets.randbits(62) + 1
            status = self.api.sqlite3_create_function_v2(
                db, TOKEN_FUNCTION.encode(), 0, SQLITE_UTF8, ctypes.c_void_p(token), self._token_callback, None, None, None
            )
            if status == 0:
                with _lock:
                    _handles[token] = (self, db)
                    while len(_handles) > MAX_REMEMBERED_CONNECTIONS:
                        _handles.popitem(last=False)
        except Exception:  # never let a failure here break the opening of a connection
            pass
        return 0

    def argument(self, value: int) -> Any:
        api = self.api
        kind = api.sqlite3_value_type(value)
        if kind == SQLITE_INTEGER:
            return api.sqlite3_value_int64(value)
        if kind == SQLITE_FLOAT:
            return api.sqlite3_value_double(value)
        if kind == SQLITE_TEXT:
            pointer = api.sqlite3_value_text(value)
            return ctypes.string_at(pointer, api.sqlite3_value_bytes(value)).decode("utf-8", "replace") if pointer else ""
        if kind == SQLITE_BLOB:
            pointer = api.sqlite3_value_blob(value)
            return ctypes.string_at(pointer, api.sqlite3_value_bytes(value)) if pointer else b""
        return None

    def set_result(self, context: int, result: Any) -> None:
        api = self.api
        if result is None:
            api.sqlite3_result_null(context)
        elif isinstance(result, (bool, int)):
            api.sqlite3_result_int64(context, int(result))
        elif isinstance(result, float):
            api.sqlite3_result_double(context, result)
        elif isinstance(result, str):
            data = result.encode("utf-8")
            api.sqlite3_result_text(context, data, len(data), SQLITE_TRANSIENT)
        elif isinstance(result, bytes):
            api.sqlite3_result_blob(context, result, len(result), SQLITE_TRANSIENT)
        else:
            raise TypeError(f"cannot return a {type(result).__name__} to SQL")

    def set_error(self, context: int, message: str) -> None:
        data = message.encode("utf-8")
        self.api.sqlite3_result_error(context, data, len(data))


def _load_libraries() -> list[Library]:
    libraries = []
    for extension, module in MODULES:
        try:
            libraries.append(Library(extension, module))
        except (ImportError, OSError, AttributeError, TypeError, UnicodeDecodeError):
            continue
    return libraries


_libraries: list[Library] | None = None


def install() -> list[Library]:
    """Reach the SQLite libraries and install the auto-extension in each, once: connections opened from
    then on can have functions with readable errors."""
    global _libraries
    with _lock:
        if _libraries is None:
            _libraries = _load_libraries()
        return _libraries


def connection_handle(conn: Any) -> tuple[Library, int] | None:
    """The library and ``sqlite3*`` of ``conn``, only when one of the installed libraries opened it."""
    try:
        token = conn.execute(f"select {TOKEN_FUNCTION}()").fetchone()[0]
    except Exception:  # opened by a library we do not reach (its own error classes), or before install()
        return None
    with _lock:
        return _handles.get(token) if isinstance(token, int) else None


def create_function(
    conn: Any, name: str, arguments: int, function: Callable[..., Any],
    expected: tuple[type[Exception], ...] = (ValueError,),
) -> bool:
    """Register ``function`` as ``name`` on ``conn``; True when errors will carry their message.

    Exceptions of the ``expected`` types are shown as they are; anything else is shown with its type,
    since it is a bug rather than a bad query.
    """
    install()
    found = connection_handle(conn)
    if found is None:
        conn.create_function(name, arguments, function)
        return False
    library, handle = found

    def call(context: int, count: int, values: Any) -> None:
        try:
            library.set_result(context, function(*[library.argument(values[i]) for i in range(count)]))
        except expected as error:
            library.set_error(context, f"{name}(): {error}")
        except Exception as error:  # a bug: still say what happened rather than crash the query
            library.set_error(context, f"{name}() failed: {type(error).__name__}: {error}")

    callback = _CALLBACK(call)
    status = library.api.sqlite3_create_function_v2(
        handle, name.encode(), arguments, SQLITE_UTF8, None, callback, None, None, None
    )
    if status != 0:
        conn.create_function(name, arguments, function)
        return False
    with _lock:
        _keep_alive.append(callback)
    return True
