# A client that keeps dying and coming back (SIGKILL, restart with the same work dir)
# while a session runs: the session finishes with the steady clients, the flapping client
# keeps one id (no duplicate registrations) and ends online and idle, not stuck busy.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/federation_project.sh"
cd "$WORK"
start_toy_federation
start_client c0 --path proj --env CLIENT_NUMBER=0
start_client c1 --path proj --env CLIENT_NUMBER=1
start_client flap --path proj --env CLIENT_NUMBER=2 --env SLEEP=0.5
wait_clients_idle 3

run_fedcli session start --rounds 6 --min-clients 2 --round-timeout 4 --detach
expect_rc 0
for _ in 1 2 3 4 5; do
    wait_for 30 "the flapping client to be online" \
        clients_match "any(x['name'] == 'flap' and x['online'] for x in c)"
    pid=${CLIENT_PIDS[flap]}
    children=$(children_of "$pid")
    kill -KILL "$pid"
    for child in $children; do kill -KILL -- "-$child" 2>/dev/null || true; done
    wait "$pid" 2>/dev/null || true
    start_client flap --path proj --env CLIENT_NUMBER=2 --env SLEEP=0.5
done

wait_for 120 "the session to end" \
    "$PYTHON" -c 'import json, subprocess, sys
s = json.loads(subprocess.run([sys.argv[1], "session", "status", "--json"], capture_output=True, check=True).stdout)
sys.exit(0 if s["state"] != "running" else 1)' "$FEDCLI"
check_status '
assert s["state"] == "finished", s
done = [r for r in s["rounds"] if r["state"] == "committed"]
assert len(done) == 6, s["rounds"]
'
wait_for 30 "the flapping client to be online and idle" \
    clients_match "any(x['name'] == 'flap' and x['online'] and x['status'] == 'idle' for x in c)"
clients_match "len(c) == 3" || fail "clients registered more than once: $(cat clients.json)"
