"""What a WSGI server adds to a prefork server: the application it serves and the environ its
requests share (:class:`WSGIServerMixIn`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prefork.version import __version__
from prefork.wsgi.environ import base_environ
from prefork.wsgi.response import FileWrapper

if TYPE_CHECKING:
    from prefork.accesslog import AccessLog
    from prefork.config.convert import Network

#: A WSGI application (PEP 3333): called with the environ and ``start_response``.
WSGIApplication = Callable[..., Iterable[bytes]]


class WSGIServerMixIn:
    """What a WSGI server adds to a prefork server: the application (as wsgiref's
    ``WSGIServer``: ``set_app()``, ``get_app()``) and the environ its requests share."""

    #: The application, when the handler class names none (``set_app()``).
    application: WSGIApplication | None = None
    #: Each request is written to the access log by the handler (its request line, status
    #: and size, as gunicorn's), not each connection by the worker.
    logs_requests: bool = True
    #: The environ every request of this server shares, built on the first request
    #: (:meth:`wsgi_environ`).
    _wsgi_base: dict[str, Any] | None = None

    # The prefork server's (settings, the edge, the access log), which this is mixed into.
    server_address: Any
    edge: Any
    access: AccessLog | None
    keepalive: float
    limit_request_line: int
    limit_request_fields: int
    limit_request_field_size: int
    root_path: str
    forwarded_allow_ips: tuple[Network, ...] | None
    forwarded_header: str

    def set_app(self, application: WSGIApplication) -> None:
        """Serve ``application`` (as wsgiref's ``WSGIServer.set_app``). Call it in the
        master before ``serve_forever()``, so every worker inherits it."""
        self.application = application

    def get_app(self) -> WSGIApplication:
        """The application served. Raises RuntimeError when none was set."""
        if self.application is None:
            raise RuntimeError("no WSGI application: call set_app() or use wsgi_handler(app)")
        return self.application

    def wsgi_environ(self) -> dict[str, Any]:
        """The environ every request shares (server name and port, ``SCRIPT_NAME``, the
        ``wsgi.*`` keys). Built in the worker on its first request (``wsgi.multithread``
        says whether this worker serves in threads). May be extended."""
        base = self._wsgi_base
        if base is None:
            base = self._wsgi_base = base_environ(
                self.server_address,
                tls=self.edge is not None and self.edge.tls is not None,
                root_path=self.root_path,
                multithread=threading.current_thread() is not threading.main_thread(),
                file_wrapper=FileWrapper,
                version=__version__,
            )
        return base
