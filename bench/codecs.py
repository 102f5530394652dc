"""Encode/decode throughput and size ratio of each codec stage and of typical chains.

    .venv/bin/python bench/codecs.py [--sizes 1,10,100] [--repeat 3]

The adapter is a dict of fp32 tensors of 1 MiB each (256 x 1024), values ~ N(0, 0.02^2), the
scale of LoRA deltas; random values are the hard case for zstd. Throughput is input MB
(10^6 bytes of fp32 tensors) per second of wall time, best of --repeat, on one thread.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fedlora.common.wire.blob import pack, unpack
from fedlora.common.wire.codec import Chain

CHAINS = [
    ["identity"], ["zstd:3"], ["fp16"], ["bf16"], ["int8:256"], ["topk:0.1"],
    ["fp16", "zstd:3"], ["int8:256", "zstd:3"], ["topk:0.1", "int8:256", "zstd:3"],
]


def adapter(mb: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = max(1, round(mb * 1e6 / (256 * 1024 * 4)))
    return {f"layer.{i}.lora": torch.randn(256, 1024, generator=g) * 0.02 for i in range(n)}


def bench(tensors: dict[str, torch.Tensor], specs: list[str], repeat: int) -> dict:
    raw = sum(t.numel() * 4 for t in tensors.values())
    enc_best = dec_best = float("inf")
    size = 0
    for _ in range(repeat):
        chain = Chain.parse(specs)  # fresh: no error-feedback residual carried between repeats
        t0 = time.perf_counter()
        blob = pack(tensors, {}, chain)
        enc_best = min(enc_best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        unpack(blob.data)
        dec_best = min(dec_best, time.perf_counter() - t0)
        size = blob.size
    return {"chain": "+".join(specs), "input_mb": raw / 1e6, "wire_mb": size / 1e6,
            "ratio": size / raw, "encode_mb_s": raw / 1e6 / enc_best, "decode_mb_s": raw / 1e6 / dec_best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,10,100")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for mb in [int(x) for x in args.sizes.split(",")]:
        tensors = adapter(mb)
        for specs in CHAINS:
            rows.append({"adapter_mb": mb, **bench(tensors, specs, args.repeat)})
    print(f"{'adapter':>8} {'chain':<24} {'wire MB':>9} {'ratio':>7} {'enc MB/s':>9} {'dec MB/s':>9}")
    for r in rows:
        print(f"{r['adapter_mb']:>6}MB {r['chain']:<24} {r['wire_mb']:>9.3f} {r['ratio']:>7.3f} "
              f"{r['encode_mb_s']:>9.1f} {r['decode_mb_s']:>9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
