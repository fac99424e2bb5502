# Shared helpers for the e2e scripts, sourced by each test_*.sh:
#   FEDCLI  the binary under test ($1), PYTHON  python with numpy ($2),
#   WORK    a private temporary folder, removed on exit.
# Assertions print what they expected and what came out, then exit 1.
# Daemons (start_combiner, start_client) run in the background and are stopped on exit,
# with the entry points they started; a failing test prints the tail of their logs.
set -euo pipefail

FEDCLI=${1:?usage: $0 FEDCLI_BINARY [PYTHON]}
PYTHON=${2:-${FEDCLI_TEST_PYTHON:-/usr/bin/python3}}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fedcli-e2e.XXXXXX")
DAEMON_PIDS=()
DAEMON_LOGS=()

# The children of PID (entry points of a client run in process groups of their own).
children_of() {
    ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true
}

# stop_process PID: SIGTERM, up to 10 s to exit, then SIGKILL; its children's process
# groups get the same. Returns at once for a process that is gone.
stop_process() {
    local pid=$1 child
    kill -0 "$pid" 2>/dev/null || return 0
    local children
    children=$(children_of "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    for child in $children; do kill -KILL -- "-$child" 2>/dev/null || true; done
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$? pid log
    for pid in "${DAEMON_PIDS[@]}"; do stop_process "$pid"; done
    if [[ $status -ne 0 ]]; then
        for log in "${DAEMON_LOGS[@]}"; do
            [[ -f $log ]] || continue
            echo "---- last lines of $(basename "$log")" >&2
            tail -n 25 "$log" >&2
        done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

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

# wait_for SECONDS DESCRIPTION COMMAND...: runs COMMAND every 0.1 s until it succeeds;
# fails naming DESCRIPTION when SECONDS pass first.
wait_for() {
    local seconds=$1 description=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            fail "timed out after ${seconds} s waiting for $description"
        fi
        sleep 0.1
    done
}

# start_combiner [ARGS...]: starts `fedcli combiner start` on a free port (or on
# $COMBINER_PORT when RESTART=1, to come back where clients dial) in the background (data in
# $WORK/combiner, log appended to $WORK/combiner.log), waits for its port file and exports
# FEDCLI_COMBINER for the operator commands, and FEDCLI_TOKEN_FILE: the admin token the
# combiner made at its first start ($WORK/combiner/admin.token; not with --insecure).
# Sets COMBINER_PID.
start_combiner() {
    local port=0
    [[ ${RESTART:-0} == 1 ]] && port=$COMBINER_PORT
    rm -f "$WORK/combiner.port"
    "$FEDCLI" combiner start --port "$port" --port-file "$WORK/combiner.port" \
        --data-dir "$WORK/combiner" "$@" >>"$WORK/combiner.log" 2>&1 &
    COMBINER_PID=$!
    DAEMON_PIDS+=("$COMBINER_PID")
    DAEMON_LOGS+=("$WORK/combiner.log")
    wait_for 30 "the combiner's port file (log: $(tail -n 3 "$WORK/combiner.log" 2>/dev/null))" \
        test -s "$WORK/combiner.port"
    COMBINER_PORT=$(cat "$WORK/combiner.port")
    export FEDCLI_COMBINER=127.0.0.1:$COMBINER_PORT
    COMBINER_INSECURE=0
    local arg
    for arg in "$@"; do [[ $arg == --insecure ]] && COMBINER_INSECURE=1; done
    if [[ $COMBINER_INSECURE == 1 ]]; then
        unset FEDCLI_TOKEN_FILE
    else
        [[ -s $WORK/combiner/admin.token ]] || fail "the combiner wrote no admin.token"
        export FEDCLI_TOKEN_FILE=$WORK/combiner/admin.token
    fi
}

# client_token_file WORK_DIR NAME: prints the file holding the client token of the client
# with that work dir, creating the token (`fedcli token create --role client`) on first use.
# A client token is bound to one client id, so each work dir gets its own.
client_token_file() {
    local key file
    key=$(printf '%s' "$1" | md5sum | cut -c1-16)
    file=$WORK/tokens/$key.token
    if [[ ! -s $file ]]; then
        mkdir -p "$WORK/tokens"
        "$FEDCLI" token create --role client --name "$2" >"$file" 2>>"$WORK/tokens.log" ||
            fail "cannot create a client token for $2: $(tail -n 3 "$WORK/tokens.log")"
    fi
    echo "$file"
}

# start_client NAME [ARGS...]: starts `fedcli client start --name NAME` in the background
# with work dir $WORK/clients/NAME (unless ARGS give --work-dir) and log
# $WORK/client-NAME.log; unless ARGS give --token or --token-file (or the combiner is
# --insecure), with a client token of its own per work dir (client_token_file). Sets
# CLIENT_PID (and CLIENT_PIDS[NAME]).
declare -A CLIENT_PIDS=()
start_client() {
    local name=$1
    shift
    local work_dir=$WORK/clients/$name
    local work=(--work-dir "$work_dir")
    local token=()
    [[ ${COMBINER_INSECURE:-0} == 1 ]] || token=(--token-file "")
    local arg previous=""
    for arg in "$@"; do
        [[ $arg == --work-dir* ]] && work=()
        [[ $arg == --work-dir=* ]] && work_dir=${arg#--work-dir=}
        [[ $previous == --work-dir ]] && work_dir=$arg
        [[ $arg == --token* ]] && token=()
        previous=$arg
    done
    if [[ ${#token[@]} -gt 0 ]]; then
        token=(--token-file "$(client_token_file "$work_dir" "$name")")
    fi
    "$FEDCLI" client start --combiner "$FEDCLI_COMBINER" --name "$name" "${work[@]}" \
        "${token[@]}" --python "$PYTHON" "$@" >>"$WORK/client-$name.log" 2>&1 &
    CLIENT_PID=$!
    CLIENT_PIDS[$name]=$CLIENT_PID
    DAEMON_PIDS+=("$CLIENT_PID")
    DAEMON_LOGS+=("$WORK/client-$name.log")
}

# clients_json: `fedcli clients list --json` into $WORK/clients.json.
clients_json() {
    "$FEDCLI" clients list --json >"$WORK/clients.json"
}

# clients_match PYTHON_EXPRESSION: true when the expression holds for `c`, the list of
# clients (dicts as `clients list --json` prints them).
clients_match() {
    clients_json || return 1
    "$PYTHON" -c 'import json, sys
c = json.load(open(sys.argv[1]))
sys.exit(0 if eval(sys.argv[2]) else 1)' "$WORK/clients.json" "$1"
}

# wait_clients_idle N [SECONDS]: waits until N clients are online and idle.
wait_clients_idle() {
    wait_for "${2:-60}" "$1 clients online and idle: $(cat "$WORK/clients.json" 2>/dev/null)" \
        clients_match "sum(1 for x in c if x['online'] and x['status'] == 'idle') >= $1"
}

# kill_combiner: SIGKILL for the combiner (a crash), and wait until it is gone.
kill_combiner() {
    kill -KILL "$COMBINER_PID" 2>/dev/null || true
    wait "$COMBINER_PID" 2>/dev/null || true
}

# status_json: `fedcli session status --json` into $WORK/status.json.
status_json() {
    "$FEDCLI" session status --json >"$WORK/status.json"
}

# check_status PYTHON_ASSERTIONS: runs Python with `s` = the status JSON; fails the test
# with the assertion and the JSON when one does not hold.
check_status() {
    status_json
    "$PYTHON" -c 'import json, sys
s = json.load(open(sys.argv[1]))
exec(sys.argv[2])' "$WORK/status.json" "$1" ||
        fail "session status does not match: $(cat "$WORK/status.json")"
}
