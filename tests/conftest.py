"""Shared test setup: helpers importable from ``tests/support``; Flower never phones home."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fedcloud.core.flower import FLOWER_QUIET_ENV

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
os.environ.update(FLOWER_QUIET_ENV)
