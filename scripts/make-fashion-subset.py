#!/usr/bin/env python3
"""Writes data/fashion-mnist/heldout-1000.u8: the first 1000 images of Fashion-MNIST's test set
(t10k) with their labels, as 1000 records of 784 pixel bytes (row-major, 0 = white background
as in the IDX files) and one label byte. Reads Debian's dataset-fashion-mnist package
(scripts/install-fashion-mnist.sh installs it). Standard library only."""
import gzip
import pathlib
import struct
import sys

SRC = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
OUT = pathlib.Path(__file__).resolve().parent.parent / "data" / "fashion-mnist" / "heldout-1000.u8"
N = 1000

with gzip.open(SRC / "t10k-images-idx3-ubyte.gz") as f:
    magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
    assert magic == 0x803 and rows == 28 and cols == 28, (magic, rows, cols)
    images = f.read(N * 784)
with gzip.open(SRC / "t10k-labels-idx1-ubyte.gz") as f:
    magic, n = struct.unpack(">II", f.read(8))
    assert magic == 0x801
    labels = f.read(N)
out = bytearray()
for i in range(N):
    out += images[i * 784:(i + 1) * 784]
    out.append(labels[i])
OUT.write_bytes(bytes(out))
print(f"wrote {OUT} ({len(out)} bytes)")
