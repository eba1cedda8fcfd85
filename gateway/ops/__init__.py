"""Operations: what a service manager or a cluster talks to (systemd, health, metrics)."""
