"""``bench.throughput --local``'s reading of the model server's slots (pure functions; the run itself is
``tests/test_bench_scripts.py``'s, marked ``local_model``)."""

from __future__ import annotations

import importlib

import pytest

throughput = importlib.import_module("bench.throughput")

# (time, slots processing): busy 0-1, idle 1-1.5, a failed read at 1.6, busy 1.7-2, idle from 2.1.
READINGS = [(0.0, 2), (0.5, 1), (1.0, 0), (1.5, 0), (1.6, -1), (1.7, 3), (2.0, 1), (2.1, 0)]


def test_the_busy_fraction_counts_the_readings_in_the_window_with_a_slot_processing() -> None:
    # In [0.5, 2.0]: 0.5 busy, 1.0 idle, 1.5 idle, 1.7 busy, 2.0 busy; the failed read is left out.
    assert throughput.busy_fraction(READINGS, 0.5, 2.0) == pytest.approx(3 / 5)


def test_idle_stretches_run_from_the_first_idle_reading_to_the_next_busy_one_or_the_window_end() -> None:
    assert throughput.idle_stretches(READINGS, 0.0, 2.5) == [(1.0, 1.7), (2.1, 2.5)]
