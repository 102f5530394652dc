"""Protocol constants both ends share: defined here once."""

from __future__ import annotations

PROTOCOL = "fedlora.v1"                 # JoinRequest.protocol; the proto package
DEFAULT_CHUNK_BYTES = 1 << 20           # chunk size unless the run spec says otherwise
MAX_CHUNK_BYTES = 3 << 20               # keeps every gRPC message under the 4 MiB default limit
MIN_CHUNK_BYTES = 1 << 10
HEADER_SLACK = 64 << 10                 # safetensors header + codec metadata allowance on an upload
MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + (64 << 10)  # largest gRPC message a coordinator accepts
PROBE_MAX_BYTES = 256 << 20             # largest link probe either way
# Streaming calls (Upload, ProbeUpload) carry the session in their call metadata under this key,
# so the coordinator checks it before it reads (and waits on) the first message of the stream.
SESSION_METADATA = "fedlora-session"
# Plan.report: the client measures the round's model on the run's test split and reports it
# (methods whose global model lives on the clients)
REPORT_TEST_ACCURACY = "test_accuracy"

# Liveness. The coordinator asks for a Heartbeat every client_timeout_s / HEARTBEATS_PER_TIMEOUT
# seconds (RunSpec.heartbeat_s), so a client must miss several in a row before it is given up.
HEARTBEATS_PER_TIMEOUT = 4
LONG_POLL_MAX_S = 60.0                  # longest GetTask hold the coordinator grants
LONG_POLL_S = 30                        # what clients ask for (TaskRequest.wait_seconds)
CALL_TIMEOUT_S = 30.0                   # deadline of one unary call (beyond any long-poll hold)
# Client retries after a transient failure: exponential from RETRY_FIRST_S, capped at
# RETRY_MAX_S, full jitter (so clients cut off together do not come back together).
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
