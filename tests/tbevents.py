"""Reading TensorBoard event files without TensorBoard (or TensorFlow): the TFRecord framing
(length, masked CRC-32C of the length, data, masked CRC-32C of the data) around serialized
``Event`` protos, checked as TensorBoard's reader checks it."""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path

from tensorboardX.crc32c import crc32c
from tensorboardX.proto.event_pb2 import Event


def _masked(data: bytes) -> int:
    x = crc32c(data) & 0xFFFFFFFF
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path: Path) -> list[Event]:
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        header = data[i:i + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[i + 8:i + 12])[0] == _masked(header), f"{path}: bad length CRC at {i}"
        body = data[i + 12:i + 12 + length]
        assert len(body) == length, f"{path}: cut short at {i}"
        assert struct.unpack("<I", data[i + 12 + length:i + 16 + length])[0] == _masked(body), \
            f"{path}: bad data CRC at {i}"
        out.append(Event.FromString(body))
        i += 16 + length
    return out


def scalars(folder: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """run (the event file's folder relative to ``folder``, "." for its own) -> tag -> the
    (step, value) pairs in file order, over every event file below ``folder``; values to the
    7 digits a float32 ``simple_value`` holds (0.2 reads back as 0.2, not 0.20000000298)."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for f in sorted(folder.rglob("events.out.tfevents.*")):
        events = read_events(f)
        assert events and events[0].file_version == "brain.Event:2", f
        run = str(f.parent.relative_to(folder))
        for ev in events[1:]:
            for v in ev.summary.value:
                out[run][v.tag].append((ev.step, float(f"{v.simple_value:.7g}")))
    return {run: dict(tags) for run, tags in out.items()}
