"""Whether a transfer's interface bytes are the client's own: judged against the transfer's
protobuf bytes with a framing allowance, or known not to be (loopback, declared shared)."""

from __future__ import annotations

from fedlora.common.netstat import (EXCLUSIVE, FRAMING_RATIO, FRAMING_SLACK_BYTES, SHARED, UNAVAILABLE,
                                    UNMEASURED_KEY, Counters, InterfaceMeter, Unmeasured, assess, judge)

MB = 1_000_000


def test_framing_within_the_allowance_is_the_transfers_own():
    v = judge(int(1.02 * MB), MB)
    assert v.kind == EXCLUSIVE and v.exclusive
    assert "1.02x the transfer's protobuf bytes" in v.reason
    edge = int(MB * FRAMING_RATIO + FRAMING_SLACK_BYTES)
    assert judge(edge, MB).kind == EXCLUSIVE and judge(edge + 1, MB).kind == SHARED


def test_an_interface_carrying_more_than_the_allowance_is_shared_with_the_ratio():
    v = judge(int(3.2 * MB), MB)
    assert v.kind == SHARED and not v.exclusive
    assert v.reason.startswith("its interface carried 3.20x the transfer's protobuf bytes, over ")
    assert v.reason.endswith("other traffic")


def test_fewer_bytes_than_the_transfer_are_not_its_path():
    v = judge(MB // 2, MB)
    assert v.kind == UNAVAILABLE and "not the transfer's path" in v.reason
    assert judge(5000, 0).kind == UNAVAILABLE


def test_the_coordinator_judges_the_reported_counter_of_each_direction():
    report = {"iface_up_tx_bytes": 3.2 * MB, "iface_up_rx_bytes": 0.01 * MB,
              "client_up_protobuf_bytes": float(MB),
              "iface_down_rx_bytes": 1.01 * MB, "iface_down_tx_bytes": 9.0 * MB,  # tx: not down's
              "client_down_protobuf_bytes": float(MB)}
    counted, v = assess("up", report)
    assert (counted, v.kind) == (3_200_000, SHARED)
    counted, v = assess("down", report)
    assert (counted, v.kind) == (1_010_000, EXCLUSIVE)


def test_static_causes_nothing_crossed_and_no_counters():
    loop = {UNMEASURED_KEY: float(Unmeasured.LOOPBACK), "client_up_protobuf_bytes": 10.0}
    assert assess("up", loop)[1].kind == SHARED and "loopback" in assess("up", loop)[1].reason
    declared = {UNMEASURED_KEY: float(Unmeasured.DECLARED_SHARED)}
    assert assess("down", declared)[1].reason == ("declared shared by the client's operator "
                                                  "(shared_interface)")
    assert assess("down", {UNMEASURED_KEY: float(Unmeasured.NO_COUNTERS)})[1].kind == UNAVAILABLE
    counted, v = assess("down", {"client_down_protobuf_bytes": 0.0})  # global state held
    assert (counted, v.kind, v.reason) == (None, UNAVAILABLE, "nothing crossed")
    counted, v = assess("up", {"client_up_protobuf_bytes": 10.0})  # an old client, or no report
    assert counted is None and v.kind == UNAVAILABLE
    assert assess("up", {"iface_up_tx_bytes": -1.0, "client_up_protobuf_bytes": 10.0})[0] is None


def test_a_client_on_loopback_or_declared_shared_reports_why_not_its_counters():
    meter = InterfaceMeter("127.0.0.1:50051")
    assert (meter.interface, meter.available, meter.unmeasured) == ("lo", False, Unmeasured.LOOPBACK)
    assert meter.report_metrics("up", None, 1234) == {"client_up_protobuf_bytes": 1234.0,
                                                       UNMEASURED_KEY: float(Unmeasured.LOOPBACK)}
    declared = InterfaceMeter("127.0.0.1:50051", declared_shared=True)
    assert declared.unmeasured == Unmeasured.DECLARED_SHARED and declared.read() is None
    assert "declared shared" in declared.reason


def test_a_measuring_client_reports_both_counters_and_its_own_bytes_which_the_coordinator_judges():
    meter = InterfaceMeter("127.0.0.1:50051")
    meter.unmeasured = None  # as on an interface of its own
    report = meter.report_metrics("up", Counters(rx=20_000, tx=3_200_000), 1_000_000)
    assert report == {"client_up_protobuf_bytes": 1e6, "iface_up_rx_bytes": 2e4, "iface_up_tx_bytes": 3.2e6}
    assert assess("up", report)[1].kind == SHARED


def _round_report(up_tx: float, quiet_rx: float, quiet_tx: float, seconds: float) -> dict[str, float]:
    """A client's report of a round with its quiet window (the interface while it trained)."""
    return {"iface_up_tx_bytes": up_tx, "iface_up_rx_bytes": 0.02 * up_tx,
            "client_up_protobuf_bytes": float(MB), "iface_quiet_seconds": seconds,
            "iface_quiet_rx_bytes": quiet_rx, "iface_quiet_tx_bytes": quiet_tx}


def test_retransmissions_on_an_interface_quiet_while_training_are_the_transfers_own():
    """A policed link: the compose cluster's slowest client counted 2.15x its download's bytes
    (dropped packets sent again) on a container interface of its own. Its interface moved only
    heartbeats while it trained, so the transfer is its own, retransmissions included."""
    counted, v = assess("up", _round_report(2.15 * MB, 900.0, 1100.0, 30.0))
    assert (counted, v.kind) == (2_150_000, EXCLUSIVE)
    assert "2.15x" in v.reason and "stayed quiet while the client trained" in v.reason


def test_an_interface_busy_while_the_client_trained_is_shared_with_what_it_moved():
    counted, v = assess("up", _round_report(1.01 * MB, 400_000.0, 112_000.0, 10.0))
    assert (counted, v.kind) == (1_010_000, SHARED)
    assert v.reason.startswith("its interface moved 512000 bytes in the 10.0s the client trained")


def test_a_report_without_a_quiet_window_is_judged_by_the_ratio_rule():
    """Reports of clients from before the quiet window (run folders kept on disk)."""
    report = _round_report(3.2 * MB, 0.0, 0.0, 1.0)
    for k in ("iface_quiet_seconds", "iface_quiet_rx_bytes", "iface_quiet_tx_bytes"):
        del report[k]
    assert assess("up", report)[1].kind == SHARED


def test_the_meter_reports_its_quiet_window_only_where_it_measures():
    meter = InterfaceMeter("127.0.0.1:1")  # loopback: nothing measured
    assert meter.quiet_metrics(Counters(5, 7), 3.0) == {}
