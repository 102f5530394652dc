"""Admission of what clients say about themselves: each bound on reports and profiles, and
the example counts the coordinator vouches for; no sockets, no processes."""

import pytest

from fedlora.common.config import ServerConfig
from fedlora.common.errors import Refused, Status
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.admission import (MAX_KEYS, MAX_NAME_CHARS, MAX_PROFILE_BYTES, MAX_TEXT_CHARS,
                                      ExampleCounts, check_decline, check_numbers, check_profile,
                                      fixed_counts)

MAX = 1000


def refusal(call) -> Refused:
    with pytest.raises(Refused) as e:
        call()
    assert e.value.code == Status.INVALID_ARGUMENT
    return e.value


def profile(**fields) -> pb.DeviceProfile:
    p = pb.DeviceProfile(num_examples=10, accelerator="cpu", accelerator_name="cpu",
                         examples_per_second=5.0)
    for k, v in fields.items():
        if k in ("layer_seconds", "extra"):
            getattr(p, k).update(v)
        else:
            setattr(p, k, v)
    return p


# ----------------------------------------------------------------- reports
def test_finite_metrics_within_bounds_pass():
    check_numbers("metrics", {"train_loss": 0.5, "iface_up_tx_bytes": -1.0})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_metric_that_is_not_finite_is_refused_naming_it(bad):
    e = refusal(lambda: check_numbers("metrics", {"train_loss": 0.5, "iface_up_tx_bytes": bad}))
    assert "metrics['iface_up_tx_bytes']" in e.message


def test_too_many_metric_keys_are_refused():
    e = refusal(lambda: check_numbers("metrics", {f"k{i}": 0.0 for i in range(MAX_KEYS + 1)}))
    assert f"{MAX_KEYS + 1} keys" in e.message


def test_a_metric_key_too_long_is_refused_without_echoing_it():
    key = "k" * (MAX_NAME_CHARS + 1)
    e = refusal(lambda: check_numbers("metrics", {key: 1.0}))
    assert "metrics" in e.message and len(e.message) < 200


def test_a_decline_reason_too_long_is_refused():
    check_decline("r" * MAX_TEXT_CHARS)
    e = refusal(lambda: check_decline("r" * (MAX_TEXT_CHARS + 1)))
    assert "decline_reason" in e.message


# ----------------------------------------------------------------- profiles
def test_a_plain_profile_passes():
    check_profile(profile(layer_seconds={"fwd.0": 0.1, "fixed": -0.01}, extra={"lora_a_digest": "0" * 64}), MAX)


@pytest.mark.parametrize("field", ["examples_per_second", "upload_bytes_per_second",
                                   "download_bytes_per_second"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_a_rate_that_is_not_a_finite_non_negative_number_is_refused(field, bad):
    e = refusal(lambda: check_profile(profile(**{field: bad}), MAX))
    assert f"profile.{field}" in e.message


def test_a_layer_time_that_is_not_finite_is_refused():
    e = refusal(lambda: check_profile(profile(layer_seconds={"fwd.0": float("nan")}), MAX))
    assert "profile.layer_seconds['fwd.0']" in e.message


@pytest.mark.parametrize("field", ["layer_seconds", "extra"])
def test_a_profile_map_with_too_many_keys_is_refused(field):
    values = {f"k{i}": 1.0 if field == "layer_seconds" else "v" for i in range(MAX_KEYS + 1)}
    e = refusal(lambda: check_profile(profile(**{field: values}), MAX))
    assert f"profile.{field}" in e.message


def test_an_extra_value_too_long_is_refused():
    e = refusal(lambda: check_profile(profile(extra={"note": "v" * (MAX_TEXT_CHARS + 1)}), MAX))
    assert "profile.extra['note']" in e.message


@pytest.mark.parametrize("field", ["accelerator", "accelerator_name"])
def test_an_accelerator_name_too_long_is_refused(field):
    e = refusal(lambda: check_profile(profile(**{field: "x" * (MAX_NAME_CHARS + 1)}), MAX))
    assert f"profile.{field}" in e.message


def test_a_profile_over_its_byte_size_is_refused_whole():
    extra = {f"k{i:03d}": "v" * MAX_TEXT_CHARS for i in range(MAX_KEYS)}  # each bound kept
    e = refusal(lambda: check_profile(profile(extra=extra), MAX))
    assert f"at most {MAX_PROFILE_BYTES}" in e.message


def test_a_count_over_the_configured_maximum_is_refused():
    e = refusal(lambda: check_profile(profile(num_examples=MAX + 1), MAX))
    assert "max_client_examples" in e.message


def test_the_configured_maximum_has_a_default_and_must_be_positive():
    assert ServerConfig().max_client_examples == 10_000_000
    with pytest.raises(ValueError, match="max_client_examples"):
        ServerConfig(max_client_examples=0)


# ----------------------------------------------------------------- vouched counts
def test_a_count_within_the_shard_is_fixed_on_first_declaration():
    counts = ExampleCounts(MAX, shard_sizes=[100, 50])
    assert counts.check("b", 1, 45) is True
    counts.fix("b", 45)
    assert counts.get("b") == 45 and counts.check("b", 1, 45) is False


def test_a_count_larger_than_the_clients_shard_is_refused():
    e = refusal(lambda: ExampleCounts(MAX, shard_sizes=[100, 50]).check("b", 1, 51))
    assert "50 examples of the shard" in e.message


def test_with_their_own_data_only_the_maximum_bounds_a_count():
    counts = ExampleCounts(MAX)
    assert counts.check("a", 0, MAX)
    refusal(lambda: counts.check("a", 0, MAX + 1))


def test_a_different_count_after_the_first_is_refused_naming_the_fixed_one():
    counts = ExampleCounts(MAX, fixed={"a": 40})
    e = refusal(lambda: counts.check("a", 0, 41))
    assert "declared 40 examples earlier" in e.message


def test_counts_fixed_by_a_run_are_read_back_from_its_records():
    recs = [{"type": "join", "client": "a"}, {"type": "examples", "client": "a", "num_examples": 40}]
    assert fixed_counts(recs) == {"a": 40}


def test_counts_are_not_shared_between_clients():
    counts = ExampleCounts(MAX, fixed={"a": 40})
    assert counts.check("b", 1, 41) and counts.get("b") is None

