"""The configs the deployments start the coordinator with pass validation and, where they
serve clients, the credentials check (docker compose, Kubernetes, `make demo`)."""

from pathlib import Path

import yaml

from fedlora.common.config import ServerConfig, load_config

DEPLOY = Path(__file__).parents[3] / "deploy"
MUTUAL = {"tls.cert": "c.pem", "tls.key": "c.key", "tls.client_ca": "ca.pem"}


def test_compose_demo_config_with_mutual_tls_has_credentials():
    # docker-compose.yml: --config demo.yaml --clients 4; the entrypoint adds mutual TLS
    cfg = load_config(ServerConfig, DEPLOY / "demo.yaml", {"clients": 4, **MUTUAL})
    assert cfg.auth_error() is None


def test_compose_plaintext_overlay_is_an_open_run():
    # compose.insecure.yml: FEDLORA_OPEN_RUN=1 -> --open-run
    overlay = yaml.safe_load((DEPLOY / "compose.insecure.yml").read_text())
    assert overlay["services"]["coordinator"]["environment"]["FEDLORA_OPEN_RUN"] == "1"
    cfg = load_config(ServerConfig, DEPLOY / "demo.yaml", {"clients": 4, "insecure": True,
                                                           "open_run": True})
    assert cfg.auth_error() is None


def test_without_credentials_the_demo_config_is_refused():
    cfg = load_config(ServerConfig, DEPLOY / "demo.yaml", {"clients": 4, "insecure": True})
    assert "no client credentials" in cfg.auth_error()


def test_k8s_run_config_with_mutual_tls_has_credentials(tmp_path):
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "fedlora.yaml").read_text()))
    run = next(d for d in docs if d and d["kind"] == "ConfigMap")["data"]["run.yaml"]
    (tmp_path / "run.yaml").write_text(run)
    cfg = load_config(ServerConfig, tmp_path / "run.yaml", MUTUAL)
    assert cfg.auth_error() is None


def test_a_tokens_file_and_a_run_config_load_together(tmp_path):
    from fedlora.deploy.tokens import write_tokens

    write_tokens(tmp_path / "tokens.yaml", ["a", "b", "c"])
    cfg = load_config(ServerConfig, [DEPLOY / "demo.yaml", tmp_path / "tokens.yaml"],
                      {"insecure": True})
    assert [e.id for e in cfg.client_entries()] == ["a", "b", "c"] and cfg.auth_error() is None


def test_compose_metrics_port_is_published_on_this_host_only_and_scraped():
    # docker-compose.yml: FEDLORA_METRICS_PORT -> the entrypoint's --metrics-port
    coordinator = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["coordinator"]
    port = int(coordinator["environment"]["FEDLORA_METRICS_PORT"])
    assert coordinator["ports"] == [f"127.0.0.1:{port}:{port}"]
    cfg = load_config(ServerConfig, DEPLOY / "demo.yaml", {"clients": 4, "port": 50051,
                                                           "metrics_port": port, **MUTUAL})
    assert cfg.metrics_port == port
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    assert [t for job in scrape for c in job["static_configs"] for t in c["targets"]] == \
        [f"coordinator:{port}"]
    entrypoint = (DEPLOY.parent / "docker" / "entrypoint.sh").read_text()
    assert '--metrics-port "$FEDLORA_METRICS_PORT"' in entrypoint
