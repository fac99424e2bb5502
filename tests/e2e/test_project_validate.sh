# `fedcli project validate` on a good project, a FEDn project and a broken one.
source "$(dirname "$0")/lib.sh"

mkdir -p "$WORK/good"
cat >"$WORK/good/fedcli.yaml" <<'YAML'
name: demo
python_env: python_env.yaml
entry_points:
  startup:
    command: python3 data.py
  train:
    command: python3 train.py
YAML
echo "name: demo" >"$WORK/good/python_env.yaml"

run_fedcli project validate --path "$WORK/good"
expect_rc 0
expect_empty err
expect_in out "$WORK/good/fedcli.yaml"
expect_in out "demo"
expect_in out "python3 train.py"
[[ $(tail -n 1 "$WORK/out") == ok ]] || fail "last line is not 'ok': $(cat "$WORK/out")"

# The default path is the current folder; FEDn's file name is accepted.
mkdir -p "$WORK/fedn"
printf 'entry_points:\n  train:\n    command: python3 train.py\n' >"$WORK/fedn/fedn.yaml"
(cd "$WORK/fedn" && run_fedcli project validate --json && expect_rc 0)
"$PYTHON" -c '
import json, sys
report = json.load(open(sys.argv[1]))
assert report["ok"] is True, report
assert report["file"].endswith("fedn.yaml"), report
assert [e["name"] for e in report["entry_points"]] == ["train"], report
' "$WORK/out" || fail "project validate --json: $(cat "$WORK/out")"

mkdir -p "$WORK/bad"
printf 'entry_points:\n  validate:\n    command: python3 validate.py\n' >"$WORK/bad/fedcli.yaml"
run_fedcli project validate --path "$WORK/bad"
expect_rc 1
expect_in err "fedcli: error: "
expect_in err "'train'"

run_fedcli project validate --path "$WORK/nowhere"
expect_rc 1
expect_in err "fedcli: error: "
expect_in err "nowhere"

echo "ok"
