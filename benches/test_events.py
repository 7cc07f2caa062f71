"""Job-event logging: events per second and analyze_resumption_state, this
package against py-data-juicer 1.6.1. The package's cases skip with "events
module not available" until its events module is installed."""

from __future__ import annotations

import itertools

import pytest

from data_juicer_accel.bench import events as ev

IMPLS = ev.implementations()
EVENTS = {"accel": 200_000, "reference": 20_000}
ANALYSIS_EVENTS = 100_000


def _module(name):
    module = IMPLS[name]
    if module is None:
        if name == "accel":
            pytest.skip(f"{ev.NOT_AVAILABLE}: {ev.ACCEL_MODULE} cannot be imported")
        pytest.skip("py-data-juicer is not installed")
    return module


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("sink", ev.SINKS)
@pytest.mark.parametrize("call", ev.CALLS)
@pytest.mark.parametrize("impl", ["accel", "reference"])
def test_log_events(benchmark, impl, call, sink, threads, tmp_path):
    """``call`` from ``threads`` threads until all lines are in the file;
    events_case checks the file holds one line per event."""
    module = _module(impl)
    benchmark.group = f"events, {call}, {sink} sink, {threads} thread(s)"
    counter = itertools.count()

    def setup():
        return (module, str(tmp_path / f"run-{next(counter)}"), EVENTS[impl], threads, sink, call), {}

    benchmark.pedantic(ev.events_case, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info["events"] = EVENTS[impl]
    benchmark.extra_info["events_per_s"] = EVENTS[impl] / benchmark.stats.stats.median


@pytest.fixture(scope="module")
def event_log(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("analysis") / "events_bench.jsonl")
    lines = ev.write_event_log(path, ANALYSIS_EVENTS)
    return path, lines


@pytest.fixture(scope="module")
def reference_answer(event_log, tmp_path_factory):
    if IMPLS["reference"] is None:
        return None
    _, result = ev.analysis_case(IMPLS["reference"], str(tmp_path_factory.mktemp("ref")), event_log[0])
    return ev.analysis_summary(result)


@pytest.mark.parametrize("impl", ["accel", "reference"])
def test_analyze_resumption_state(benchmark, impl, event_log, reference_answer, tmp_path):
    module = _module(impl)
    benchmark.group = "analyze_resumption_state"
    path, lines = event_log
    counter = itertools.count()

    def setup():
        return (module, str(tmp_path / f"run-{next(counter)}"), path), {}

    _, result = benchmark.pedantic(ev.analysis_case, setup=setup, rounds=3, iterations=1)
    answer = ev.analysis_summary(result)
    assert answer["total_events"] == lines
    if reference_answer is not None:
        assert answer == reference_answer
    benchmark.extra_info["events"] = lines
