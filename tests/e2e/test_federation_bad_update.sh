# Bad updates are rejected with reasons while the round goes on with the good one: a train
# that exits non-zero, one that writes an array of another shape (refused by the client's
# contract check), one that writes a NaN (refused by the combiner's aggregator) and one
# whose metadata is 2 MiB (over the 1 MiB limit on JSON payloads).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/federation_project.sh"
cd "$WORK"
start_toy_federation
start_client good --path proj --env CLIENT_NUMBER=0
start_client bad-exit --path proj --env MODE=fail
start_client bad-shape --path proj --env MODE=shape
start_client bad-nan --path proj --env MODE=nan
start_client bad-meta --path proj --env MODE=bigmeta
wait_clients_idle 5

run_fedcli session start --rounds 1 --min-clients 1 --round-timeout 60
expect_rc 0
expect_in out "1 update (100 examples), 4 rejected"
expect_in out "rejected client 'bad-exit'"
expect_in out "exited with code 3"

run_fedcli session status
expect_rc 0
expect_in out "problems:"
expect_in out "client 'bad-exit'"
expect_in out "client 'bad-shape'"
expect_in out "client 'bad-nan'"
expect_in out "client 'bad-meta'"
check_status '
r = s["rounds"][-1]
assert r["state"] == "committed" and r["updates_accepted"] == 1, r
assert [u["client_name"] for u in r["updates"]] == ["good"], r["updates"]
reasons = {x["client_name"]: x["reason"] for x in r["rejected"]}
assert sorted(reasons) == ["bad-exit", "bad-meta", "bad-nan", "bad-shape"], reasons
assert "above the limit of 1 MiB" in reasons["bad-meta"], reasons
assert "train failed" in reasons["bad-exit"] and "code 3" in reasons["bad-exit"], reasons
assert "about to fail on purpose" in reasons["bad-exit"], reasons
assert "shape" in reasons["bad-shape"] and "[5, 3]" in reasons["bad-shape"], reasons
assert "NaN" in reasons["bad-nan"], reasons
'
# The new model is the good client's update (seed + 1).
run_fedcli model pull latest -o latest.npz
expect_rc 0
"$PYTHON" -c 'import numpy as np; m = np.load("latest.npz"); assert (m["0"] == 1).all() and (m["1"] == 1).all(), dict(m)' ||
    fail "the committed model is not the good update"

# With --min-clients 2 the same round fails, and the command says why (exit code 1).
run_fedcli session start --rounds 1 --min-clients 2 --round-timeout 60
expect_rc 1
expect_in out "FAILED"
expect_in err "fedcli: error: session"
expect_in err "1 update accepted, 2 required"
