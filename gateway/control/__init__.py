"""The Call Automation control plane: answering calls, their callbacks, and call control."""
