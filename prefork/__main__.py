"""``python -m prefork``: the ``prefork`` command."""

from prefork.cli import run

if __name__ == "__main__":
    run()
