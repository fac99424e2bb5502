# project init writes a template that loads and whose Python entry points run as generated.
source "$(dirname "$0")/lib.sh"
cd "$WORK"

run_fedcli project init proj --template numpy --name demo-proj
expect_rc 0
expect_in out "created project 'demo-proj' (template numpy)"
for file in fedcli.yaml .ignore README.md model.py data.py train.py validate.py predict.py fedcli_sdk.py; do
    [[ -f proj/$file ]] || fail "template file $file missing"
done
grep -q '^name: demo-proj$' proj/fedcli.yaml || fail "name not substituted: $(head -5 proj/fedcli.yaml)"

run_fedcli project validate --path proj
expect_rc 0
expect_in out "ok"

# Refuses to overwrite, names the files, writes nothing; --force replaces.
echo "# mine" > proj/train.py
run_fedcli project init proj --template numpy
expect_rc 1
expect_in err "would overwrite"
expect_in err "train.py"
[[ $(cat proj/train.py) == "# mine" ]] || fail "train.py was overwritten without --force"
run_fedcli project init proj --template numpy --force
expect_rc 0
grep -q "minibatch SGD" proj/train.py || fail "--force did not restore train.py"

run_fedcli project init other --template numpi
expect_rc 1
expect_in err "did you mean 'numpy'?"
[[ ! -e other/fedcli.yaml ]] || fail "an unknown template wrote files"

# Every template's project file is valid.
for template in pytorch libtorch; do
    run_fedcli project init "t-$template" --template "$template"
    expect_rc 0
    run_fedcli project validate --path "t-$template"
    expect_rc 0
done
[[ -f t-libtorch/fedcli/core/npz/npz.cpp ]] || fail "libtorch template lacks the bundled helpers"
