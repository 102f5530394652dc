#!/usr/bin/env bash
# The compose cluster for real: installs Docker (Debian's docker.io and docker-compose v1) if
# missing, starts dockerd if none answers, builds the base image from debootstrap (no registry
# needed; kept if it exists), the wheelhouse and the image, runs deploy/docker-compose.yml with
# the quick overlay (2 rounds, default model and data, 4 clients on shaped links, mutual TLS),
# and checks the coordinator's summary.json: rounds done, accuracy present, interface bytes > 0
# for every client both ways. Everything it started (containers, networks, volumes, dockerd) is
# removed on exit, failure included. Needs root. Output: runs/compose-ci/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="$root/runs/compose-ci"
mkdir -p "$out"
DOCKER=/usr/bin/docker   # an older client on PATH may lack what is needed
PROJECT=fedlora-ci
IMAGE=fedlora:ci
dockerd_pid=""

need=()
[[ -x $DOCKER ]] || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  echo "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
compose() { FEDLORA_IMAGE=$IMAGE docker-compose -p "$PROJECT" -f deploy/docker-compose.yml -f deploy/compose.quick.yml "$@"; }

cleanup() {
  set +e
  compose logs --no-color > "$out/compose.log" 2>&1
  compose down -v --remove-orphans >/dev/null 2>&1
  if [[ -n $dockerd_pid ]]; then
    kill "$dockerd_pid" 2>/dev/null; wait "$dockerd_pid" 2>/dev/null
    echo "stopped the dockerd this script started (pid $dockerd_pid)"
  fi
}
trap cleanup EXIT

if ! $DOCKER info >/dev/null 2>&1; then
  dockerd >"$out/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do $DOCKER info >/dev/null 2>&1 && break; sleep 1; done
  $DOCKER info >/dev/null 2>&1 || { echo "dockerd did not start: $out/dockerd.log"; exit 1; }
fi

t0=$(date +%s)
DOCKER=$DOCKER bash docker/build-base.sh fedlora-base:bookworm
bash docker/build-wheelhouse.sh
$DOCKER build -q -t $IMAGE --build-arg BASE_IMAGE=fedlora-base:bookworm docker/ >/dev/null
echo "image $IMAGE built ($(( $(date +%s) - t0 ))s so far)"

compose down -v --remove-orphans >/dev/null 2>&1 || true
compose up -d
coordinator="$(compose ps -q coordinator)"
code="$(timeout 1500 $DOCKER wait "$coordinator")"
echo "coordinator exited with $code after $(( $(date +%s) - t0 ))s"
$DOCKER cp "$coordinator:/runs/run/summary.json" "$out/summary.json"
$DOCKER cp "$coordinator:/runs/run/metrics.jsonl" "$out/metrics.jsonl"
[[ $code == 0 ]] || { echo "the coordinator failed"; exit 1; }
"$root/.venv/bin/python" - "$out/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["status"] == "complete" and s["rounds_completed"] == 2, (s["status"], s.get("rounds_completed"))
assert s["final_accuracy"] is not None, "no accuracy"
clients = s["per_client"]
assert sorted(clients) == [f"client-{i}" for i in range(4)], sorted(clients)
for cid, c in sorted(clients.items()):
    for d in ("up", "down"):
        assert (c[d]["iface_bytes"] or 0) > 0, f"{cid} {d}: no interface bytes"
    print(f"{cid}: up payload {c['up']['payload_bytes']:,} B, wire {c['up']['iface_bytes']:,} B; "
          f"down payload {c['down']['payload_bytes']:,} B, wire {c['down']['iface_bytes']:,} B")
print(f"compose cluster: {s['rounds_completed']} rounds, final accuracy {s['final_accuracy']:.4f}")
PY
