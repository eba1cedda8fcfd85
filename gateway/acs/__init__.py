"""The ACS media-streaming protocol: packets, the codec, and the ACS (client) side of the wire."""
