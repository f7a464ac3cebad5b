"""Real WSGI applications served by ``python -m prefork module:app`` in tests/test_wsgi_apps.py.

- ``flask_app``: a Flask app (``app``, and the factory ``create_app()``);
- ``django_app``: a single-file Django project (``application``);
- ``validated``: a plain WSGI app wrapped in :func:`wsgiref.validate.validator` (``app``).

Each sends the file named by the environment variable ``WSGI_APPS_FILE`` (default: its own
source) through ``wsgi.file_wrapper``; :func:`record_file_wrapper` tells the client whether the
server's wrapper was used. The apps are imported by module name and by file path
(``tests/wsgi_apps/flask_app.py:app``; ``python -m`` puts the repository on ``sys.path``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]

#: Response header naming the class of the server's ``wsgi.file_wrapper`` when the app called it.
FILE_WRAPPER_HEADER = "X-File-Wrapper"
#: Response header: "yes" when the iterable the app returned is the object that call made (so
#: the server can recognise it and send the file with sendfile), "no" when it is something else.
FILE_WRAPPER_RETURNED_HEADER = "X-File-Wrapper-Returned"


def served_file(default: str) -> Path:
    """The file the apps' file endpoints send: ``$WSGI_APPS_FILE``, else ``default``."""
    return Path(os.environ.get("WSGI_APPS_FILE") or default)


def record_file_wrapper(app: WSGIApplication) -> WSGIApplication:
    """Wrap ``app`` so that its response says whether it used the server's ``wsgi.file_wrapper``.

    The environ's ``wsgi.file_wrapper`` becomes a function calling the server's and remembering
    what it made. The app's ``start_response`` call is held until the app returns its iterable
    (no byte of the response is sent before that, as PEP 3333 allows), then passed on with
    :data:`FILE_WRAPPER_HEADER` and :data:`FILE_WRAPPER_RETURNED_HEADER` added when the wrapper
    was called. The iterable is returned untouched. A response started only while the server
    iterates is passed on at once; the legacy ``write()`` is refused (no app here uses it).
    """

    def recording(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        made: list[object] = []
        server_wrapper = environ.get("wsgi.file_wrapper")
        if server_wrapper is not None:

            def file_wrapper(*args: Any) -> Any:
                wrapper = server_wrapper(*args)
                made.append(wrapper)
                return wrapper

            environ["wsgi.file_wrapper"] = file_wrapper
        held: list[tuple[str, list[tuple[str, str]], ExcInfo | None]] = []
        returned = False

        def refuse_write(data: bytes) -> object:
            raise NotImplementedError("record_file_wrapper: the wrapped app may not call write()")

        def holding(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
        ) -> Callable[[bytes], object]:
            if returned:
                return start_response(status, headers, exc_info)
            held[:] = [(status, headers, exc_info)]
            return refuse_write

        iterable = app(environ, holding)
        returned = True
        if held:
            status, headers, exc_info = held[0]
            if made:
                kind = type(made[0])
                headers = [
                    *headers,
                    (FILE_WRAPPER_HEADER, f"{kind.__module__}.{kind.__qualname__}"),
                    (FILE_WRAPPER_RETURNED_HEADER, "yes" if iterable is made[0] else "no"),
                ]
            start_response(status, headers, exc_info)
        return iterable

    return recording
