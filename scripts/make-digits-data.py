#!/usr/bin/env python3
"""Regenerates data/digits/digits.u8 from the digits table inside scikit-learn's wheel.

Source: sklearn/datasets/data/digits.csv.gz (UCI "Optical Recognition of Handwritten Digits",
Alpaydin & Kaynak, CC BY 4.0): 1797 rows of 64 pixel counts (0..16, 8x8, row-major) and the
label. Output: 1797 records of 65 bytes (the 64 pixels, then the label), nothing else.

Usage: scripts/make-digits-data.py [WHEEL]   (without WHEEL it runs `pip download` for the
pinned wheel into a temporary folder; the only network use, and only here).
"""
import csv, gzip, hashlib, io, subprocess, sys, tempfile, zipfile, glob, os

WHEEL = "scikit-learn==1.5.2"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "digits", "digits.u8")

def wheel_path():
    if len(sys.argv) > 1:
        return sys.argv[1]
    d = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.11", "--platform", "manylinux2014_x86_64", WHEEL, "-d", d],
                   check=True)
    return glob.glob(os.path.join(d, "*.whl"))[0]

def main():
    raw = zipfile.ZipFile(wheel_path()).read("sklearn/datasets/data/digits.csv.gz")
    rows = list(csv.reader(io.StringIO(gzip.decompress(raw).decode())))
    out = bytearray()
    for r in rows:
        v = [int(float(s)) for s in r]
        assert len(v) == 65 and all(0 <= p <= 16 for p in v[:64]) and 0 <= v[64] <= 9, r
        out.extend(v)
    assert len(rows) == 1797
    with open(OUT, "wb") as f:
        f.write(out)
    print(f"wrote {OUT}: {len(rows)} digits, sha256 {hashlib.sha256(out).hexdigest()}")

if __name__ == "__main__":
    main()
