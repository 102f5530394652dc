"""Everything that makes or reads the bytes fedlora moves: codec stages (:mod:`.codec`), the
self-describing safetensors blob (:mod:`.blob`), chunking and resumable reassembly
(:mod:`.chunks`), transfer statistics (:mod:`.stats`) and protocol constants
(:mod:`.protocol`). There is no other serialisation path, the torchrun path included."""
