"""Shared test fixtures."""

import pytest
import torch


def _single_threaded():
    """Run the block on one torch thread, then restore the count the test started with."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread_per_test():
    """Every test runs on one torch thread, whatever the previous test left behind.

    The models here are tiny: with other processes on the machine, OpenMP threads waiting on a busy
    core make each op ~10x slower (a CIFAR-config run took 30 s instead of 2 s), and one thread is
    as fast when the machine is idle. ``famus train --threads N`` sets the count for the process
    and keeps it, so without this a test's speed would depend on which tests ran before it.
    """
    yield from _single_threaded()


@pytest.fixture
def one_thread():
    """Tiny models: with other processes on the machine, OpenMP threads waiting on a busy core make
    each op ~10x slower, and one thread is as fast when the machine is idle. (Every test already
    runs on one thread: see ``_one_thread_per_test``; this explicit fixture is kept for the tests
    that ask for it.)"""
    yield from _single_threaded()
