"""Fixtures: a fresh server per test (cheap), one cluster per test module
that asks for it, and a seeded random generator."""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator

import pytest
from servers import Cluster, Server


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.kill()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.kill()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded generator: ``FENCELOCK_SEED`` or one from the test's name,
    printed on failure by the report header."""
    seed = int(os.environ.get("FENCELOCK_SEED", "0")) or zlib.crc32(request.node.name.encode())
    print(f"seed {seed} (FENCELOCK_SEED={seed} repeats it)")
    return random.Random(seed)
