#!/usr/bin/env python3
"""Writes tests/fixtures/npy: small arrays saved by numpy itself in every dtype and layout
adeis reads (floats f2/f4/f8 and integers in both byte orders, booleans, Fortran order, a
0-d and a 3-d array), and expected.json with their values in C order, for io's tests.
    python3 scripts/make-npy-fixtures.py        (needs numpy)
"""

import json
import os

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "npy")


def main():
    os.makedirs(OUT, exist_ok=True)
    base = np.array([[1.5, -2.25, 3.0], [0.125, 7.0, -1.0]])
    cases = {
        "f8_le": base.astype("<f8"),
        "f8_be": base.astype(">f8"),
        "f4_le": base.astype("<f4"),
        "f4_be": base.astype(">f4"),
        "f2_le": base.astype("<f2"),
        "i8_le": np.array([[3, -1, 4], [1, -5, 9]], dtype="<i8"),
        "i4_be": np.array([[3, -1, 4], [1, -5, 9]], dtype=">i4"),
        "u1": np.array([0, 7, 255], dtype="u1"),
        "bool": np.array([True, False, True]),
        "fortran_f8": np.asfortranarray(np.arange(24, dtype="<f8").reshape(2, 3, 4)),
        "fortran_f4_2d": np.asfortranarray(base.astype("<f4")),
        "scalar_f8": np.array(2.5),
    }
    expected = {}
    for name, a in cases.items():
        np.save(os.path.join(OUT, name + ".npy"), a)
        expected[name] = dict(
            shape=list(a.shape),
            data=[float(v) for v in np.ascontiguousarray(a).reshape(-1)],
            integer=bool(a.dtype.kind in "iub"),
        )
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main()
