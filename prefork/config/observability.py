"""The settings of the Observability section: how the pool is seen from outside (the control
socket, Prometheus metrics, the log format, the access log). Listed in
:data:`prefork.config.SETTINGS` with the others."""

from __future__ import annotations

from prefork.config.convert import choice, metrics_address, optional_str
from prefork.config.setting import Setting

CONTROL_SOCKET: Setting[str | None] = Setting(
    name="control_socket",
    section="Observability",
    default=None,
    convert=optional_str,
    flags=("--control-socket",),
    metavar="PATH",
    help=(
        "The master's control socket (Unix, mode 0600), for prefork status and prefork ctl. "
        "Default (None): RUNTIME_DIR/prefork/NAME-PID.sock, logged at start; off: none."
    ),
)
METRICS: Setting[str | None] = Setting(
    name="metrics",
    section="Observability",
    default=None,
    convert=metrics_address,
    flags=("--metrics",),
    metavar="HOST:PORT",
    help=(
        "Serve Prometheus metrics (/metrics) and the status page (/status, /status?json) at "
        "HOST:PORT or unix:PATH, from a process the master supervises. Default (None): off."
    ),
)
LOG_FORMAT: Setting[str] = Setting(
    name="log_format",
    section="Observability",
    default="text",
    convert=lambda value: choice(value, ("text", "json")),
    flags=("--log-format",),
    metavar="FORMAT",
    help="text, or json: one JSON object per line for every log record, with pid, worker and level.",
)
ACCESS_LOG: Setting[str | None] = Setting(
    name="access_log",
    section="Observability",
    default=None,
    convert=optional_str,
    flags=("--access-log",),
    metavar="PATH",
    help=(
        "Log one line per connection (client, worker, duration, outcome) to PATH, or to "
        "stderr with -. Default (None): off."
    ),
)
