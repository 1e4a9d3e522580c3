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
an SQLite *auto-extension* (a public C API, the only one that hands over a new connection's handle)
installed in it. It acts only on connections to the files :func:`claim` named (the catalogs Datasette
serves): each gets a function returning its own handle, signed with a secret of this process so that
no other code can forge one. Every other connection, by any library, is left exactly as it was, and
nothing is remembered per connection, so nothing outlives one. A connection that has no such token
(a file not claimed, a module loaded later, sqlean, a statically linked build) gets Python's
``create_function`` instead: the function works, only its messages are generic. No SQLite destructor
calls back into Python: connections closed while the interpreter shuts down would call into code
already torn down; the callbacks SQLite points at are kept instead, one per function, not per connection.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import importlib
import os
import secrets
import threading
from typing import Any, Callable

SQLITE_UTF8 = 1
SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB, SQLITE_NULL = 1, 2, 3, 4, 5
SQLITE_TRANSIENT = ctypes.c_void_p(-1)
TOKEN_FUNCTION = "imgsearch_connection_token"
# (extension module holding the C library, Python module whose sqlite_version it must report)
MODULES = (("_sqlite3", "sqlite3"), ("pysqlite3._sqlite3", "pysqlite3"))

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p))
_ENTRY_POINT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
_SECRET = secrets.token_bytes(32)  # signs the tokens, so a token no auto-extension made is refused
# SQLite holds raw pointers to these callbacks for its connections' lifetimes: they are never freed,
# and there is one per (library, name, function), however many connections share it.
_callbacks: dict[tuple["Library", str, Callable[..., Any]], Any] = {}
_claimed: set[str] = set()  # the files (as given and resolved) whose new connections get a token
_claimed_names: set[str] = set()  # their base names, which rule out almost every other file at once
_lock = threading.Lock()


def _signature(library: str, handle: int) -> str:
    return hmac.new(_SECRET, f"{library}:{handle}".encode(), hashlib.sha256).hexdigest()[:32]


def _is_claimed(filename: str) -> bool:
    return os.path.basename(filename) in _claimed_names and (
        filename in _claimed or os.path.realpath(filename) in _claimed
    )


class Library:
    """One SQLite C library, reached through ctypes, proven to be the one its Python module uses."""

    def __init__(self, extension: str, module: str) -> None:
        c = ctypes
        self.name = extension
        self.api = api = ctypes.CDLL(importlib.import_module(extension).__file__)
        api.sqlite3_libversion.restype = c.c_char_p
        if api.sqlite3_libversion().decode() != importlib.import_module(module).sqlite_version:
            raise ImportError(f"{extension} does not export the SQLite that {module} reports")
        api.sqlite3_auto_extension.argtypes = [c.c_void_p]
        api.sqlite3_db_filename.argtypes = [c.c_void_p, c.c_char_p]
        api.sqlite3_db_filename.restype = c.c_char_p
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
        handle = self.api.sqlite3_user_data(context) or 0
        self.set_result(context, f"{self.name}:{handle}:{_signature(self.name, handle)}")

    def _on_open(self, db: int, error_message: int, routines: int) -> int:
        """SQLite calls this for each new connection it opens: a connection to a claimed file gets a
        function that returns its own handle, signed; any other is left alone."""
        try:
            filename = self.api.sqlite3_db_filename(db, b"main")
            if filename and _is_claimed(filename.decode("utf-8", "surrogateescape")):
                self.api.sqlite3_create_function_v2(
                    db, TOKEN_FUNCTION.encode(), 0, SQLITE_UTF8, ctypes.c_void_p(db), self._token_callback, None, None, None
                )
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


def claim(path: str) -> list[Library]:
    """Reach the SQLite libraries and install the auto-extension in each (once), and have the
    connections opened to ``path`` from now on carry their handle, so functions registered on them can
    return readable errors."""
    global _libraries
    with _lock:
        if _libraries is None:
            _libraries = _load_libraries()
        for name in {os.path.abspath(path), os.path.realpath(path)}:
            _claimed.add(name)
            _claimed_names.add(os.path.basename(name))
        return _libraries


def connection_handle(conn: Any) -> tuple[Library, int] | None:
    """The library and ``sqlite3*`` of ``conn``, only when it carries a token one of them signed."""
    try:
        token = conn.execute(f"select {TOKEN_FUNCTION}()").fetchone()[0]
    except Exception:  # not a claimed file, a library we do not reach (its own error classes), or before claim()
        return None
    name, _, rest = token.partition(":") if isinstance(token, str) else ("", "", "")
    handle, _, signature = rest.partition(":")
    library = next((library for library in _libraries or [] if library.name == name), None)
    if library is None or not handle.isdigit() or not hmac.compare_digest(signature, _signature(name, int(handle))):
        return None
    return library, int(handle)


def create_function(
    conn: Any, name: str, arguments: int, function: Callable[..., Any],
    expected: tuple[type[Exception], ...] = (ValueError,),
) -> bool:
    """Register ``function`` as ``name`` on ``conn``; True when errors will carry their message.

    Exceptions of the ``expected`` types are shown as they are; anything else is shown with its type,
    since it is a bug rather than a bad query.
    """
    found = connection_handle(conn)
    if found is None:
        conn.create_function(name, arguments, function)
        return False
    library, handle = found

    callback = _callback(library, name, function, expected)
    status = library.api.sqlite3_create_function_v2(
        handle, name.encode(), arguments, SQLITE_UTF8, None, callback, None, None, None
    )
    if status != 0:
        conn.create_function(name, arguments, function)
        return False
    return True


def _callback(library: Library, name: str, function: Callable[..., Any], expected: tuple[type[Exception], ...]) -> Any:
    """The C callback for ``function``, made once and shared by every connection it is registered on."""
    with _lock:
        found = _callbacks.get((library, name, function))
        if found is None:

            def call(context: int, count: int, values: Any) -> None:
                try:
                    library.set_result(context, function(*[library.argument(values[i]) for i in range(count)]))
                except expected as error:
                    library.set_error(context, f"{name}(): {error}")
                except Exception as error:  # a bug: still say what happened rather than crash the query
                    library.set_error(context, f"{name}() failed: {type(error).__name__}: {error}")

            found = _callbacks[(library, name, function)] = _CALLBACK(call)
        return found
