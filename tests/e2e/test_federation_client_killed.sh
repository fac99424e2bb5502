# A client killed in the middle of a round: the round closes at its timeout with the
# other two updates; the client restarted with the same work dir keeps its id and takes
# part in the next session.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/federation_project.sh"
cd "$WORK"
start_toy_federation
start_client fast0 --path proj --env CLIENT_NUMBER=0
start_client fast1 --path proj --env CLIENT_NUMBER=1
start_client slow --path proj --env CLIENT_NUMBER=2 --env MODE=slow
slow_pid=$CLIENT_PID
wait_clients_idle 3
slow_id=$("$PYTHON" -c 'import json,sys; print([c["client_id"] for c in json.load(open(sys.argv[1])) if c["name"] == "slow"][0])' clients.json)

run_fedcli session start --rounds 1 --min-clients 2 --round-timeout 8 --detach
expect_rc 0
expect_in out "started"
wait_for 30 "the slow client to be busy" \
    clients_match "any(x['name'] == 'slow' and x['status'] == 'busy' for x in c)"

# Kill the client and its entry point (which runs in a process group of its own).
entry_points=$(children_of "$slow_pid")
[[ -n $entry_points ]] || fail "the slow client runs no entry point"
kill -KILL "$slow_pid"
for child in $entry_points; do kill -KILL -- "-$child" 2>/dev/null || true; done
wait "$slow_pid" 2>/dev/null || true

wait_for 60 "the session to end" \
    "$PYTHON" -c 'import json, subprocess, sys
s = json.loads(subprocess.run([sys.argv[1], "session", "status", "--json"], capture_output=True, check=True).stdout)
sys.exit(0 if s["state"] != "running" else 1)' "$FEDCLI"
check_status '
assert s["state"] == "finished", s
r = s["rounds"][-1]
assert r["state"] == "committed", r
assert r["clients_selected"] == 3, r
assert r["updates_accepted"] == 2, r
assert sorted(u["client_name"] for u in r["updates"]) == ["fast0", "fast1"], r["updates"]
assert 7.0 <= r["seconds"] < 20, r["seconds"]
'
wait_for 10 "the killed client to be offline" \
    clients_match "any(x['name'] == 'slow' and not x['online'] for x in c)"
run_fedcli clients list
expect_rc 0
expect_in out "2 of 3 clients online"

# Restarted with the same work dir (and a normal train): same id, takes part again.
start_client slow --path proj --env CLIENT_NUMBER=2
wait_clients_idle 3
clients_match "len(c) == 3 and any(x['name'] == 'slow' and x['client_id'] == '$slow_id' and x['online'] for x in c)" ||
    fail "the restarted client did not keep id $slow_id: $(cat clients.json)"

run_fedcli session start --rounds 1 --min-clients 3 --round-timeout 60
expect_rc 0
expect_in out "3 updates (600 examples), 0 rejected"
check_status '
r = s["rounds"][-1]
assert r["state"] == "committed" and r["updates_accepted"] == 3, r
assert "'"$slow_id"'" in [u["client_id"] for u in r["updates"]], r["updates"]
'
