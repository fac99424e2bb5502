# The combiner is killed (SIGKILL) during round 2 of 4 and restarted on the same data dir
# and port: the session is INTERRUPTED, the clients come back by themselves, `session
# resume` finishes it from round 1's model, and the history has every session round
# committed exactly once, chained model to model, with the interrupted try recorded.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/federation_project.sh"
cd "$WORK"
start_toy_federation
start_client c0 --path proj --env CLIENT_NUMBER=0 --env SLEEP=1
start_client c1 --path proj --env CLIENT_NUMBER=1 --env SLEEP=1
wait_clients_idle 2

# db_check PYTHON: runs Python with `db` = a sqlite3 connection to the combiner's state.
db_check() {
    "$PYTHON" -c 'import sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
exec(sys.argv[2])' "$WORK/combiner/state.db" "$@"
}

run_fedcli session start --rounds 4 --min-clients 2 --round-timeout 60 --detach
expect_rc 0
status_json
session=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["session_id"])' status.json)
wait_for 60 "round 2 of the session to be open" db_check '
rows = db.execute("select session_round, state from rounds").fetchall()
sys.exit(0 if (2, 1) in rows else 1)'
kill_combiner

RESTART=1 start_combiner --heartbeat-interval 0.5
check_status '
assert s["state"] == "interrupted", s
assert "resume" in s["message"], s["message"]
'
wait_clients_idle 2
run_fedcli session resume
expect_rc 0
expect_in out "finished"

db_check '
rounds = db.execute("select round_id, session_round, attempt, state, input_model_id, "
                    "output_model_id, reason from rounds where session_id = ? order by round_id",
                    (sys.argv[3],)).fetchall()
ids = [r[0] for r in rounds]
assert len(ids) == len(set(ids)), rounds
committed = [r for r in rounds if r[3] == 2]
assert [r[1] for r in committed] == [1, 2, 3, 4], rounds
for before, after in zip(committed, committed[1:]):
    assert after[4] == before[5], (before, after)
failed = [r for r in rounds if r[3] == 3]
assert [(r[1], r[2]) for r in failed] == [(2, 1)], rounds
assert "combiner stopped" in failed[0][6], failed
assert [r[2] for r in committed] == [1, 2, 1, 1], rounds
# Each committed round used both clients; every update belongs to a known round.
for r in committed:
    n = db.execute("select count(*) from updates where round_id = ? and accepted = 1",
                   (r[0],)).fetchone()[0]
    assert n == 2, (r, n)
state = db.execute("select state, rounds_committed from sessions where session_id = ?",
                   (sys.argv[3],)).fetchone()
assert state == (3, 4), state
' "$session"

# The final model is what four rounds of the toy training make: every value grows by
# the weighted mean of (1, 2) with weights (100, 200) = 5/3 per round.
run_fedcli model pull latest -o final.npz
expect_rc 0
"$PYTHON" -c 'import numpy as np, sys
m = np.load("final.npz")
assert np.allclose(m["0"], 4 * 5 / 3, atol=1e-5), m["0"]' || fail "final model is wrong"

run_fedcli combiner check --data-dir "$WORK/combiner"
expect_rc 0
