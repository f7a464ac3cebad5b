"""Fault injection (issue 3, items 8 and 9): real servers, real faults, each test printing and
asserting one measured figure (see :mod:`tests.faults.figures`)."""
