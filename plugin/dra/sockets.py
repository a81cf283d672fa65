"""A gRPC server on a unix socket that exists exactly while it serves: a stale socket file from an earlier run is
replaced, a live one (another process serving it) is left alone."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from plugin.server import MAX_SOCKET_PATH, ServeError, answers


def serve_unix(path: str, add_services: Callable[[grpc.Server], None], executor: ThreadPoolExecutor) -> grpc.Server:
    """A started server on `path` whose calls run on `executor` (a scope's: joined when it closes); ServeError
    (one line) when another live process serves it or it cannot be bound."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        if answers(path):
            raise ServeError(f"{path} is served by another running process; not taking it over")
        os.unlink(path)  # a stale socket from an earlier run
    server = grpc.server(executor)
    add_services(server)
    try:
        bound = server.add_insecure_port(f"unix://{path}")
    except RuntimeError:  # what grpcio raises for a failed bind
        bound = 0
    if not bound:
        too_long = len(os.fsencode(path)) > MAX_SOCKET_PATH
        raise ServeError(f"cannot bind {path}" + (f": longer than a unix socket path may be ({MAX_SOCKET_PATH} "
                                                  "bytes)" if too_long else ""))
    server.start()
    return server


def remove_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
