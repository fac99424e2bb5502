# The daemon and operator commands' errors and help: a misspelt combiner.yaml key, a
# combiner that is not running, a port already in use, option checks, --help of each.
source "$(dirname "$0")/lib.sh"
cd "$WORK"

# combiner.yaml: a misspelt key is reported with its line and the key meant.
printf 'host: 127.0.0.1\nprot: 0\n' >combiner.yaml
run_fedcli combiner start --config combiner.yaml
expect_rc 1
expect_in err "combiner.yaml:2:1: unknown key 'prot'; did you mean 'port'?"
printf 'port: many\n' >combiner.yaml
run_fedcli combiner start --config combiner.yaml
expect_rc 1
expect_in err "combiner.yaml:1:7: port must be a whole number"
run_fedcli combiner start --config missing.yaml
expect_rc 1
expect_in err "missing.yaml: no such file"

# Nothing listens on a port we just found free: every operator command says so clearly.
free_port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for command in "session status" "clients list" "model list" "session stop" \
        "model pull latest -o x.npz" "session start --rounds 1"; do
    # shellcheck disable=SC2086
    run_fedcli $command --combiner "127.0.0.1:$free_port"
    expect_rc 1
    expect_in err "fedcli: error: cannot reach the combiner at 127.0.0.1:$free_port"
    expect_in err "(is \`fedcli combiner start\` running?)"
done
FEDCLI_COMBINER=127.0.0.1:$free_port run_fedcli clients list
expect_rc 1
expect_in err "cannot reach the combiner at 127.0.0.1:$free_port"
run_fedcli clients list --combiner nonsense
expect_rc 1
expect_in err "--combiner"

# Local checks come before any connection.
run_fedcli session start --rounds 1 --aggregator fedavgg
expect_rc 1
expect_in err "did you mean 'fedavg'"
run_fedcli session start --rounds 1 --config lr=0.1
expect_rc 1
expect_in err "fedavg has no setting"
run_fedcli session start --rounds 1 --min-clients 3 --clients-per-round 2
expect_rc 2
expect_in err "below --min-clients 3"
"$PYTHON" -c 'open("broken.npz", "wb").write(b"PK not really")'
run_fedcli model push broken.npz
expect_rc 1
expect_in err "broken.npz"
run_fedcli package push
expect_rc 2
expect_in err "give either a package FILE or --path DIR"

# A port in use: the second combiner fails naming the address; the first one keeps going.
start_combiner
run_fedcli combiner start --port "$COMBINER_PORT" --data-dir second
expect_rc 1
expect_in err "fedcli: error: cannot listen on 127.0.0.1:$COMBINER_PORT: Address already in use"
run_fedcli session status
expect_rc 0
expect_in out "session   none yet"
run_fedcli session stop
expect_rc 1
expect_in err "did not stop a session"
run_fedcli session start --rounds 1
expect_rc 1
expect_in err "did not start the session"
run_fedcli model pull 0123456789 -o x.npz
expect_rc 1
expect_in err "no model on the combiner"

# Flags override the file; the port file holds the bound port.
printf 'host: 127.0.0.1\nport: 1\ndata_dir: from-file\nheartbeat_interval: 0.5\n' >combiner.yaml
"$FEDCLI" combiner start --config combiner.yaml --port 0 --port-file port2 >second.log 2>&1 &
second=$!
DAEMON_PIDS+=("$second")
wait_for 30 "the second combiner's port file" test -s port2
grep -q "listening on 127.0.0.1:$(cat port2), data in $WORK/from-file" second.log ||
    fail "unexpected first line: $(head -n 1 second.log)"
kill -TERM "$second"
set +e
wait "$second"
rc=$?
set -e
[[ $rc -eq 0 ]] || fail "combiner exited with $rc on SIGTERM: $(cat second.log)"

# Help of every new command.
for command in "combiner start" "client start" "session start" "session status" \
        "session stop" "clients list" "package push" "model push" "model pull" "model list"; do
    # shellcheck disable=SC2086
    run_fedcli $command --help
    expect_rc 0
    expect_in out "Usage: fedcli $command"
done
run_fedcli combiner start --help
expect_in out "--port-file"
run_fedcli client start --help
expect_in out "FEDCLI_COMBINER"
run_fedcli sesion status
expect_rc 2
expect_in err "did you mean 'session'?"
