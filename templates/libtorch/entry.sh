#!/bin/sh
# Compiles the entry points on first use (or when a source changed), then runs one.
# Usage: sh entry.sh build|startup|train|validate|predict [ARGS...]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build="$here/build"
binary="$build/fedcli-entry"
stamp="$build/.sources"
sources=$(cat "$here/CMakeLists.txt" "$here/main.cpp" $(find "$here/fedcli" -type f | sort) | cksum)
if [ ! -x "$binary" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$sources" ]; then
    echo "entry.sh: compiling the entry points (first run takes a minute)" >&2
    cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" >/dev/null
    echo "$sources" > "$stamp"
fi
exec "$binary" "$@"
