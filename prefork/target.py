"""Loading TARGET: the handler class the ``prefork`` command serves, and importing it again.

TARGET is ``module:Handler``, ``path/to/file.py:Handler``, or a module or file alone (its
``Handler``, or its only request handler class). With ``--preload`` the master imports it once
(:func:`load_target`) and the workers share it. Without, the master imports it only to check
it and forgets the modules that import added (:func:`check_target`), and every worker imports
it afresh in ``post_fork()`` (:class:`ReimportingMixIn`), so a HUP serves edited code.
Errors say why in one line (:class:`~prefork.command.UsageError`).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import socketserver
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from prefork.command import UsageError
from prefork.server import PreforkMixIn

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
        raise UsageError(f"cannot import {target!r}: {type(exc).__name__}: {exc}") from None
    if attr:
        obj: Any = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise UsageError(f"cannot load {target!r}: {module_name!r} has no attribute {part!r}")
            obj = getattr(obj, part)
    else:
        obj = _find_handler(module, target)
    if not (isinstance(obj, type) and issubclass(obj, socketserver.BaseRequestHandler)):
        raise UsageError(f"{target!r} is not a socketserver.BaseRequestHandler subclass")
    return obj


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
    if len(found) != 1:
        names = ", ".join(sorted(o.__name__ for o in found)) or "none"
        raise UsageError(f"{target!r}: name the handler as {target}:NAME (handler classes found: {names})")
    return found[0]


def check_target(target: str) -> type[socketserver.BaseRequestHandler]:
    """Import the handler class named by ``target`` as :func:`load_target`, then forget the
    modules that import added (``sys.modules``), so that workers import them afresh.

    The standard library's modules stay (they cannot change without a new interpreter, which
    takes a USR2 upgrade), so a worker imports only the user's and third-party modules: the
    target's own code and its packages are fresh after a HUP, and a worker's boot does not
    pay for ``http.server`` or ``email`` again. Extension and built-in modules stay too: most
    cannot be initialised twice in one process. Module-level code of the target has run in
    the master, once. Runs in the master, without ``--preload``. Raises UsageError saying why
    the target cannot be loaded.
    """
    before = set(sys.modules)
    try:
        return load_target(target)
    finally:
        for name in set(sys.modules) - before:
            module = sys.modules.get(name)
            if module is None or not (_is_extension(module) or _is_stdlib(name, module)):
                sys.modules.pop(name, None)


def _is_extension(module: ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None) or ""
    return origin == "built-in" or origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


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
