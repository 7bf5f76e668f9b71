"""default_n_threads: the CPUs this process may use, capped by OMP_NUM_THREADS."""

import os
import threading

import numpy as np
import pytest

from masker_wf import image, signal
from masker_wf._threads import default_n_threads


@pytest.fixture
def four_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_is_the_cpus_this_process_may_run_on(four_cpus):
    assert default_n_threads() == 4


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2", 2), ("1", 1), ("16", 4), ("3,2", 3), ("0", 4), ("-2", 4), ("many", 4), ("", 4)],
)
def test_omp_num_threads_lowers_it_when_valid(four_cpus, monkeypatch, value, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert default_n_threads() == expected


def test_falls_back_to_cpu_count_without_affinity(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_n_threads() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_n_threads() == 1


def test_the_real_affinity_is_used():
    # Whatever the machine: at least 1, never more than the CPUs the process may use.
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("OMP_NUM_THREADS", raising=False)
        assert 1 <= default_n_threads() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("n_threads", [1, 2])
def test_signal_chunks_run_on_that_many_threads(monkeypatch, n_threads):
    monkeypatch.setattr(signal, "default_n_threads", lambda: n_threads)
    threads = set()
    signal._run_chunks(lambda cols: threads.add(threading.get_ident()), [0, 1, 2, 3])
    in_caller = threads == {threading.get_ident()}
    assert in_caller == (n_threads == 1)


def test_core_loops_read_it_at_call_time(monkeypatch):
    # The count is not frozen at import: each call asks default_n_threads().
    calls = []

    def counted():
        calls.append(1)
        return 1

    monkeypatch.setattr(image, "default_n_threads", counted)
    data = np.random.default_rng(0).normal(size=(6, 6, 6, 4)).astype(np.float32)
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[1:5, 1:5, 1:5] = True
    one = image.smooth_masked(data, np.eye(4), 3.0, mask)
    assert calls
    # An explicit n_jobs still wins, with the same numbers.
    calls.clear()
    two = image.smooth_masked(data, np.eye(4), 3.0, mask, n_jobs=2)
    assert not calls
    np.testing.assert_array_equal(one, two)
