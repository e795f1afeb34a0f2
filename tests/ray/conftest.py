"""One small local Ray cluster for the tests of this package (2 CPUs, a small object store, no dashboard).

Ray is an optional extra (``aprompt[ray]``): without it every test here is skipped, saying why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import ray
except ImportError:  # the tests skip themselves, saying why
    ray = None

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[None]:
    """A local cluster whose worker processes can import this checkout (and ``tests``)."""
    if ray is None:
        pytest.skip("Ray is not installed (pip install 'aprompt[ray]')")
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), path) if p)
    ray.init(
        num_cpus=2,
        object_store_memory=200 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
        os.environ["PYTHONPATH"] = path
