# Trusted packages: a client runs a package from the combiner only when a key it trusts
# signed it or its sha256 is pinned. Unsigned, signed by an untrusted key, and tampered
# (a trusted key's signature of another package) are refused with a log line saying why,
# and the client holds no package; a good signature or a pin installs it.
source "$(dirname "$0")/lib.sh"
cd "$WORK"

run_fedcli project init p --template numpy
expect_rc 0
run_fedcli package create --path p -o p.tgz
expect_rc 0
sha=$(sha256sum p.tgz | cut -d' ' -f1)
echo "# changed" >>p/fedcli.yaml
run_fedcli package create --path p -o other.tgz
expect_rc 0
run_fedcli package keygen --out keys
expect_rc 0
expect_in out "keys/package.pub"
run_fedcli package keygen --out untrusted
expect_rc 0

# The CLI's own check.
run_fedcli package sign --key keys/package.key p.tgz -o good.sig
expect_rc 0
run_fedcli package verify p.tgz --signature good.sig --trust-key keys/package.pub
expect_rc 0
expect_in out "good signature by trusted key"
run_fedcli package sign --key keys/package.key other.tgz -o tampered.sig
expect_rc 0
run_fedcli package verify p.tgz --signature tampered.sig --trust-key keys/package.pub
expect_rc 1
expect_in err "does not match this package"
run_fedcli package sign --key untrusted/package.pub p.tgz
expect_rc 1
expect_in err "not a fedcli secret key"

start_combiner --heartbeat-interval 0.5
start_client c1 --trust-key keys/package.pub
log=$WORK/client-c1.log
refused() {
    wait_for 60 "the client to refuse: $1 ($(tail -n 3 "$log"))" grep -qF -- "$1" "$log"
    clients_match "c[0]['package'] == ''" || fail "the client installed a refused package"
}

run_fedcli package push p.tgz
expect_rc 0
expect_in out "signed   no"
refused "is unsigned and its sha256 is not pinned: refusing to run its code"

run_fedcli package sign --key untrusted/package.key p.tgz
expect_rc 0
run_fedcli package push p.tgz # p.tgz.sig goes along
expect_rc 0
refused "which this client does not trust"

run_fedcli package push p.tgz --signature tampered.sig
expect_rc 0
refused "does not match this package (tampered, or signed for another package)"

run_fedcli package push p.tgz --signature good.sig
expect_rc 0
wait_for 60 "the signed package to be installed ($(tail -n 3 "$log"))" \
    clients_match "c[0]['package'] == '$sha' and c[0]['status'] == 'idle'"
grep -qF "trusted: signed by key" "$log" || fail "the client did not say why it trusts the package"

# A pin needs no signature; a client with neither refuses even a signed package.
start_client pinned --package-sha256 "$sha"
start_client bare
wait_for 60 "the pinned client to install the package" grep -qF "its sha256 is pinned" \
    "$WORK/client-pinned.log"
wait_for 60 "the bare client to refuse" grep -qF "signed, but no --trust-key was given" \
    "$WORK/client-bare.log"
