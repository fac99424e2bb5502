#!/bin/sh
# Runs one entry point of the C++ program, compiling it first when needed.
# Usage: sh entry.sh build|startup|train|validate|predict [ARGS...]
#
# The program is compiled once per machine and source version, into fedcli's cache
# ($FEDCLI_CACHE_DIR, else $XDG_CACHE_HOME/fedcli, else ~/.cache/fedcli) under
# libtorch-entry/<checksum of the sources>/, so clients that share a machine compile it once,
# and later rounds start at once. fedcli's parameter-file helpers (fedcli_torch and the npz
# code it uses) come from the fedcli binary that runs the entry point ($FEDCLI_EXECUTABLE,
# set by fedcli; else `fedcli` on PATH), which writes them with `fedcli project init
# --template libtorch`: the program always matches that fedcli, and neither this folder nor
# its package holds a copy of them.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fedcli=${FEDCLI_EXECUTABLE:-fedcli}
cache=${FEDCLI_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fedcli}/libtorch-entry

# One thread per process unless told otherwise: clients share machines, and one thread keeps
# results reproducible. OpenBLAS and OpenMP read these when the program loads.
threads=${FEDCLI_TORCH_THREADS:-1}
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$threads}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"

if ! command -v "$fedcli" >/dev/null 2>&1; then
    echo "entry.sh: cannot find fedcli (for its helper sources): set FEDCLI_EXECUTABLE or put fedcli on PATH" >&2
    exit 1
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$fedcli" project init "$scratch/template" --template libtorch >/dev/null
mkdir "$scratch/src"
cp "$here/CMakeLists.txt" "$here"/*.cpp "$here"/*.hpp "$scratch/src/"
cp -R "$scratch/template/fedcli" "$scratch/src/fedcli"
sum=$(cd "$scratch/src" && find . -type f | LC_ALL=C sort | xargs cat | cksum | tr ' ' '-')
key="$cache/$sum"
binary="$key/fashion-mnist"

mkdir -p "$cache"
if [ ! -x "$binary" ]; then
    exec 9>"$cache/.lock"
    flock 9  # one compiler at a time; the others wait and reuse its program
    if [ ! -x "$binary" ]; then
        echo "entry.sh: compiling the entry points into $key (about two minutes on 2 cores)" >&2
        rm -rf "$key"
        mkdir -p "$key"
        cp -R "$scratch/src" "$key/src"
        log="$key/build.log"
        if ! { cmake -S "$key/src" -B "$key/build" -DCMAKE_BUILD_TYPE=Release &&
               cmake --build "$key/build" -j "$(nproc 2>/dev/null || echo 2)"; } >"$log" 2>&1; then
            tail -40 "$log" >&2
            echo "entry.sh: compiling failed; the whole log is $log" >&2
            exit 1
        fi
        cp "$key/build/fashion-mnist" "$binary.tmp"
        mv "$binary.tmp" "$binary"
        rm -rf "$key/build"
    fi
    exec 9>&-
fi
rm -rf "$scratch"
trap - EXIT
exec "$binary" "$@"
