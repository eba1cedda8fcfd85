"""Connections: listeners, handshake checks, admission, drain, workers."""

from .serve import Server, serve

__all__ = ["Server", "serve"]
