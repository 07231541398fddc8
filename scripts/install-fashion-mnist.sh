#!/usr/bin/env bash
# Installs Fashion-MNIST (MIT licence) from Debian's package when it is missing: the IDX files
# land in /usr/share/datasets/fashion-mnist/, where `adeis train --dataset fashion-mnist` reads
# them (or pass --data DIR).
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST is installed in $dir"
  exit 0
fi
sudo_cmd=""
if [ "$(id -u)" != 0 ]; then sudo_cmd=sudo; fi
$sudo_cmd apt-get update
$sudo_cmd apt-get install -y dataset-fashion-mnist
ls -l "$dir"
