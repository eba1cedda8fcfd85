"""Connections: listeners, handshake checks, admission, drain, workers."""

from .connection import ServerContext, serve_connection
from .serve import Server, serve
from .stats import ServerStats

__all__ = ["Server", "ServerContext", "ServerStats", "serve", "serve_connection"]
