"""The WebSocket layer: the socket transport, RFC 6455 framing, and the server connection."""
