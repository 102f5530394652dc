#!/usr/bin/env bash
# The compose cluster for real: installs Docker (Debian's docker.io and docker-compose v1) if
# missing, starts dockerd if none answers, builds the base image from debootstrap (no registry
# needed; kept if it exists), the wheelhouse and the image, runs deploy/docker-compose.yml with
# the quick overlay (2 rounds, default model and data, 4 clients on shaped links, mutual TLS),
# scrapes the coordinator's Prometheus endpoint once round 1 is done (a round, 4 clients
# connected, bytes per client), and checks the coordinator's summary.json: rounds done,
# accuracy present, interface bytes > 0 for every client both ways. Then a second run whose coordinator container is killed once,
# after its first round record: it must come back (restart policy, same run folder), its
# clients survive and join it again, and the run completes with the requested rounds.
# Everything it started (containers, networks, volumes, dockerd) is removed on exit, failure
# included. Needs root. Output: runs/compose-ci/.
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
t_up=$(date +%s)
# Its Prometheus endpoint, published on 127.0.0.1, scraped during the run: once a round is done
# it counts the round, the connected clients and every client's bytes.
while :; do
  rc=0
  "$root/.venv/bin/python" - "$out/scrape.txt" <<'PY' || rc=$?
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
NOT_YET = 3
try:
    text = urllib.request.urlopen("http://127.0.0.1:9095/metrics", timeout=5).read().decode()
except OSError:
    sys.exit(NOT_YET)  # not serving yet
got = {(s.name, tuple(sorted(s.labels.items()))): s.value
       for f in text_string_to_metric_families(text) for s in f.samples}
if got.get(("fedlora_round", ()), 0) < 1:
    sys.exit(NOT_YET)
open(sys.argv[1], "w").write(text)
assert got[("fedlora_clients_connected", ())] == 4, got[("fedlora_clients_connected", ())]
clients = {dict(k[1])["client"] for k in got if k[0] == "fedlora_bytes_total"}
assert clients == {f"client-{i}" for i in range(4)}, clients
print("metrics scraped after round 1: " + ", ".join(
    f"{k[0]}{dict(k[1]) or ''} {v:g}" for k, v in sorted(got.items()) if k[0] in
    ("fedlora_round", "fedlora_clients_connected", "fedlora_uploads_total")))
PY
  (( rc == 0 )) && break
  (( rc == 3 )) || { echo "the coordinator's metrics are wrong"; exit 1; }
  [[ $($DOCKER inspect -f '{{.State.Running}}' "$coordinator") == true ]] || {
    echo "the coordinator ended before its metrics showed a round"; exit 1; }
  (( $(date +%s) - t_up < 1500 )) || { echo "no round in the coordinator's metrics within 1500s"; exit 1; }
  sleep 2
done
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
        assert (c[d]["iface_bytes"] or 0) > 0, f"{cid} {d}: no interface bytes: {s['per_client_iface'][cid][d]}"
    print(f"{cid}: up payload {c['up']['payload_bytes']:,} B, wire {c['up']['iface_bytes']:,} B; "
          f"down payload {c['down']['payload_bytes']:,} B, wire {c['down']['iface_bytes']:,} B")
print(f"compose cluster: {s['rounds_completed']} rounds, final accuracy {s['final_accuracy']:.4f}")
PY

# ---------------------------------------------------------------------------------------------
# Scenario 2: the coordinator dies mid-run and comes back. It is killed from the host (SIGKILL to
# the container's init), as the OOM killer or a crash would end it: `docker kill` is an
# operator's stop, after which Docker does not apply the restart policy. What must hold whether
# or not the coordinator resumes its journal (before resume support it starts again from round 1
# on the same run folder): it restarts once, every client survives and joins it again, the run
# completes with the requested rounds, and every client exits 0.
echo "scenario: the coordinator is killed after its first round record"
compose down -v --remove-orphans >/dev/null 2>&1 || true
t1=$(date +%s)
compose up -d
coordinator="$(compose ps -q coordinator)"
inspect() { $DOCKER inspect -f "$1" "$coordinator"; }
round1='"type": "round", "time": [0-9.]+, "round": 1,'
until $DOCKER exec "$coordinator" grep -Eq "$round1" /runs/run/metrics.jsonl 2>/dev/null; do
  [[ $(inspect '{{.State.Running}}') == true ]] || { echo "the coordinator ended before round 1"; exit 1; }
  (( $(date +%s) - t1 < 1500 )) || { echo "no round 1 within 1500s"; exit 1; }
  sleep 1
done
kill -KILL "$(inspect '{{.State.Pid}}')"
echo "killed the coordinator container's init after round 1 ($(( $(date +%s) - t1 ))s in)"
until [[ $(inspect '{{.RestartCount}} {{.State.Running}}') == "1 true" ]]; do
  (( $(date +%s) - t1 < 1500 )) || { echo "the coordinator did not come back: $(inspect '{{.State.Status}}')"; exit 1; }
  sleep 1
done
echo "the coordinator is back ($(( $(date +%s) - t1 ))s in)"
until [[ $(inspect '{{.State.Status}}') == exited ]]; do
  (( $(date +%s) - t1 < 1800 )) || { echo "the restarted run did not finish within 1800s"; exit 1; }
  sleep 2
done
code=$(inspect '{{.State.ExitCode}}'); restarts=$(inspect '{{.RestartCount}}')
echo "coordinator exited with $code after $(( $(date +%s) - t1 ))s, restarted $restarts time(s)"
$DOCKER cp "$coordinator:/runs/run/summary.json" "$out/restart-summary.json"
$DOCKER cp "$coordinator:/runs/run/metrics.jsonl" "$out/restart-metrics.jsonl"
[[ $code == 0 && $restarts == 1 ]] || { echo "the restarted coordinator failed"; exit 1; }
for c in $(compose ps -q client-0 client-1 client-2 client-3); do  # they heard DONE: exit 0
  for _ in $(seq 60); do [[ $($DOCKER inspect -f '{{.State.Status}}' "$c") == exited ]] && break; sleep 1; done
  state=$($DOCKER inspect -f '{{.Name}} {{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' "$c")
  echo "client container: $state"
  [[ $state == *" exited 0 0" ]] || { echo "a client did not survive the coordinator's restart"; exit 1; }
done
"$root/.venv/bin/python" - "$out/restart-summary.json" "$out/restart-metrics.jsonl" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
recs = [json.loads(line) for line in open(sys.argv[2])]
want = s["rounds_requested"]
assert want == 2 and s["status"] == "complete", (want, s["status"], s.get("error"))
done = sorted({r["round"] for r in recs if r["type"] == "round" and r["round"] > 0})
assert done == list(range(1, want + 1)), done
# the restarted coordinator resumed its journal: each round is recorded once
assert s["rounds_completed"] == want and s["final_accuracy"] is not None, s["rounds_completed"]
joins = {}
for r in recs:
    if r["type"] == "join":
        joins[r["client"]] = joins.get(r["client"], 0) + 1
assert sorted(joins) == [f"client-{i}" for i in range(4)] and min(joins.values()) >= 2, joins
print(f"restart scenario: rounds {done} complete (summary rounds_completed {s['rounds_completed']}), "
      f"final accuracy {s['final_accuracy']:.4f}, joins per client {joins}")
PY
echo "compose-test: both scenarios passed ($(( $(date +%s) - t0 ))s)"
