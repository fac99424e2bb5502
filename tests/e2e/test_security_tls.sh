# TLS end to end with certificates from `fedcli certs create`: a TLS combiner serves clients
# and operators that pass --ca; plaintext to it fails with a message saying to pass --ca;
# with --client-ca (mutual TLS) a client certificate is required.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/federation_project.sh"
cd "$WORK"

run_fedcli certs create --out certs --host localhost --client c1
expect_rc 0
expect_in out "start the combiner with --tls-cert certs/server.pem"
for file in ca.pem ca.key server.pem server.key client-c1.pem client-c1.key; do
    [[ -s certs/$file ]] || fail "certs create did not write $file"
done
for key in ca.key server.key client-c1.key; do
    [[ $(stat -c %a "certs/$key") == 600 ]] || fail "$key is not mode 0600"
done
run_fedcli certs create --out certs --host "bad host"
expect_rc 2

write_toy_project proj
run_fedcli run build --path proj
expect_rc 0
start_combiner --tls-cert certs/server.pem --tls-key certs/server.key
grep -qF ", TLS, tokens required" combiner.log || fail "no TLS in the log: $(cat combiner.log)"

# Plaintext to the TLS combiner fails clearly.
run_fedcli clients list
expect_rc 1
expect_in err "speaks TLS; pass --ca FILE"

# With the CA, operators and clients get through (FEDCLI_CA for the helpers).
export FEDCLI_CA=$WORK/certs/ca.pem
run_fedcli model push proj/seed.npz
expect_rc 0
start_client c1 --path proj --ca certs/ca.pem
wait_clients_idle 1
run_fedcli session start --rounds 1 --min-clients 1
expect_rc 0
check_status 'assert s["state"] == "finished", s'

# A CA that did not sign the combiner's certificate is refused.
run_fedcli certs create --out other --host localhost
expect_rc 0
run_fedcli clients list --ca other/ca.pem
expect_rc 1
expect_in err "TLS failed"

# Mutual TLS: a client certificate signed by the CA is required.
stop_process "${CLIENT_PIDS[c1]}"
stop_process "$COMBINER_PID"
RESTART=1 start_combiner --tls-cert certs/server.pem --tls-key certs/server.key \
    --client-ca certs/ca.pem
grep -qF "TLS with client certificates" combiner.log || fail "no mTLS in the log"
run_fedcli clients list
expect_rc 1
run_fedcli clients list --tls-cert certs/client-c1.pem --tls-key certs/client-c1.key
expect_rc 0
mtls=(--tls-cert certs/client-c1.pem --tls-key certs/client-c1.key)
run_fedcli token create --role client --name c2 "${mtls[@]}"
expect_rc 0
cp out c2.token
start_client c2 --path proj --ca certs/ca.pem "${mtls[@]}" --token-file c2.token
clients_json() {
    "$FEDCLI" clients list --json "${mtls[@]}" >"$WORK/clients.json"
}
wait_clients_idle 1
