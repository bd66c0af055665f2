"""bench.bench_resources' readings and verdict, on this process (the bench itself takes minutes)."""

from __future__ import annotations

import os

from bench.bench_resources import cpu_seconds, flat, open_fds, proc_status_kib, reset_peak, slope


def test_slope_is_the_least_squares_one() -> None:
    hours = [0.0, 1.0, 2.0, 3.0]
    assert slope(hours, [10.0, 10.5, 11.0, 11.5]) == 0.5
    assert slope(hours, [5.0, 5.0, 5.0, 5.0]) == 0.0
    assert abs(slope(hours, [1.0, 3.0, 2.0, 4.0]) - 0.8) < 1e-12


def test_flat_means_under_a_mebibyte_or_two_percent_and_under_one_descriptor() -> None:
    assert flat(0.5, 60.0, 0.0)
    assert not flat(1.5, 60.0, 0.0)  # 1.5 MiB > max(1, 1.2)
    assert flat(1.5, 100.0, 0.0)  # 2 % of 100 MiB
    assert not flat(0.0, 60.0, 1.0)


def test_proc_readings_of_this_process_move_with_what_it_does() -> None:
    pid = os.getpid()
    before = proc_status_kib(pid)
    assert before["VmRSS"] > 0 and before["VmHWM"] >= before["VmRSS"]
    fds = open_fds(pid)
    r, w = os.pipe()
    try:
        assert open_fds(pid) == fds + 2
    finally:
        os.close(r)
        os.close(w)
    block = b"\x01" * (64 * 2**20)  # written: resident
    grown = proc_status_kib(pid)["VmHWM"]
    assert grown >= before["VmRSS"] + 60 * 1024
    del block
    reset_peak(pid)
    assert proc_status_kib(pid)["VmHWM"] < grown - 32 * 1024
    cpu0, spins = cpu_seconds(pid), 0
    while cpu_seconds(pid) == cpu0:  # clock ticks: some work moves it
        spins += sum(range(10_000))
    assert cpu_seconds(pid) > cpu0
