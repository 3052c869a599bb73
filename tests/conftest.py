"""Shared test setup: Flower never phones home from any process the tests start."""

from __future__ import annotations

import os

from fedcloud.env import FLOWER_QUIET_ENV

os.environ.update(FLOWER_QUIET_ENV)
