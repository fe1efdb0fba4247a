"""Runtime drivers: the only code that acts on a host (see :mod:`reconciler.drivers.base`)."""
