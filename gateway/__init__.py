"""acs-media-gateway: a Trio media gateway for Azure Communication Services audio streaming."""

__version__ = "0.1.0"
