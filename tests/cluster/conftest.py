"""Tests against real Ray heads and nodes started with `ray start` (tests/cluster/rayhead.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))  # tinydata, client_for
