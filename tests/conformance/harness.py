"""Building the conformance cases from the standard library's own tests.

Each ``test_*.py`` of this directory imports a stdlib test module from the running
interpreter's ``test`` package (never a copy) and defines, for each stdlib ``TestCase`` class it
takes, a subclass built by :func:`conform`: the same test methods, run by pytest as ordinary
unittest cases, with the prefork classes swapped in. The swap sets globals of the stdlib test
module (``socketserver``, ``HTTPServer``, ``xmlrpc``, ...) for the duration of one case only; a
cleanup puts the originals back. A global that names a library module is replaced by a copy of
that module (:func:`module_with`) holding the prefork classes, so only the test module's own
code sees them.

A case that cannot apply to a prefork server is kept, and skipped with a reason that starts
with :data:`NOT_APPLICABLE`; a case left out entirely (one about ``ThreadingMixIn``, say) is not
collected at all. The README of this directory lists both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import types
import unittest
from collections.abc import Callable, Collection, Mapping
from typing import Any, ClassVar

import pytest

#: What the suite needs of the interpreter's ``test`` package.
STDLIB_TEST_MODULES = (
    "test.support",
    "test.test_socketserver",
    "test.test_httpservers",
    "test.test_xmlrpc",
    "test.test_wsgiref",
)

#: How the skip reason of every not-applicable case starts.
NOT_APPLICABLE = "not applicable: "

#: The one warning the conformance modules let pass (``pytestmark``; pytest turns every other
#: into an error): 3.12+ warns when the test process forks while it runs other threads, as
#: every stdlib case here does (its server or its client runs in a thread).
FORK_WITH_THREADS = (
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"
    ":DeprecationWarning"
)

#: The swaps of one case: stdlib test module global name -> the value it has during the case.
Swaps = Mapping[str, object]

_MISSING = object()


def load(name: str) -> types.ModuleType | None:
    """Import the stdlib test module ``name``; None when this interpreter has no ``test``
    package (or the module skips itself), in which case the calling module defines no case and
    ``test_stdlib_tests_present.py`` fails, naming what is missing."""
    try:
        return importlib.import_module(name)
    except (ImportError, unittest.SkipTest):
        return None


def module_with(module: types.ModuleType, **overrides: object) -> types.ModuleType:
    """A new module object holding ``module``'s names, with ``overrides`` in place of some:
    made a global of a stdlib test module, it changes what that module's code finds through it
    (``socketserver.ForkingTCPServer``) and nothing anywhere else."""
    copy = types.ModuleType(module.__name__, module.__doc__)
    vars(copy).update(vars(module))
    vars(copy).update(overrides)
    return copy


def swap_globals(case: unittest.TestCase, module: types.ModuleType, values: Swaps) -> None:
    """Set globals of ``module`` until ``case`` ends: each cleanup puts one back (unittest
    runs cleanups after ``tearDown()``, last registered first)."""
    for name, value in values.items():
        case.addCleanup(_restore, module, name, vars(module).get(name, _MISSING))
        setattr(module, name, value)


def _restore(module: types.ModuleType, name: str, value: object) -> None:
    if value is _MISSING:
        delattr(module, name)
    else:
        setattr(module, name, value)


class Swapping(unittest.TestCase):
    """The first base of every conformance case: swaps the globals of :attr:`stdlib_module`
    that :meth:`swaps` returns, then runs the stdlib ``setUp()``."""

    #: The stdlib test module whose globals are swapped.
    stdlib_module: ClassVar[types.ModuleType]

    def swaps(self) -> Swaps:
        """The globals to swap for this case (called once per case, so that classes a case
        modifies, such as ``SimpleXMLRPCServer._send_traceback_header``, are its own). May
        register cleanups on ``self``: they run after the stdlib's own."""
        raise NotImplementedError

    def setUp(self) -> None:
        swap_globals(self, self.stdlib_module, self.swaps())
        super().setUp()


def _not_applicable(reason: str) -> Callable[..., None]:
    @unittest.skip(NOT_APPLICABLE + reason)
    def case(self: unittest.TestCase) -> None:  # pragma: no cover - never runs
        raise AssertionError("skipped")

    return case


def _known_bug(method: Callable[[unittest.TestCase], object], bug: KnownBug) -> Callable[..., None]:
    def case(self: unittest.TestCase) -> None:
        # subtests would report the failures apart, and the case itself as an XPASS
        vars(self)["subTest"] = lambda *args, **params: contextlib.nullcontext()
        method(self)

    functools.update_wrapper(case, method)
    return pytest.mark.xfail(reason=f"prefork bug: {bug.reason}", raises=bug.raises, strict=True)(case)


@dataclasses.dataclass(frozen=True)
class KnownBug:
    """A prefork bug that makes a conformance case fail: the case is an expected failure
    (strict: once the bug is fixed it passes, and the suite fails until this is removed)."""

    reason: str
    raises: type[BaseException]


def conform(
    base: type[unittest.TestCase],
    swapping: type[Swapping],
    *,
    module: str,
    mixins: tuple[type[unittest.TestCase], ...] = (),
    only: Collection[str] | None = None,
    not_applicable: Mapping[str, str] | None = None,
    known_bugs: Mapping[str, KnownBug] | None = None,
) -> type[unittest.TestCase]:
    """The stdlib ``base`` TestCase with the swaps of ``swapping`` (a :class:`Swapping`
    subclass), named as ``base`` and placed in the test module ``module``.

    ``only``: the test methods to take (default: all of ``base``'s); the others are not
    collected. ``not_applicable``: test method name -> why it cannot apply to a prefork server;
    such a case is skipped before its ``setUp()`` with that reason. ``known_bugs``: test method
    name -> the prefork bug that makes it fail (a strict expected failure). ``mixins`` come
    between the swapping and ``base`` (their ``setUp()`` runs after the swap, around the
    stdlib's).
    """
    reasons = dict(not_applicable or {})
    bugs = dict(known_bugs or {})
    names = unittest.TestLoader().getTestCaseNames(base)
    namespace: dict[str, Any] = {"__module__": module, "__qualname__": base.__name__}
    namespace["__doc__"] = f"{base.__module__}.{base.__qualname__}, with the prefork classes swapped in."
    for name in names:
        if only is not None and name not in only:
            namespace[name] = None  # unittest (and so pytest) collects only callables
        elif name in reasons:
            namespace[name] = _not_applicable(reasons[name])
        elif name in bugs:
            namespace[name] = _known_bug(getattr(base, name), bugs[name])
    unknown = set(reasons).union(only or (), bugs).difference(names)
    if unknown:  # a stale list would silently take nothing, or skip nothing
        raise LookupError(f"{base.__qualname__} has no test method {sorted(unknown)}")
    return type(base.__name__, (swapping, *mixins, base), namespace)
