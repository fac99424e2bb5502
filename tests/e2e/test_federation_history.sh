# A session fails because a client keeps failing (one retry allowed); the client is fixed
# and `session resume` finishes the session. Along the way: the entry points' output comes
# back with `fedcli logs`, and the history commands (rounds, validations, sessions,
# report) show what happened.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/federation_project.sh"
cd "$WORK"
start_toy_federation
start_client good --path proj --env CLIENT_NUMBER=0
start_client bad --path proj --env CLIENT_NUMBER=1 --env MODE=fail
wait_clients_idle 2

run_fedcli session start --rounds 3 --min-clients 2 --round-timeout 30 --max-round-retries 1 \
    --validate
expect_rc 1
expect_in out "failed"
check_status '
assert s["state"] == "failed", s
tries = [(r["session_round"], r["attempt"], r["state"]) for r in s["rounds"]]
assert tries == [(1, 1, "failed"), (1, 2, "failed")], tries
for r in s["rounds"]:
    assert any("exited with code 3" in x["reason"] for x in r["rejected"]), r
'

# The failing entry point's output, streamed by its client.
run_fedcli logs --client bad
expect_rc 0
expect_in out "about to fail on purpose"
expect_in out "bad"
run_fedcli logs --client good --json
expect_rc 0
"$PYTHON" -c 'import json, sys
lines = json.load(open(sys.argv[1]))
assert lines and all(x["client_name"] == "good" for x in lines), lines
assert any("train: mode good" in x["line"] for x in lines), lines' out ||
    fail "logs --json: $(cat out)"
run_fedcli logs --client nobody
expect_rc 1
expect_in err "no client named 'nobody'"

# Fixed: the client comes back healthy and the session is resumed.
stop_process "${CLIENT_PIDS[bad]}"
start_client bad --path proj --env CLIENT_NUMBER=1
wait_clients_idle 2
run_fedcli session resume
expect_rc 0
expect_in out "finished"
check_status '
assert s["state"] == "finished", s
done = [r["session_round"] for r in s["rounds"] if r["state"] == "committed"]
assert done == [1, 2, 3], s["rounds"]
'

run_fedcli session list --json
expect_rc 0
"$PYTHON" -c 'import json, sys
sessions = json.load(open(sys.argv[1]))
assert len(sessions) == 1 and sessions[0]["state"] == "finished", sessions
assert sessions[0]["rounds_committed"] == 3, sessions' out || fail "session list: $(cat out)"

run_fedcli rounds list
expect_rc 0
expect_in out "committed"
expect_in out "failed"

# Validation: the toy metric "mean" is the model's mean, the same on both clients.
run_fedcli validations list --json
expect_rc 0
"$PYTHON" -c 'import json, sys
rows = json.load(open(sys.argv[1]))
means = [r for r in rows if r["metric"] == "mean"]
assert len(means) == 3, rows
for r in means:
    assert r["clients"] == 2 and abs(r["min"] - r["max"]) < 1e-9, r
values = [r["mean"] for r in means]
assert values == sorted(values) and values[0] > 0, values' out || fail "validations: $(cat out)"

run_fedcli report -o report.html
expect_rc 0
test -s report.html || fail "report.html is empty"
grep -q "<svg" report.html || fail "report.html has no chart"
grep -q "mean" report.html || fail "report.html lacks the metric"
run_fedcli report -o report.svg
expect_rc 0
"$PYTHON" -c 'import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])' report.svg ||
    fail "report.svg is not well-formed XML"
