"""bench.bench_driver's arithmetic and report (the bench itself starts 200 simulated meters)."""

from __future__ import annotations

from bench.bench_driver import Window, figures, report, sdm630_fields, totals


def windows() -> list[Window]:
    return [
        Window("bare", 1000, 0.10, 5.0, 0),
        Window("driver", 1000, 0.15, 5.0, 0),
        Window("bare", 1000, 0.14, 5.0, 0),
        Window("driver", 2000, 0.30, 10.0, 1),
    ]


def test_totals_add_reads_and_cpu_of_one_reader() -> None:
    bare = totals(windows(), "bare")
    assert (bare.reads, round(bare.cpu_s, 9), bare.late_cycles) == (2000, 0.24, 0)
    assert round(bare.cpu_per_1000_reads_ms, 6) == 120.0
    assert totals(windows(), "driver").late_cycles == 1


def test_the_figure_is_the_driver_over_the_bare_loop_per_read() -> None:
    (fig,) = figures(windows(), 200)
    assert round(fig.value, 6) == 150.0 and fig.peer_value is not None and round(fig.peer_value, 6) == 120.0
    assert fig.ratio is not None and round(fig.ratio, 6) == 1.25


def test_report_gives_the_ratio_of_the_totals_and_of_each_pair() -> None:
    text = report(windows(), "none")
    assert "driver / bare CPU per read: 1.25 (totals), per pair 1.50, 1.07" in text


def test_the_bare_loop_decodes_the_profiles_thirteen_float32_values_of_one_block() -> None:
    fields = sdm630_fields()
    assert len(fields) == 13
    assert (min(f.address for f in fields), max(f.address for f in fields)) == (0x0000, 0x004A)
