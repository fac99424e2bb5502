# docs/cli.md is the binary's own --help output: regenerate it and compare, so the CLI
# reference cannot rot. Fix a failure with: scripts/gen-cli-doc build/cli/fedcli
source "$(dirname "$0")/lib.sh"
root=$(cd "$(dirname "$0")/../.." && pwd)
sh "$root/scripts/gen-cli-doc" "$FEDCLI" "$WORK/cli.md"
if ! diff -u "$root/docs/cli.md" "$WORK/cli.md" > "$WORK/diff"; then
    fail "docs/cli.md is out of date; run scripts/gen-cli-doc build/cli/fedcli. Difference:
$(head -40 "$WORK/diff")"
fi
