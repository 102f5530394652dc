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


@pytest.mark.parametrize("cid", ["..", ".", ".hidden", "a/b", "x" * 65])
def test_unsafe_client_ids_are_refused_in_server_and_client_configs(cid):
    from fedlora.common.config import ClientConfig

    with pytest.raises(ConfigError, match=r"clients\..*0\.id"):
        load_config(ServerConfig, None, {"clients": [{"id": cid, "token": "t"}], "min_clients": 1})
    with pytest.raises(ConfigError, match="client_id"):
        load_config(ClientConfig, None, {"client_id": cid, "insecure": True})


def test_a_shared_token_is_no_credential_but_a_token_per_client_is():
    shared = load_config(ServerConfig, None, {"clients": 2, "min_clients": 1, "token": "t"})
    assert "a shared `token` lets any client join as another" in shared.auth_error()
    own = load_config(ServerConfig, None, {"clients": [{"id": "a", "token": "x"}, {"id": "b", "token": "y"}],
                                           "min_clients": 1})
    assert own.auth_error() is None


def test_the_public_config_hides_every_token():
    from fedlora.common.config import public_config

    cfg = load_config(ServerConfig, None, {"clients": [{"id": "a", "token": "secret-a"}], "min_clients": 1})
    assert "secret-a" not in public_config(cfg) and '"id": "a"' in public_config(cfg)


def test_partition_by_column_needs_the_column_named():
    with pytest.raises(ConfigError, match="partition_column"):
        load_config(ServerConfig, None, {"data.dataset": "mine.csv", "data.partition": "column"})


def test_own_data_cannot_be_the_built_in_set():
    with pytest.raises(ConfigError, match="partition: 'own' needs a data file"):
        load_config(ServerConfig, None, {"data.partition": "own"})


def test_an_unset_partition_splits_the_built_in_set_and_leaves_a_file_to_its_clients():
    assert ServerConfig().data.split_plan(4, 0).scheme == "dirichlet"
    plan = load_config(ServerConfig, None, {"data.dataset": "mine.csv"}).data.split_plan(3, 7)
    assert (plan.scheme, plan.num_parts, plan.seed) == ("own", 3, 7)


def test_metrics_are_off_by_default_and_a_bad_metrics_port_is_named():
    assert load_config(ServerConfig, None, {}).metrics_port == 0
    assert load_config(ServerConfig, None, {"metrics_port": 9095}).metrics_port == 9095
    with pytest.raises(ConfigError, match=r"metrics_port: Input should be less than or equal to 65535"):
        load_config(ServerConfig, None, {"metrics_port": 70000})
    with pytest.raises(ConfigError, match=r"metrics_port: Input should be greater than or equal to 0"):
        load_config(ServerConfig, None, {"metrics_port": -1})
    with pytest.raises(ConfigError, match=r"metrics_port: 50051 is the gRPC port"):
        load_config(ServerConfig, None, {"metrics_port": 50051})
