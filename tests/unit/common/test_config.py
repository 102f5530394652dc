"""Configuration: one validated object; errors name the field, at the CLI as one line."""


import pytest

from fedlora.common.config import ConfigError, ServerConfig, load_config


def test_defaults_are_the_demo():
    cfg = load_config(ServerConfig, None, {})
    assert cfg.strategy == "fedavg-lora" and cfg.model == "default" and cfg.clients == 4


def test_bad_nested_field_is_named():
    with pytest.raises(ConfigError, match=r"training\.learning_rate: Input should be greater than 0"):
        load_config(ServerConfig, None, {"training.learning_rate": -1})


def test_unknown_field_is_named():
    with pytest.raises(ConfigError, match=r"adapter\.rnak: Extra inputs are not permitted"):
        load_config(ServerConfig, None, {"adapter.rnak": 4})


def test_min_clients_above_clients_is_refused():
    with pytest.raises(ConfigError, match="min_clients"):
        load_config(ServerConfig, None, {"clients": 2, "min_clients": 3})


def test_unknown_codec_stage_is_named():
    with pytest.raises(ConfigError, match=r"codec\.upload: .*unknown codec stage 'gzip'"):
        load_config(ServerConfig, None, {"codec.upload": ["gzip"]})


def test_file_and_overrides_merge(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rounds: 7\ntraining:\n  batch_size: 8\n")
    cfg = load_config(ServerConfig, f, {"training.batch_size": 16})
    assert cfg.rounds == 7 and cfg.training.batch_size == 16


def test_client_rank_above_the_adapter_rank_is_named():
    with pytest.raises(ConfigError, match=r"ranks\.cycle: rank 16 outside 1\.\.adapter\.rank \(8\)"):
        load_config(ServerConfig, None, {"ranks.cycle": [8, 16]})


def test_sa_fedlora_with_dp_is_refused():
    with pytest.raises(ConfigError, match=r"training\.dp: .*sa-fedlora"):
        load_config(ServerConfig, None, {"strategy": "sa-fedlora", "training.dp.enabled": True,
                                         "training.dp.target_epsilon": 3})


def test_unknown_strategy_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"strategy: unknown 'fedsgd' \(known: .*legend.*sa-fedlora"):
        load_config(ServerConfig, None, {"strategy": "fedsgd"})


def test_liveness_timeouts_are_validated_with_the_field_named():
    from fedlora.common.config import ClientConfig

    assert ServerConfig().client_timeout_s >= 60 and ClientConfig(insecure=True).coordinator_timeout_s >= 600
    with pytest.raises(ConfigError, match="client_timeout_s"):
        load_config(ServerConfig, None, {"client_timeout_s": 0})
    with pytest.raises(ConfigError, match="coordinator_timeout_s"):
        load_config(ClientConfig, None, {"insecure": True, "coordinator_timeout_s": -1})
