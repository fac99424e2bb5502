# The command line itself: version, help, did-you-mean and usage-error exit codes.
source "$(dirname "$0")/lib.sh"

run_fedcli --version
expect_rc 0
grep -qE '^fedcli [0-9]+\.[0-9]+\.[0-9]+$' "$WORK/out" || fail "bad version line: $(cat "$WORK/out")"

run_fedcli --help
expect_rc 0
expect_in out "Usage: fedcli"
expect_in out "model"
expect_in out "project"

run_fedcli
expect_rc 0
expect_in out "Usage: fedcli"

run_fedcli modle inspect x.npz
expect_rc 2
expect_in err "fedcli: error: unknown command 'modle'; did you mean 'model'?"
expect_empty out

run_fedcli model inspct x.npz
expect_rc 2
expect_in err "did you mean 'inspect'?"

run_fedcli project
expect_rc 2
expect_in err "Usage: fedcli project"
expect_in err "fedcli: error: 'fedcli project' needs a command"

run_fedcli model inspect x.npz --bogus
expect_rc 2
expect_in err "fedcli: error: unknown option '--bogus'"
expect_in err "run 'fedcli model inspect --help'"

run_fedcli model inspect
expect_rc 2
expect_in err "fedcli: error: FILE is required"

echo "ok"

# The fedcli binary stays lean: it must never link LibTorch (only fedcli_torch does).
# Match library names only: ldd's load addresses are random hex and may contain "c10".
torch_libs=$(ldd "$FEDCLI" | awk '{print $1}' | grep -E '^lib(torch|c10)' || true)
if [ -n "$torch_libs" ]; then
    fail "fedcli links LibTorch: $torch_libs"
fi

# The client daemon's executable, next to fedcli, is leaner still: no LibTorch, and none of
# the libraries only other commands use (fedcli child processes unpack packages and read
# project files).
daemon=$(dirname "$FEDCLI")/fedcli-client
[ -x "$daemon" ] || fail "no fedcli-client next to $FEDCLI"
extra_libs=$(ldd "$daemon" | awk '{print $1}' | grep -E '^lib(torch|c10|archive|sqlite3|xml2|icu|yaml-cpp)' || true)
if [ -n "$extra_libs" ]; then
    fail "fedcli-client links more than the daemon needs: $extra_libs"
fi
alone=$("$daemon" 2>&1; echo "rc=$?")
case $alone in
*"fedcli client start"*"rc=2") ;;
*) fail "fedcli-client without options should point to fedcli client start: $alone" ;;
esac
