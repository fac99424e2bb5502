# Every fedcli command line in README.md, docs/*.md and examples/*/README.md parses with
# the real binary, and the scripts, make targets and links the docs name exist
# (scripts/check-docs), so the docs cannot rot. Fix a failure by correcting the doc line it
# names.
source "$(dirname "$0")/lib.sh"
root=$(cd "$(dirname "$0")/../.." && pwd)

# check_docs ARGS...: runs scripts/check-docs like run_fedcli runs fedcli ($WORK/out,
# $WORK/err, $RC).
check_docs() {
    set +e
    "$PYTHON" "$root/scripts/check-docs" "$@" >"$WORK/out" 2>"$WORK/err"
    RC=$?
    set -e
}

check_docs "$FEDCLI"
expect_rc 0
expect_in out "check-docs: "
expect_in out " 0 failures"
grep -qE '^check-docs: [1-9][0-9]* commands in [1-9][0-9]* files, 0 failures$' "$WORK/out" ||
    fail "unexpected summary: $(cat "$WORK/out")"

# The check catches a doc that gains an unknown flag, naming the file and line: a copy of
# the docs with one bad command appended, in a block of its own.
# The rest of the tree (what links and script names point at) is linked, not copied.
mkdir -p "$WORK/tree"
for entry in "$root"/*; do
    case $(basename "$entry") in
    README.md | docs) cp -r "$entry" "$WORK/tree/" ;;
    *) ln -s "$entry" "$WORK/tree/" ;;
    esac
done
lines=$(wc -l <"$WORK/tree/docs/federation.md")
printf '\n```sh\nFEDCLI_COMBINER=HOST:PORT fedcli session start --rounds 3 \\\n    --bogus-flag  # a mistake\n```\n' \
    >>"$WORK/tree/docs/federation.md"
check_docs --root "$WORK/tree" "$FEDCLI"
expect_rc 1
expect_in out "docs/federation.md:$((lines + 3)): fedcli session start --rounds 3 --bogus-flag: unknown option '--bogus-flag'"
expect_in out ", 1 failures"

# Other rot it catches: a missing script, an unknown make target, a broken link, a typo in
# a command name; each reported with its file and line.
cat >"$WORK/tree/docs/extra.md" <<'EOF'
# Extra

Run `make no-such-target`, or scripts/no-such-script; see [gone](gone.md).

```
$ build/cli/fedcli modle inspect x.npz 2>&1 | head
fedcli: error: this line is output, not a command
```
EOF
check_docs --root "$WORK/tree" "$FEDCLI"
expect_rc 1
expect_in out "docs/extra.md:3: make no-such-target: no such target in the Makefile"
expect_in out "docs/extra.md:3: scripts/no-such-script: no such script"
expect_in out "docs/extra.md:3: link (gone.md): no such file"
expect_in out "docs/extra.md:6: fedcli modle inspect x.npz: unknown command 'modle'; did you mean 'model'?"
expect_in out ", 5 failures"

# A binary without parse-only mode would run every command: the script refuses it.
printf '#!/bin/sh\necho "fedcli 0.0.0"\n' >"$WORK/old-fedcli"
chmod +x "$WORK/old-fedcli"
check_docs "$WORK/old-fedcli"
expect_rc 1
expect_in err "has no parse-only mode"
