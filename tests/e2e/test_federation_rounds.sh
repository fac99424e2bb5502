# A federation on the numpy template: a combiner and 3 clients (package from the combiner),
# 3 rounds of FedAvg; the global model of every round must equal the offline
# `fedcli model aggregate` of that round's input model and accepted updates.
source "$(dirname "$0")/lib.sh"
cd "$WORK"

run_fedcli project init p --template numpy
expect_rc 0
run_fedcli run build --path p
expect_rc 0

start_combiner --heartbeat-interval 0.5
run_fedcli package keygen --out keys
expect_rc 0
run_fedcli package push --path p --sign-key keys/package.key
expect_rc 0
expect_in out "now its compute package"
expect_in out "signed   by key"
run_fedcli model push p/seed.npz
expect_rc 0
seed_id=$(sha256sum p/seed.npz | cut -d' ' -f1)
expect_in out "$seed_id"

# Each client takes its own share of the template's data set.
for i in 0 1 2; do
    start_client "c$i" --env FEDCLI_CLIENT_INDEX=$i --env FEDCLI_NUM_CLIENTS=3 \
        --trust-key keys/package.pub
done
wait_clients_idle 3 120

# `fedcli client start` hands over to the lean fedcli-client executable, which installed the
# package without loading libarchive (a `fedcli package extract` child unpacked it).
for i in 0 1 2; do
    pid=${CLIENT_PIDS[c$i]}
    exe=$(readlink "/proc/$pid/exe")
    [[ $exe == */fedcli-client ]] || fail "client c$i runs $exe, not fedcli-client"
    if grep -q libarchive "/proc/$pid/maps"; then fail "client c$i maps libarchive"; fi
    grep -q "package .* installed" "$WORK/client-c$i.log" || fail "client c$i installed no package"
done

run_fedcli clients list
expect_rc 0
expect_in out "3 of 3 clients online"

run_fedcli session start --rounds 3 --min-clients 3 --round-timeout 120 --settings epochs=1
expect_rc 0
expect_in out "round 1 (1/3) committed"
expect_in out "round 3 (3/3) committed"
expect_in out "3 updates"
expect_in out "finished"

check_status '
assert s["state"] == "finished", s["state"]
assert len(s["rounds"]) == 3, len(s["rounds"])
for r in s["rounds"]:
    assert r["state"] == "committed" and r["updates_accepted"] == 3, r
    assert sorted(u["client_name"] for u in r["updates"]) == ["c0", "c1", "c2"], r["updates"]
    assert all(u["num_examples"] == 2000 and u["used"] for u in r["updates"]), r["updates"]
    assert not r["rejected"], r["rejected"]
assert s["rounds"][0]["input_model"] == "'"$seed_id"'"
for a, b in zip(s["rounds"], s["rounds"][1:]):
    assert b["input_model"] == a["output_model"], (a, b)
assert s["latest_model"] == s["rounds"][-1]["output_model"]
'

# Every round, offline: pull its input, its updates and its output; aggregate the updates
# with the same weights and compare.
"$PYTHON" - status.json >rounds.txt <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rounds"]:
    print(r["round_id"], r["input_model"], r["output_model"],
          " ".join("%s:%d" % (u["model_id"], u["num_examples"]) for u in r["updates"]))
PY
while read -r round input output updates; do
    mkdir "r$round"
    run_fedcli model pull "$input" -o "r$round/input.npz"
    expect_rc 0
    run_fedcli model pull "$output" -o "r$round/output.npz"
    expect_rc 0
    expect_in out "$output"
    arguments=()
    for update in $updates; do
        id=${update%%:*}
        run_fedcli model pull "$id" -o "r$round/$id.npz"
        expect_rc 0
        arguments+=("r$round/$id.npz:${update##*:}")
    done
    run_fedcli model aggregate --global "r$round/input.npz" --output "r$round/offline.npz" \
        "${arguments[@]}"
    expect_rc 0
    expect_in out "3 used, 0 rejected; 6,000 examples"
    run_fedcli model diff "r$round/offline.npz" "r$round/output.npz" --json
    expect_rc 0
    "$PYTHON" -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["max_abs"] <= 1e-6, d' \
        "$WORK/out" || fail "round $round: the combiner's model differs from the offline one: $(cat "$WORK/out")"
done <rounds.txt
[[ $(wc -l <rounds.txt) -eq 3 ]] || fail "expected 3 rounds: $(cat rounds.txt)"

# `model pull latest` is the last round's model; `model list` shows the lineage.
run_fedcli model pull latest -o latest.npz
expect_rc 0
cmp latest.npz "r$(tail -n 1 rounds.txt | cut -d' ' -f1)/output.npz" || fail "latest is not the last round's model"
run_fedcli model list --json
expect_rc 0
"$PYTHON" - "$WORK/out" status.json <<'PY' || fail "model list: $(cat "$WORK/out")"
import json, sys
models = {m["model_id"]: m for m in json.load(open(sys.argv[1]))}
for r in json.load(open(sys.argv[2]))["rounds"]:
    m = models[r["output_model"]]
    assert m["parent_id"] == r["input_model"] and m["round_id"] == r["round_id"], m
PY
run_fedcli model list
expect_rc 0
expect_in out "seed"

# Entry points that call fedcli back find fedcli itself in FEDCLI_EXECUTABLE, not the
# fedcli-client daemon that runs them.
mkdir -p probe
cat >probe/fedcli.yaml <<'YAML'
entry_points:
  startup:
    command: sh -c 'echo "$FEDCLI_EXECUTABLE" > executable.txt'
  train:
    command: "true"
YAML
start_client probe --path probe
wait_for 60 "the probe client's startup" test -s probe/executable.txt
[[ $(cat probe/executable.txt) == "$(readlink -f "$FEDCLI")" ]] ||
    fail "FEDCLI_EXECUTABLE is $(cat probe/executable.txt), not $(readlink -f "$FEDCLI")"

# The combiner stops cleanly on SIGTERM.
kill -TERM "$COMBINER_PID"
set +e
wait "$COMBINER_PID"
rc=$?
set -e
[[ $rc -eq 0 ]] || fail "combiner exited with $rc on SIGTERM"
grep -q "combiner stopped" combiner.log || fail "no stop line in the combiner log"
