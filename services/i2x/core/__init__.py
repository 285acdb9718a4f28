"""The I2X method: pure functions and scikit-learn-style estimators, no I/O (see docs/INTERNALS.md)."""
