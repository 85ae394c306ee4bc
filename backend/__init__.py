"""ScanTalk inference engine: run as `python -m backend` (see docs/protocol.md)."""

__version__ = "0.1.0"
