#!/usr/bin/env bash
# Installs localserve from this checkout into its own virtual environment and puts the
# `localserve` command on your PATH.
#
#   installers/install.sh            # detect: NVIDIA -> CUDA, AMD -> ROCm, else CPU
#   installers/install.sh --cpu      # force the CPU build of torch (small, no GPU libraries)
#   installers/install.sh --cuda     # NVIDIA (CUDA 12.8 wheels)   --rocm   AMD (ROCm 6.4 wheels)
#   installers/install.sh --prefix DIR --bin DIR --dry-run
#
# The torch build is installed first, pinned, from its own index: installed before
# localserve, it satisfies localserve's `torch>=2.4` and nothing pulls another build.
set -euo pipefail

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PREFIX="${LOCALSERVE_HOME:-$HOME/.localserve}"
BIN_DIR="$HOME/.local/bin"
FLAVOR=auto
DRY_RUN=0
SRC="$(cd "$(dirname "$0")/.." && pwd)"

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) FLAVOR=cpu ;;
        --cuda) FLAVOR=cuda ;;
        --rocm) FLAVOR=rocm ;;
        --prefix) PREFIX="$2"; shift ;;
        --bin) BIN_DIR="$2"; shift ;;
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

run() {
    echo "+ $*"
    if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

if [ "$FLAVOR" = auto ]; then
    if [ "$(uname -s)" = Darwin ]; then
        FLAVOR=mac
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        FLAVOR=cuda
    elif command -v rocm-smi >/dev/null 2>&1 || [ -e /dev/kfd ]; then
        FLAVOR=rocm
    else
        FLAVOR=cpu
    fi
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))'; then
    echo "install.sh: localserve needs Python 3.10-3.12; set PYTHON=/path/to/python3.x" >&2
    exit 2
fi

case "$FLAVOR" in
    cpu) TORCH=(torch=="$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu); EXTRAS="server,tui" ;;
    cuda) TORCH=(torch=="$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cu128); EXTRAS="server,tui,gpu" ;;
    rocm) TORCH=(torch=="$TORCH_VERSION" --index-url https://download.pytorch.org/whl/rocm6.4); EXTRAS="server,tui,gpu" ;;
    mac) TORCH=(torch=="$TORCH_VERSION"); EXTRAS="server,tui,mlx" ;;
esac
if [ -n "${TORCH_INDEX_URL:-}" ]; then  # a mirror, or a local wheel folder via pip's own config
    TORCH=(torch=="$TORCH_VERSION" --index-url "$TORCH_INDEX_URL")
fi

echo "localserve: installing into $PREFIX ($FLAVOR build of torch $TORCH_VERSION)"
run "$PYTHON" -m venv "$PREFIX/venv"
run "$PREFIX/venv/bin/python" -m pip install --upgrade pip
run "$PREFIX/venv/bin/python" -m pip install "${TORCH[@]}"
run "$PREFIX/venv/bin/python" -m pip install "$SRC[$EXTRAS]"
run mkdir -p "$BIN_DIR"
run ln -sf "$PREFIX/venv/bin/localserve" "$BIN_DIR/localserve"

echo
echo "done. Start it with:  localserve up"
case ":$PATH:" in
    *":$BIN_DIR:"*) ;;
    *) echo "(add $BIN_DIR to your PATH, or run $PREFIX/venv/bin/localserve)" ;;
esac
