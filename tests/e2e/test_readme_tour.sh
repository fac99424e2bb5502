# The README's five-minute tour works as written: every command of its first block runs
# (with the binary under test for `fedcli`), in order, in a fresh folder.
source "$(dirname "$0")/lib.sh"
readme=$(cd "$(dirname "$0")/../.." && pwd)/README.md
cd "$WORK"
export FEDCLI_PYTHON=$PYTHON

awk '/^## A five-minute tour/ {tour = 1} tour && /^```sh/ {block = 1; next}
     block && /^```/ {exit} block {print}' "$readme" >tour.txt
test -s tour.txt || fail "README.md has no sh block under '## A five-minute tour'"
commands=0
while IFS= read -r line; do
    command=${line%%#*}
    [[ -z ${command// /} ]] && continue
    [[ $command == "fedcli "* ]] || fail "README tour line does not start with fedcli: $line"
    read -r -a words <<<"${command#fedcli }"
    run_fedcli "${words[@]}"
    [[ $RC -eq 0 ]] || fail "README tour: '$command' exited $RC: $(cat "$WORK/err")"
    commands=$((commands + 1))
done <tour.txt
((commands >= 5)) || fail "only $commands commands in the README tour"
ls fedcli-local/*/model.npz >/dev/null 2>&1 || fail "the tour's fedcli local left no model"
