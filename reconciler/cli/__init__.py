"""The ``zlayer`` command line (the only layer that uses click and rich)."""
