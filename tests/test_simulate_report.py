"""The simulator's report: histograms, totals, JSON, thresholds, its own health."""

from __future__ import annotations

import orjson
import pytest

from gateway.simulate.checks import checks, missed, parse_threshold
from gateway.simulate.report import Report
from gateway.simulate.results import CallResult, Histogram, SimulatorHealth, Timeline


def test_histogram_percentiles_and_merge():
    h = Histogram()
    for ms in range(1, 101):  # 1..100 ms
        h.add(ms / 1000)
    assert h.count == 100
    assert h.percentile(50) == 50.0
    assert h.percentile(99) == 99.0
    assert h.percentile(100) == 100.0
    other = Histogram()
    other.add(0.5)
    other.add(-0.001)  # a clock read just before the deadline counts as on time
    h.merge(other)
    assert h.percentile(100) == 500.0 and h.count == 102
    assert h.percentile(0.5) == 0.0
    assert Histogram.from_json(orjson.loads(orjson.dumps(h.to_json()))).counts == h.counts
    assert Histogram().percentile(50) is None


def _call(index, **fields):
    call = CallResult(index, f"id-{index}", connected=True, **fields)
    return call


def test_totals_add_up_calls():
    a = _call(0, frames_sent=100, frames_received=90, first_audio_ms=10.0, stop_audio=1)
    a.stop_latencies_ms = [40.0]
    a.rtt.add(0.002)
    a.error("closed_1011")
    b = _call(1, frames_sent=50, frames_received=50, first_audio_ms=30.0, hung_up=True)
    b.rtt.add(0.004)
    b.error("closed_1011")
    c = CallResult(2, "id-2")
    c.error("connect_refused")
    health = SimulatorHealth([1.0, 2.0], [10.0, 10.0])
    t = Report([a, b, c], health).totals()
    assert (t["calls"], t["calls_connected"], t["calls_failed"], t["calls_hung_up"]) == (3, 2, 3, 1)
    assert (t["frames_sent"], t["frames_received"], t["stop_audio"]) == (150, 140, 1)
    assert (t["first_audio_p50_ms"], t["first_audio_max_ms"]) == (10.0, 30.0)
    assert (t["rtt_frames"], t["rtt_p50_ms"], t["rtt_max_ms"]) == (2, 2.0, 4.0)
    assert t["stop_latency_max_ms"] == 40.0
    assert t["errors"] == 3 and t["errors_by_kind"] == {"closed_1011": 2, "connect_refused": 1}
    assert t["simulator_cpu_pct"] == 30.0
    assert t["simulator_cpu_pct_per_process"] == [10.0, 20.0]


def test_call_results_survive_json_between_processes():
    call = _call(3, frames_sent=7, first_audio_ms=12.5)
    call.rtt.add(0.0031)
    call.timeline = Timeline(speech=[[0.0, 1.0]], dtmf=[(0.5, "5")], rtt=[(0.1, 3.1)], end=2.0)
    call.timeline.add_bot_audio(0.1, 0.02)
    call.timeline.add_bot_audio(0.121, 0.02)  # continues the stretch
    call.timeline.add_bot_audio(0.5, 0.02)  # a new one
    call.timeline.stop_audio(0.51)  # ACS drops the rest
    assert call.timeline.bot == [[0.1, pytest.approx(0.141)], [0.5, 0.51]]
    back = CallResult.from_json(orjson.loads(orjson.dumps(call.to_json())))
    assert back.to_json() == call.to_json()
    assert back.rtt.percentile(50) == 3.1


def test_the_report_says_when_the_simulator_fell_behind():
    calm = SimulatorHealth([0.5], [10.0])
    for _ in range(1000):
        calm.send_lateness.add(0.0005)
    assert calm.behind() == []
    late = SimulatorHealth([9.5], [10.0])
    for _ in range(95):
        late.send_lateness.add(0.0005)
    for _ in range(5):
        late.send_lateness.add(0.030)
    why = late.behind()
    assert any("p99 30.0 ms" in w for w in why)
    assert any("30.0 ms late" in w for w in why)
    assert any("95.0% of its core" in w for w in why)
    table = Report([_call(0)], late).table()
    assert "WARNING: the simulator fell behind" in table
    assert "fell behind" not in Report([_call(0)], calm).table()
    assert Report([_call(0)], late).to_json()["totals"]["simulator_fell_behind"] is True


def test_thresholds():
    assert parse_threshold("rtt_p99_ms=50") == ("rtt_p99_ms", 50.0)
    with pytest.raises(ValueError, match="METRIC one of"):
        parse_threshold("nonsense=1")
    with pytest.raises(ValueError, match="not a number"):
        parse_threshold("errors=lots")
    totals = {"rtt_p99_ms": 20.0, "errors": 0, "stop_latency_p95_ms": None, "calls_connected": 9}
    assert missed(totals, [("rtt_p99_ms", 50), ("errors", 0)], [("calls_connected", 9)]) == []
    out = missed(
        totals,
        [("rtt_p99_ms", 10), ("stop_latency_p95_ms", 500)],
        [("calls_connected", 10)],
    )
    assert out == [
        "rtt_p99_ms = 20.0, above the maximum 10",
        "stop_latency_p95_ms was not measured (maximum 500)",  # no barge-in happened
        "calls_connected = 9, below the minimum 10",
    ]


def _calm() -> SimulatorHealth:
    health = SimulatorHealth([0.5], [10.0])
    for _ in range(100):
        health.send_lateness.add(0.0005)
    return health


def test_echo_faults_and_the_overloaded_side():
    lossy = _call(0, frames_sent=100, echoed=60, echo_expected=100, reordered=2, mismatched=1)
    lossy.rtt.add(0.150)
    report = Report([lossy, _call(1, frames_sent=100, echoed=100, echo_expected=100)], _calm())
    t = report.totals()
    assert t["expect"] == "echo"  # auto: frames came back
    assert (t["lost"], t["lost_pct"], t["reordered"], t["corrupted"]) == (40, 20.0, 2, 1)
    side, why = report.overload()
    assert side == "gateway"
    assert "40 of 200 frames never echoed (20.0%)" in why[0] and "p99 150.0 ms" in why[1]
    assert "simulator kept time" in why[2]
    assert "WARNING: the gateway fell behind" in report.table()
    per_call = report.to_json()["calls"]
    assert [c["lost"] for c in per_call] == [40, 0] and per_call[0]["corrupted"] == 1
    # the same calls against a bot: nothing came back as an echo, no echo accounting
    bot = Report([_call(0, frames_sent=100, echo_expected=100, unmatched=50)], _calm())
    assert bot.totals()["lost"] == bot.totals()["corrupted"] == 0
    assert bot.overload() == (None, [])
    forced = Report(bot.calls, _calm(), {"expect": "echo"})
    assert forced.totals()["lost"] == 100 and forced.totals()["corrupted"] == 50
    # a late simulator is named as the side that fell behind, not the gateway
    late = SimulatorHealth([9.5], [10.0])
    late.send_lateness.add(0.030)
    assert Report(report.calls, late).overload()[0] == "simulator"


def test_default_checks_fail_a_broken_run_unless_a_max_allows_it():
    call = _call(0, echoed=9, echo_expected=10, forms={"pascal": 9, "unrecognised": 1})
    call.ended("closed_early")
    call.ended("connection_lost")  # a call ends once
    report = Report([call], _calm())
    assert call.errors == {"closed_early": 1}
    failed = checks(report)
    assert "errors = 1 (closed_early: 1), above the maximum 0" in failed
    assert "lost = 1, above the maximum 0" in failed
    assert "unrecognised = 1, above the maximum 0" in failed
    allowed = [("errors", 1), ("lost", 1), ("unrecognised", 1)]
    assert checks(report, allowed) == []
    assert checks(report, allowed, require_form="sdk") == [
        "9 message(s) in the pascal form, not sdk (--require-form)"
    ]
    assert "no call connected" in checks(Report([CallResult(0, "x")], _calm()))
