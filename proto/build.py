"""Regenerates the committed Python stubs from ``proto/v1/fedlora.proto``.

The stubs are committed so that installing fedlora needs no protoc; this module is the
single way to rebuild them, and the test suite checks that it reproduces the committed
files byte for byte. ``python -m fedlora.proto.build`` rewrites them in place.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
SOURCES = ["v1/fedlora.proto"]
GENERATED = ["v1/fedlora_pb2.py", "v1/fedlora_pb2.pyi", "v1/fedlora_pb2_grpc.py"]


def generate(out_dir: Path) -> dict[str, bytes]:
    """Runs protoc (from grpcio-tools) and returns the generated files by relative path.

    The proto folder is mounted at the virtual path ``fedlora/proto`` so the generated
    imports read ``from fedlora.proto.v1 import fedlora_pb2``.
    """
    from grpc_tools import protoc  # test/dev dependency only

    include = protoc._get_resource_file_name("grpc_tools", "_proto")  # well-known types
    args = [
        "protoc",
        f"-Ifedlora/proto={PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[f"fedlora/proto/{s}" for s in SOURCES],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    base = out_dir / "fedlora" / "proto"
    return {rel: (base / rel).read_bytes() for rel in GENERATED}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for rel, data in generate(Path(tmp)).items():
            (PROTO_DIR / rel).write_bytes(data)
            print(f"wrote proto/{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
