"""Service wiring and shutdown order, the pidfile, logging setup."""
