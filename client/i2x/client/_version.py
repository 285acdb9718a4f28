"""The I2X version (`i2x --version`, run.json's i2x_version); pyproject.toml's [project] version
says the same (tests/test_packaging.py checks the built wheel)."""

__version__ = "0.1.0"
