# Access tokens end to end: the combiner makes an admin token at its first start; missing,
# wrong, malformed, expired and revoked tokens are refused (UNAUTHENTICATED, saying which);
# a client token cannot call Control; a client token is bound to its client id (another id
# with it, or that id with another token, is refused); revoking a token closes its client's
# stream; a token never goes in clear text to another machine; --insecure warns.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/federation_project.sh"
cd "$WORK"
start_toy_federation

# Bootstrap: the admin token file, private, and the log says where it is.
grep -qF "created admin token" combiner.log || fail "no bootstrap line: $(cat combiner.log)"
grep -qF "$WORK/combiner/admin.token" combiner.log || fail "the log does not name admin.token"
[[ $(stat -c %a combiner/admin.token) == 600 ]] || fail "admin.token is not mode 0600"
grep -qE '^fedcli_[0-9a-f]{12}_[0-9a-f]{32,}$' combiner/admin.token || fail "odd admin.token"

# Missing, wrong and malformed tokens.
FEDCLI_TOKEN_FILE= run_fedcli clients list
expect_rc 1
expect_in err "no access token"
run_fedcli clients list --token "fedcli_000000000000_0000000000000000000000000000000000000000"
expect_rc 1
expect_in err "access token 000000000000 is not valid"
run_fedcli clients list --token "secret-that-must-not-echo"
expect_rc 1
expect_in err "malformed"
grep -qF "secret-that-must-not-echo" err && fail "the secret was echoed: $(cat err)"
run_fedcli clients list --token-file missing.token
expect_rc 1
expect_in err "missing.token: cannot read the access token (--token-file)"

# A client token cannot call Control.
run_fedcli token create --role client --name spare
expect_rc 0
cp out spare.token
run_fedcli clients list --token-file spare.token
expect_rc 1
expect_in err "this call needs an admin token"

# An expired token.
run_fedcli token create --role admin --name brief --expires 1s
expect_rc 0
brief=$(cat out)
expired() {
    run_fedcli clients list --token "$brief"
    [[ $RC -eq 1 ]] && grep -qF "expired" "$WORK/err"
}
wait_for 20 "the 1 s token to expire" expired
run_fedcli token create --role admin --expires 3x
expect_rc 1
expect_in err "--expires: '3x' is not a duration"

# A client with its own token joins; the token is bound to its client id.
start_client c1 --path proj
c1_pid=$CLIENT_PID
wait_clients_idle 1
c1_token=$(client_token_file "$WORK/clients/c1" c1)
c1_id=$(cat clients/c1/client_id)
run_fedcli token list --json
expect_rc 0
"$PYTHON" -c 'import json, sys
tokens = json.load(open("out"))
bound = [t for t in tokens if t["client_id"] == sys.argv[1]]
assert len(bound) == 1 and bound[0]["role"] == "client", tokens
assert all("secret" not in t and "token" not in t for t in tokens), tokens' "$c1_id" ||
    fail "token list: $(cat out)"

# The same token with another client id is refused, and so is c1's id with another token.
mkdir -p thief && echo "another-client-id" >thief/client_id
start_client thief --path proj --work-dir thief --token-file "$c1_token"
thief_pid=$CLIENT_PID
wait_for 30 "the client with a borrowed token to stop" bash -c "! kill -0 $thief_pid"
wait "$thief_pid" && fail "the client with a borrowed token exited with 0"
grep -qF "belongs to client id $c1_id; it cannot connect as client id another-client-id" client-thief.log || fail "no reason: $(cat client-thief.log)"
mkdir -p twin && cp clients/c1/client_id twin/
start_client twin --path proj --work-dir twin --token-file spare.token
twin_pid=$CLIENT_PID
wait_for 30 "the impersonating client to stop" bash -c "! kill -0 $twin_pid"
grep -qF "client id $c1_id belongs to another token" client-twin.log ||
    fail "no reason: $(cat client-twin.log)"
kill -0 "$c1_pid" || fail "c1 stopped"

# Revoking c1's token closes its stream at once; the client stops with an error.
c1_token_id=$(cut -d_ -f2 "$c1_token")
run_fedcli token revoke "${c1_token_id:0:6}"
expect_rc 0
expect_in out "revoked client token $c1_token_id"
wait_for 30 "the revoked client to stop" bash -c "! kill -0 $c1_pid"
grep -qF "access token $c1_token_id was revoked" client-c1.log ||
    fail "no reason in the client's log: $(tail -n 5 client-c1.log)"
wait_for 30 "c1 to be offline" clients_match "not any(x['online'] for x in c)"
run_fedcli token list
expect_rc 0
expect_in out "revoked"
run_fedcli token revoke "$c1_token_id"
expect_rc 1
expect_in err "already revoked"

# Tokens never travel in clear text to another machine, unless --insecure says so.
run_fedcli clients list --combiner 192.0.2.1:12080
expect_rc 1
expect_in err "refusing to send an access token in clear text to 192.0.2.1:12080"

# An insecure combiner warns loudly and serves without tokens.
stop_process "$COMBINER_PID"
start_combiner --insecure
grep -qF "WARNING: running without authentication (--insecure)" combiner.log ||
    fail "no warning: $(cat combiner.log)"
run_fedcli session status
expect_rc 0
expect_in out "WARNING   the combiner runs without authentication (--insecure)"
run_fedcli session status --json
expect_rc 0
expect_in out '"insecure":true'
