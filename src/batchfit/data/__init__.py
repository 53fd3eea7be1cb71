"""Input handling: in-memory arrays on the device (and, later, streams and Datasets)."""

AUTOTUNE = -1

__all__ = ["AUTOTUNE"]
