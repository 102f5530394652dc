"""The committed stubs are exactly what grpcio-tools generates from the .proto."""

from fedlora.proto import build


def test_regenerated_stubs_equal_committed(tmp_path):
    generated = build.generate(tmp_path)
    for rel, data in generated.items():
        assert (build.PROTO_DIR / rel).read_bytes() == data, f"proto/{rel} is stale: run make proto"


def test_package_is_versioned():
    from fedlora.proto.v1 import fedlora_pb2

    assert fedlora_pb2.DESCRIPTOR.package == "fedlora.v1"
    assert "Coordinator" in fedlora_pb2.DESCRIPTOR.services_by_name
