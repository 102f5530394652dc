#!/bin/sh
# Roles: coordinator | client | health | any other command (run as given).
# Runs as root only for what needs it (certificates into the shared volume, tc shaping with
# NET_ADMIN), then execs fedlora as the unprivileged user `fedlora`; with `init: true` (compose)
# or `docker run --init`, SIGTERM reaches it at once.
#
# Environment:
#   FEDLORA_TLS        mutual (default) | server | off (plaintext, --insecure)
#   FEDLORA_OPEN_RUN   coordinator: 1 = serve without client credentials (--open-run; tests):
#                      needed with FEDLORA_TLS=server|off unless the config gives each client a token
#   FEDLORA_CERTS      certificate folder (a volume shared by all containers), default /certs
#   FEDLORA_CLIENT_IDS coordinator: ids to make client certificates for (comma-separated)
#   FEDLORA_HOSTS      coordinator: names clients dial it by (default coordinator,localhost,127.0.0.1)
#   FEDLORA_METRICS_PORT coordinator: serve Prometheus metrics on this port (--metrics-port); unset = off
#   FEDLORA_SERVER     client/health: coordinator address (default coordinator:50051 / 127.0.0.1:50051)
#   CLIENT_ID          client: its id
#   UP_MBIT DOWN_MBIT  client: link rates to shape eth0 to (needs cap NET_ADMIN); unset = unshaped
set -eu
role="${1:-coordinator}"
[ $# -gt 0 ] && shift
CERTS="${FEDLORA_CERTS:-/certs}"
TLS="${FEDLORA_TLS:-mutual}"
as_fedlora() {
  if [ "$(id -u)" = 0 ]; then exec setpriv --reuid=fedlora --regid=fedlora --init-groups "$@"; fi
  exec "$@"
}
wait_certs() {
  n=0
  until [ -f "$CERTS/ready" ]; do
    n=$((n + 1)); [ $n -gt 600 ] && { echo "no certificates in $CERTS after 600s" >&2; exit 1; }
    sleep 1
  done
}
case "$role" in
  coordinator)
    if [ "$TLS" != off ] && [ ! -f "$CERTS/ready" ]; then
      fedlora certs --out "$CERTS" --hosts "${FEDLORA_HOSTS:-coordinator,localhost,127.0.0.1}" \
        --clients "${FEDLORA_CLIENT_IDS:?set FEDLORA_CLIENT_IDS},health" >/dev/null
      chown -R fedlora:fedlora "$CERTS" && touch "$CERTS/ready"
    fi
    case "$TLS" in
      mutual) set -- --tls-cert "$CERTS/coordinator.pem" --tls-key "$CERTS/coordinator.key" --client-ca "$CERTS/ca.pem" "$@" ;;
      server) set -- --tls-cert "$CERTS/coordinator.pem" --tls-key "$CERTS/coordinator.key" "$@" ;;
      off) set -- --insecure "$@" ;;
    esac
    [ "${FEDLORA_OPEN_RUN:-0}" = 1 ] && set -- --open-run "$@"
    [ -n "${FEDLORA_METRICS_PORT:-}" ] && set -- --metrics-port "$FEDLORA_METRICS_PORT" "$@"
    as_fedlora fedlora server --host 0.0.0.0 --port 50051 --run-dir /runs/run "$@" ;;
  client)
    : "${CLIENT_ID:?set CLIENT_ID}"
    if [ -n "${UP_MBIT:-}${DOWN_MBIT:-}" ]; then
      fedlora shape --dev eth0 --up-mbit "${UP_MBIT:-0}" --down-mbit "${DOWN_MBIT:-0}"
    fi
    case "$TLS" in
      mutual) wait_certs; set -- --ca-cert "$CERTS/ca.pem" --cert "$CERTS/$CLIENT_ID.pem" --key "$CERTS/$CLIENT_ID.key" "$@" ;;
      server) wait_certs; set -- --ca-cert "$CERTS/ca.pem" "$@" ;;
      off) set -- --insecure "$@" ;;
    esac
    as_fedlora fedlora client --server "${FEDLORA_SERVER:-coordinator:50051}" --id "$CLIENT_ID" \
      --state-dir /runs/state "$@" ;;
  health)
    case "$TLS" in
      mutual) set -- --ca-cert "$CERTS/ca.pem" --cert "$CERTS/health.pem" --key "$CERTS/health.key" ;;
      server) set -- --ca-cert "$CERTS/ca.pem" ;;
      off) set -- --insecure ;;
    esac
    exec fedlora health --server "${FEDLORA_SERVER:-127.0.0.1:50051}" "$@" ;;
  *)
    exec "$role" "$@" ;;
esac
