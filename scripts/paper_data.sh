#!/usr/bin/env bash
# The paper's datasets at full size, for experiments/paper-gpu.toml, into one folder (default
# datasets/paper): MNIST (60,000/10,000), CIFAR-10 (binary), LRA ListOps, TAPE remote homology.
# Needs internet (about 8 GB to download, most of it the LRA release, of which only ListOps is kept).
# Written for a machine with internet; this project's build machine has none, so it is not run in CI.
#   bash scripts/paper_data.sh [DIR]
set -euo pipefail
DIR=${1:-datasets/paper}
mkdir -p "$DIR/mnist" "$DIR/lra" "$DIR/tape"
# get URL FILE: downloads once (a finished FILE is kept; a partial one is retried).
get() {
  [ -s "$2" ] && return 0
  curl -fL --retry 3 -o "$2.part" "$1"
  mv "$2.part" "$2"
}

for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -s "$DIR/mnist/$f" ] || { get "https://ossci-datasets.s3.amazonaws.com/mnist/$f.gz" "$DIR/mnist/$f.gz" && gunzip -f "$DIR/mnist/$f.gz"; }
done
get https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz "$DIR/cifar-10-binary.tar.gz"
if [ ! -s "$DIR/lra/listops/basic_train.tsv" ]; then
  get https://storage.googleapis.com/long-range-arena/lra_release.gz "$DIR/lra/lra_release.gz"
  tar -xzf "$DIR/lra/lra_release.gz" -C "$DIR/lra" lra_release/listops-1000
  mv "$DIR/lra/lra_release/listops-1000" "$DIR/lra/listops" && rm -rf "$DIR/lra/lra_release" "$DIR/lra/lra_release.gz"
fi
if [ ! -s "$DIR/tape/remote_homology/remote_homology_train.json" ]; then
  get https://s3.amazonaws.com/songlabdata/proteindata/data_raw_pytorch/remote_homology.tar.gz "$DIR/tape/remote_homology.tar.gz"
  tar -xzf "$DIR/tape/remote_homology.tar.gz" -C "$DIR/tape" && rm "$DIR/tape/remote_homology.tar.gz"
fi
ls -la "$DIR"/*
