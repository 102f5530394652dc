"""Protocol constants both ends share: defined here once."""

from __future__ import annotations

PROTOCOL = "fedlora.v1"                 # JoinRequest.protocol; the proto package
DEFAULT_CHUNK_BYTES = 1 << 20           # chunk size unless the run spec says otherwise
MAX_CHUNK_BYTES = 3 << 20               # keeps every gRPC message under the 4 MiB default limit
MIN_CHUNK_BYTES = 1 << 10
HEADER_SLACK = 64 << 10                 # safetensors header + codec metadata allowance on an upload
PROBE_MAX_BYTES = 256 << 20             # largest link probe either way
# Plan.report: the client measures the round's model on the run's test split and reports it
# (methods whose global model lives on the clients)
REPORT_TEST_ACCURACY = "test_accuracy"
