"""The `i2x` console script of the i2x-explain distribution.

It lives outside the `i2x` namespace on purpose: PyPI's unrelated `i2x` distribution (PNNL's
Interconnection Innovation e-Xchange) is a regular package with its own `i2x/__init__.py`. When it
sits in another sys.path entry than I2X (e.g. I2X installed editable, or in a different
site-packages), Python imports it instead of I2X's namespace and `i2x.cli` does not exist. This
entry point says so in one line instead of a traceback (tests/test_packaging.py shows both cases).
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from i2x.cli import main as cli_main
    except ModuleNotFoundError as exc:
        if exc.name not in ("i2x.cli", "i2x"):
            raise
        import i2x

        where = getattr(i2x, "__file__", None) or list(getattr(i2x, "__path__", []))
        print(f"i2x: another package named `i2x` ({where}) hides I2X (i2x-explain); remove it with "
              "`pip uninstall i2x`, or install I2X into the same site-packages", file=sys.stderr)
        return 2
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
