"""The version of prefork (``prefork.__version__``), in a module of its own so any module
can name it without importing the package's public names."""

__version__ = "0.1.0"
