"""Loading TARGET: the handler class the ``prefork`` command serves, and importing it again.

TARGET is ``module:Handler``, ``path/to/file.py:Handler``, or a module or file alone (its
``Handler``, or its only request handler class). A WSGI application instead of a handler
class (``module:app``, or a module alone with an ``application`` or ``app``) is served by
:class:`~prefork.wsgi.handler.WSGIRequestHandler`; ``module:create_app()`` calls a factory for
it, with literal arguments if any (``module:create_app('production')``), as gunicorn's.
With ``--preload`` the master imports it once (:func:`load_target`) and the workers share
it. Without, the master imports it only to check it and forgets the modules that import
added (:func:`check_target`), and every worker imports it afresh in ``post_fork()``
(:class:`ReimportingMixIn`), so a HUP serves edited code.
Errors say why in one line (:class:`~prefork.command.UsageError`).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import json
import os
import select
import signal
import socketserver
import sys
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

from prefork.command import UsageError
from prefork.logs import flush_std_streams
from prefork.messages import describe_exit
from prefork.server import PreforkMixIn
from prefork.sockets import is_http_handler, is_wsgi_handler

if TYPE_CHECKING:
    from prefork.workers.base import Worker


def load_target(target: str) -> type[socketserver.BaseRequestHandler]:
    """Import the handler class named by ``target``. Raises UsageError saying why not."""
    module_name, _, attr = target.partition(":")
    try:
        module = _import(module_name)
    except UsageError:
        raise
    except BaseException as exc:  # anything the user's module raises, SystemExit included
        raise UsageError(f"cannot import {_shown(target)}: {type(exc).__name__}: {exc}") from None
    name, args, kwargs = _factory_call(target, attr)
    if name:
        obj: Any = module
        for part in name.split("."):
            if not hasattr(obj, part):
                raise UsageError(f"cannot load {_shown(target)}: {module_name!r} has no attribute {part!r}")
            obj = getattr(obj, part)
    else:
        obj = _find_handler(module, target)
    if isinstance(obj, type) and issubclass(obj, socketserver.BaseRequestHandler) and args is None:
        return obj
    if args is not None:
        if not callable(obj):
            raise UsageError(f"cannot load {_shown(target)}: {name!r} is not callable")
        try:
            obj = obj(*args, **kwargs)
        except BaseException as exc:  # anything the factory raises, SystemExit included
            why = f"{name}() raised {type(exc).__name__}: {exc}"
            raise UsageError(f"cannot load {_shown(target)}: {why}") from None
    if isinstance(obj, type) or not callable(obj):
        what = "a socketserver.BaseRequestHandler subclass nor a WSGI application"
        raise UsageError(f"{_shown(target)} is neither {what}")
    from prefork.wsgi.handler import wsgi_handler  # imports httptools: only for WSGI

    return wsgi_handler(obj)


def _factory_call(target: str, attr: str) -> tuple[str, tuple[Any, ...] | None, dict[str, Any]]:
    """Split ``NAME`` or ``NAME(ARGS)`` into the name, the positional arguments (None for
    no call) and the keyword arguments. Raises UsageError when ARGS are not literals."""
    if not attr.endswith(")"):
        return attr, None, {}
    name, _, rest = attr.partition("(")
    refused = UsageError(f"cannot load {_shown(target)}: a factory's arguments must be literals")
    try:
        call = ast.parse(f"f({rest}", mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f"):
            raise refused  # f(1)(2), f(1).x(): one call of the name, nothing more
        if any(kw.arg is None for kw in call.keywords):
            raise refused  # **mapping
        args = tuple(ast.literal_eval(arg) for arg in call.args)
        kwargs = {str(kw.arg): ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        raise refused from None
    return name.strip(), args, kwargs


def _shown(target: str, most: int = 200) -> str:
    """``target`` quoted for a message, cut at ``most`` characters."""
    return repr(target if len(target) <= most else target[:most] + "...")


def _import(name: str) -> Any:
    if name.endswith(".py") or os.sep in name:
        if not os.path.isfile(name):
            raise UsageError(f"cannot import {name!r}: no such file")
        sys.path.insert(0, os.path.dirname(os.path.realpath(name)))
        stem = os.path.splitext(os.path.basename(name))[0]
        spec = importlib.util.spec_from_file_location(stem, name)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot import {name!r}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[stem] = module
        spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path:  # as `python -m` does, so local modules are found
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(name)


def _find_handler(module: Any, target: str) -> Any:
    if hasattr(module, "Handler"):
        return module.Handler
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, socketserver.BaseRequestHandler)
        and obj.__module__ == module.__name__
    ]
    if len(found) == 1:
        return found[0]
    for name in ("application", "app"):  # a WSGI application, as gunicorn's default name
        if not found and callable(getattr(module, name, None)):
            return getattr(module, name)
    names = ", ".join(sorted(o.__name__ for o in found)) or "none"
    raise UsageError(f"{_shown(target)}: name the handler as TARGET:NAME (handler classes found: {names})")


#: Seconds the check of TARGET (its import in a short-lived child) may take.
CHECK_TIMEOUT = 300.0
#: The most bytes of facts the checking child may send.
_MAX_FACTS = 1 << 20


def check_target(target: str) -> type[socketserver.BaseRequestHandler]:
    """Check that ``target`` loads (as :func:`load_target`) without keeping any of it here:
    the import runs in a short-lived child process, which sends back only the facts the
    master needs (the handler's name, the kind of handler, the standard library modules it
    imported), so the master stays as small as Python with prefork imported, and each
    worker imports TARGET afresh (``post_fork()``: a HUP serves edited code).

    Returns a stand-in for the handler class, of the same kind (a subclass of the
    ``http.server``, stream, datagram or base handler), named as it. The standard library's
    modules the target imported are imported here too, so a worker's boot does not pay for
    ``http.server`` or ``email`` again (they cannot change without a new interpreter, which
    takes a USR2 upgrade). Module-level code of the target runs once in the child, never in
    the master. Runs in the master (single-threaded: it forks), without ``--preload``.
    Raises UsageError saying why the target cannot be loaded, or when the check takes over
    :data:`CHECK_TIMEOUT` seconds.
    """
    flush_std_streams()
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        raise UsageError(f"cannot check {_shown(target)}: fork() failed: {exc.strerror or exc}") from None
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _check_in_child(target, write_end)
    os.close(write_end)
    deadline = time.monotonic() + CHECK_TIMEOUT
    status: int | None = None
    try:
        data = _read_facts(read_end, deadline)
        status = _wait_child(pid, deadline)
    finally:
        os.close(read_end)
        if status is None:  # the timeout, a KeyboardInterrupt: the child goes too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    try:
        facts = json.loads(data)
    except ValueError:
        how = describe_exit(os.waitstatus_to_exitcode(status))
        raise UsageError(f"cannot import {_shown(target)}: the check {how} before it said why") from None
    if "error" in facts:
        raise UsageError(str(facts["error"]))
    for name in facts["stdlib"]:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    return stand_in(str(facts["name"]), str(facts["kind"]))


#: Standard library modules the master does not import after a check: they act when imported.
_NOT_AGAIN = frozenset(("__main__", "antigravity", "this"))


def _check_in_child(target: str, write_end: int) -> NoReturn:
    """The checking child: load ``target``, write its facts as one line of JSON to
    ``write_end``, leave with ``os._exit`` (never returning into the master's code)."""
    try:
        before = set(sys.modules)
        try:
            handler = load_target(target)
            added = set(sys.modules) - before - _NOT_AGAIN
            stdlib = [n for n in added if _is_stdlib(n, sys.modules[n]) or n in sys.builtin_module_names]
            facts: dict[str, Any] = {"name": handler.__name__, "kind": handler_kind(handler)}
            facts["stdlib"] = sorted(stdlib)
        except UsageError as exc:
            facts = {"error": str(exc)}
        except BaseException as exc:  # what load_target lets through: an attribute that raises
            facts = {"error": f"cannot load {_shown(target)}: {type(exc).__name__}: {exc}"}
        data = json.dumps(facts).encode() + b"\n"
        while data:
            data = data[os.write(write_end, data) :]
    finally:
        flush_std_streams()
        os._exit(0)


def _read_facts(fd: int, deadline: float) -> bytes:
    """The line of facts the checking child writes to ``fd`` (up to its newline, or what came
    before the pipe closed: a process the target forked may hold it open), at most
    :data:`_MAX_FACTS` bytes. Raises UsageError after ``deadline`` (monotonic seconds)."""
    data = b""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while not data.endswith(b"\n") and len(data) <= _MAX_FACTS:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise UsageError(f"checking TARGET took over {CHECK_TIMEOUT:g} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def _wait_child(pid: int, deadline: float) -> int:
    """The wait status of the checking child ``pid``, once it has exited. Raises UsageError
    after ``deadline`` (monotonic seconds)."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            raise UsageError(f"checking TARGET took over {CHECK_TIMEOUT:g} s")
        time.sleep(0.005)


def handler_kind(handler: type[socketserver.BaseRequestHandler]) -> str:
    """``wsgi`` (a WSGI application's), ``http`` (an ``http.server`` handler, XML-RPC's
    included), ``stream``, ``datagram`` or ``base``: what the master needs to know of a
    handler class to serve it."""
    if is_wsgi_handler(handler):
        return "wsgi"
    if is_http_handler(handler):
        return "http"
    if issubclass(handler, socketserver.StreamRequestHandler):
        return "stream"
    return "datagram" if issubclass(handler, socketserver.DatagramRequestHandler) else "base"


def stand_in(name: str, kind: str) -> type[socketserver.BaseRequestHandler]:
    """A handler class named ``name`` of ``kind`` (:func:`handler_kind`), standing in for the
    one the workers import: the master's servers hold it until ``post_fork()`` sets the real
    one. It serves nothing."""
    base: type[socketserver.BaseRequestHandler] = {
        "stream": socketserver.StreamRequestHandler,
        "datagram": socketserver.DatagramRequestHandler,
    }.get(kind, socketserver.BaseRequestHandler)
    if kind == "http":
        import http.server

        base = http.server.BaseHTTPRequestHandler
    elif kind == "wsgi":
        from prefork.wsgi.handler import WSGIRequestHandler

        base = WSGIRequestHandler
    return type(name, (base,), {"__doc__": "Stands in for TARGET's handler in the master."})


#: The directory of the standard library's pure-Python modules (where ``os`` comes from).
STDLIB_DIR = os.path.dirname(os.__file__) + os.sep


def _is_stdlib(name: str, module: ModuleType) -> bool:
    """True for a module of the standard library: a name it documents, loaded from its
    directory (not a user's module of the same name, nor a package in site-packages)."""
    path = getattr(module, "__file__", None) or ""
    return (
        name.partition(".")[0] in sys.stdlib_module_names
        and path.startswith(STDLIB_DIR)
        and "-packages" + os.sep not in path[len(STDLIB_DIR) :]
    )


def invalidate_path_caches() -> None:
    """Make the import system look again at the directories of ``sys.path``, so that a module
    file added since this process last imported from there is found: each path entry
    finder's ``invalidate_caches()``, and the negative (None) entries dropped.

    This is what ``importlib.invalidate_caches()`` does for ``sys.path``, less its import of
    ``importlib.metadata`` (Python >= 3.12: 20 to 40 ms, and from the standard library's
    directory, which a worker that switched users may not be allowed to read).
    """
    cache = sys.path_importer_cache
    for path, finder in list(cache.items()):
        if finder is None:
            del cache[path]
        elif hasattr(finder, "invalidate_caches"):
            finder.invalidate_caches()


class ReimportingMixIn(PreforkMixIn):
    """Mixed in front of the CLI's pool server without ``--preload``: each worker imports
    ``target`` afresh in ``post_fork()``, so new workers (after a HUP) serve edited code."""

    #: The TARGET to import, as given on the command line.
    target: str = ""

    def post_fork(self, worker: Worker) -> None:
        """Import ``target`` and serve its handler on this server and its ``listeners``. Runs
        in each worker. An import error raises: a boot failure, handled by the master."""
        invalidate_path_caches()  # a file added since the master started is found
        handler = load_target(self.target)
        for server in (self, *self.listeners):
            server.RequestHandlerClass = handler
        super().post_fork(worker)


def reimporting(cls: type[PreforkMixIn], target: str) -> type[PreforkMixIn]:
    """Return ``cls`` with :class:`ReimportingMixIn` in front, importing ``target``."""
    return type(cls.__name__, (ReimportingMixIn, cls), {"target": target})
