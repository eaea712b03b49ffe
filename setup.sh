#!/usr/bin/env bash
# Installs everything famus needs on a fresh Debian machine (run as root, or with sudo):
# Debian's Fashion-MNIST files, the CPU build of PyTorch 2.13.0, and famus with its test tools.
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q dataset-fashion-mnist || { $SUDO apt-get update -q && $SUDO apt-get install -y -q dataset-fashion-mnist; }
fi
# torch pinned first: an unpinned torch would pull several GB of CUDA packages.
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev]"
python3 -c "import famus, torch; print(f'famus {famus.__version__} with torch {torch.__version__} installed')"
