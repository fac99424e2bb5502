# `fedcli local`: a whole federation from one command, with the real daemons. Three toy
# clients run two rounds; the final model, the metrics and the report land in --out; no
# daemon outlives the command; Ctrl-C stops the session and still leaves the results.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/federation_project.sh"
cd "$WORK"
write_toy_project proj

# No process of a run under $1 (its clients' work dirs) is left.
no_daemons_under() {
    if pgrep -f -- "$1/clients/" >/dev/null; then
        fail "daemons left running: $(pgrep -af -- "$1/clients/")"
    fi
}

run_fedcli local --path proj --clients 3 --rounds 2 --out "$WORK/run1" --python "$PYTHON"
expect_rc 0
expect_in out "3 of 3 clients ready"
expect_in out "2/2"
expect_in out "fedcli local finished"
no_daemons_under "$WORK/run1"

# Each round adds the example-weighted mean of (1, 2, 3) with weights (100, 200, 300),
# 14/6, to every value; validation reports the mean of array "0".
"$PYTHON" - "$WORK/run1" <<'PY' || fail "results of fedcli local are wrong"
import csv, json, os, sys
import numpy as np
out = sys.argv[1]
model = np.load(os.path.join(out, "model.npz"))
assert np.allclose(model["0"], 2 * 14 / 6, atol=1e-5), model["0"]
rows = list(csv.DictReader(open(os.path.join(out, "metrics.csv"))))
assert [(r["session_round"], r["metric"], r["clients"]) for r in rows] == \
    [("1", "mean", "3"), ("2", "mean", "3")], rows
assert abs(float(rows[1]["weighted_mean"]) - 2 * 14 / 6) < 1e-4, rows
metrics = json.load(open(os.path.join(out, "metrics.json")))
assert [m["examples"] for m in metrics] == [600, 600], metrics
report = open(os.path.join(out, "report.html")).read()
assert "<svg" in report and "mean" in report
for name in ("combiner.log", "client-0.log", "client-1.log", "client-2.log", "build.log"):
    assert os.path.getsize(os.path.join(out, "logs", name)) > 0, name
assert os.path.exists(os.path.join(out, "combiner", "state.db"))
PY

# Results are never overwritten.
run_fedcli local --path proj --clients 1 --rounds 1 --out "$WORK/run1" --python "$PYTHON"
expect_rc 1
expect_in err "exists and is not empty"

# Bad options are refused before anything starts.
run_fedcli local --path proj --partition skewed --out "$WORK/bad"
expect_rc 2
expect_in err "--partition must be 'iid' or 'dirichlet'"
test ! -e "$WORK/bad" || fail "a refused run created its --out folder"

# Ctrl-C during a long session: the session stops at once, results of the committed
# rounds are written, everything stops, exit code 130.
"$FEDCLI" local --path proj --clients 2 --rounds 50 --out "$WORK/run2" --python "$PYTHON" \
    --env SLEEP=0.3 >"$WORK/run2.out" 2>"$WORK/run2.err" &
local_pid=$!
DAEMON_PIDS+=("$local_pid")
DAEMON_LOGS+=("$WORK/run2.out" "$WORK/run2.err")
wait_for 60 "fedcli local to finish round 2 ($(tail -n 3 "$WORK/run2.out" 2>/dev/null))" \
    grep -q "^2/50" "$WORK/run2.out"
kill -INT "$local_pid"
set +e
wait "$local_pid"
rc=$?
set -e
[[ $rc -eq 130 ]] || fail "exit code $rc after SIGINT, expected 130; $(cat "$WORK/run2.err")"
grep -q "interrupted: stopping session" "$WORK/run2.out" || fail "no word of the interruption"
test -s "$WORK/run2/model.npz" || fail "no model after an interrupted run"
test -s "$WORK/run2/report.html" || fail "no report after an interrupted run"
no_daemons_under "$WORK/run2"

# A package the clients cannot install (its startup fails) ends the run at once, naming the
# client and the reason, instead of a session that waits for clients forever.
cp -r proj broken
"$PYTHON" - broken/fedcli.yaml <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
assert "startup:" not in text and "entry_points:\n" in text, text
startup = "  startup:\n    command: sh -c 'echo no data here; exit 3'\n"
open(path, "w").write(text.replace("entry_points:\n", "entry_points:\n" + startup, 1))
PY
run_fedcli local --path broken --clients 2 --rounds 1 --out "$WORK/broken-run" --python "$PYTHON"
expect_rc 1
expect_in err "could not install the compute package"
expect_in err "exited with code 3"
expect_in err "no data here"
expect_in err "broken-run/logs/client-"
no_daemons_under "$WORK/broken-run"
