"""The standard library's own server tests, run with the prefork classes swapped in (see
README.md in this directory)."""
