# Crash consistency: the combiner is killed with SIGKILL at random moments of a running
# session (selecting, training, folding, committing, validating), six times. After each
# kill `fedcli combiner check` finds the data dir consistent; after each restart the
# session resumes where its last commit left it. At the end the committed session rounds
# are 1..n exactly once, each starting from the previous one's model.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/federation_project.sh"
cd "$WORK"
start_toy_federation
start_client c0 --path proj --env CLIENT_NUMBER=0
start_client c1 --path proj --env CLIENT_NUMBER=1
wait_clients_idle 2

committed_rounds() {
    "$PYTHON" -c 'import sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
print(db.execute("select count(*) from rounds where state = 2").fetchone()[0])' \
        "$WORK/combiner/state.db"
}
more_committed_than() {
    test "$(committed_rounds)" -gt "$1"
}

run_fedcli session start --rounds 1000 --min-clients 2 --round-timeout 30 --validate --detach
expect_rc 0
for kill in 1 2 3 4 5 6; do
    before=$(committed_rounds)
    wait_for 60 "a round to commit before kill $kill" more_committed_than "$before"
    # Not synchronisation: the kill is meant to land at an arbitrary point of a round.
    sleep "$("$PYTHON" -c 'import random; print(random.uniform(0.0, 1.5))')"
    kill_combiner
    run_fedcli combiner check --data-dir "$WORK/combiner"
    expect_rc 0
    RESTART=1 start_combiner --heartbeat-interval 0.5
    check_status 'assert s["state"] == "interrupted", s'
    wait_clients_idle 2
    run_fedcli session resume --detach
    expect_rc 0
done
before=$(committed_rounds)
wait_for 60 "a round to commit after the last restart" more_committed_than "$before"
run_fedcli session stop --now
expect_rc 0
run_fedcli combiner check --data-dir "$WORK/combiner"
expect_rc 0

"$PYTHON" -c 'import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rounds = db.execute("select round_id, session_round, state, input_model_id, output_model_id "
                    "from rounds order by round_id").fetchall()
assert len({r[0] for r in rounds}) == len(rounds), "duplicate round ids"
committed = [r for r in rounds if r[2] == 2]
assert [r[1] for r in committed] == list(range(1, len(committed) + 1)), committed
for before, after in zip(committed, committed[1:]):
    assert after[3] == before[4], (before, after)
assert len(committed) >= 7, len(committed)
assert all(r[2] in (2, 3) for r in rounds), [r for r in rounds if r[2] not in (2, 3)]
' "$WORK/combiner/state.db" || fail "round history after the crashes is inconsistent"
