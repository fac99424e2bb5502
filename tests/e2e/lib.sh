# Shared helpers for the e2e scripts, sourced by each test_*.sh:
#   FEDCLI  the binary under test ($1), PYTHON  python with numpy ($2),
#   WORK    a private temporary folder, removed on exit.
# Assertions print what they expected and what came out, then exit 1.
set -euo pipefail

FEDCLI=${1:?usage: $0 FEDCLI_BINARY [PYTHON]}
PYTHON=${2:-${FEDCLI_TEST_PYTHON:-/usr/bin/python3}}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fedcli-e2e.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# run_fedcli ARGS...: runs the binary, leaving stdout in $WORK/out, stderr in $WORK/err and
# the exit code in $RC.
run_fedcli() {
    set +e
    "$FEDCLI" "$@" >"$WORK/out" 2>"$WORK/err"
    RC=$?
    set -e
}

# expect_rc CODE: the last run_fedcli exited with CODE.
expect_rc() {
    if [[ $RC -ne $1 ]]; then
        fail "exit code $RC, expected $1; stdout: $(cat "$WORK/out"); stderr: $(cat "$WORK/err")"
    fi
}

# expect_in out|err TEXT: the last run's stdout/stderr contains TEXT literally.
expect_in() {
    if ! grep -qF -- "$2" "$WORK/$1"; then
        fail "std$1 lacks '$2'; it was: $(cat "$WORK/$1")"
    fi
}

# expect_empty out|err
expect_empty() {
    if [[ -s $WORK/$1 ]]; then
        fail "std$1 should be empty; it was: $(cat "$WORK/$1")"
    fi
}
