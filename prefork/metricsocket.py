"""The metrics address (``--metrics``): binding it in the master, naming it, closing it.

The master binds it (:func:`bind_metrics`) while it starts, before any fork; the exporter
process (:mod:`prefork.exporter`) serves it. A TCP port is bound with ``SO_REUSEPORT`` and a
Unix path renamed over the old socket, so that the new master of a USR2 upgrade can serve the
same address while the old one stops.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import weakref

#: Listen backlog of the metrics socket: scrapers are few, but a burst of browsers or a
#: reconnecting Prometheus must not see ECONNREFUSED while the accept thread catches up.
BACKLOG = 64

# Unix sockets bound here: path, device and inode of the socket file, for close_metrics().
_UNIX_PATHS: weakref.WeakKeyDictionary[socket.socket, tuple[str, int, int]] = weakref.WeakKeyDictionary()


def bind_metrics(address: str, *, takeover: bool = False) -> socket.socket:
    """A listening socket for ``address``: ``HOST:PORT`` (TCP; ``[::1]:PORT`` for IPv6, an
    empty HOST for all IPv4 interfaces, PORT 0 for any free port) or ``unix:PATH``. Runs in
    the master before it forks anything (a Unix path is bound under a temporary umask, which
    is process-wide).

    A Unix socket is created mode 0600. A socket file left at PATH by a dead process is
    removed first (after ``lstat``: only a socket, and only when nothing accepts on it); any
    other file, or a symlink, is left alone, and the bind fails with EADDRINUSE. With
    ``takeover`` (the new master of a USR2 upgrade) the socket is bound beside PATH and renamed
    over the old master's live one. A TCP socket has SO_REUSEPORT, so that new master binds
    the port while the old one still serves it.

    Raises ValueError (a one-line message) when ``address`` is malformed or its host does not
    resolve; OSError when the socket cannot be bound (EADDRINUSE, EACCES...).
    """
    if address.startswith("unix:"):
        return _bind_unix(address[len("unix:") :], takeover)
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"metrics address {address!r} is not HOST:PORT or unix:PATH")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(
            host or "0.0.0.0", int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"metrics address {address!r}: cannot resolve {host!r} ({exc})") from None
    family, kind, proto, _, sockaddr = infos[0]
    if not takeover and int(port_text):  # nobody else may serve there (SO_REUSEPORT would share)
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):  # the new master of a USR2 upgrade binds it too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(path: str, takeover: bool) -> socket.socket:
    if not path or "\0" in path:
        raise ValueError(f"metrics address 'unix:{path}' needs a path")
    if not takeover:
        _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            if takeover:  # bound beside, then renamed over the old master's live socket
                beside = f"{path}.{os.urandom(8).hex()}.tmp"
                sock.bind(beside)
                try:
                    with contextlib.suppress(FileNotFoundError):
                        if not stat.S_ISSOCK(os.lstat(path).st_mode):
                            raise FileExistsError(errno.EEXIST, "a file that is not a socket is there", path)
                    os.replace(beside, path)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(beside)
            else:
                sock.bind(path)
        finally:
            os.umask(old_umask)
        status = os.lstat(path)
        _UNIX_PATHS[sock] = (path, status.st_dev, status.st_ino)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    """Remove the socket file at ``path`` if nothing accepts on it. Raises OSError
    (EADDRINUSE) when a live process listens there."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        except OSError:
            return  # let bind() report it
    raise OSError(errno.EADDRINUSE, f"a process already listens on {path}")


def close_metrics(sock: socket.socket) -> None:
    """Close a socket of :func:`bind_metrics`; for a Unix socket, also remove its file if it
    is still the one bound here (not replaced since). Runs in the master, at exit."""
    bound = _UNIX_PATHS.pop(sock, None)
    sock.close()
    if bound is not None:
        path, device, inode = bound
        with contextlib.suppress(OSError):
            status = os.lstat(path)
            if (status.st_dev, status.st_ino) == (device, inode):
                os.unlink(path)


def metrics_url(sock: socket.socket) -> str:
    """Where ``sock`` (of :func:`bind_metrics`) listens, for the snapshot and the logs:
    ``http://HOST:PORT`` (``[HOST]`` for IPv6) or ``unix:PATH``."""
    if sock.family == socket.AF_UNIX:
        bound = _UNIX_PATHS.get(sock)  # the path asked for, not the name bound before a rename
        return f"unix:{bound[0] if bound else sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"
