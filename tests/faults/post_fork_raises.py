"""A handler module whose import makes every worker's post_fork hook raise (CLI exit 3).

The CLI has no hook option, so importing this module (in the master, before the fork) replaces
``PreforkMixIn.post_fork``. Never import it in the test process."""

from __future__ import annotations

import socketserver

from prefork.server import PreforkMixIn
from prefork.workers import Worker


def _post_fork(self: PreforkMixIn, worker: Worker) -> None:
    raise ConnectionRefusedError("database at 10.9.9.9 refused the connection (on purpose)")


PreforkMixIn.post_fork = _post_fork  # type: ignore[method-assign]


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"never served\n")
