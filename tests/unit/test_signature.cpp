// core/package/signature: Ed25519 keys and package signatures.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/package/signature.hpp"
#include "tests/unit/support.hpp"

using fedcli::Error;
namespace package = fedcli::package;

namespace {

const std::string k_sha = std::string(64, 'a');
const std::string k_other_sha = std::string(63, 'a') + "b";

}  // namespace

TEST_CASE("a key pair signs a package and the public key verifies it") {
    fedcli::test::TempDir dir;
    const auto public_key = package::generate_key_pair(dir / "k.key", dir / "k.pub");
    struct stat info {};
    REQUIRE(::stat((dir / "k.key").c_str(), &info) == 0);
    CHECK((info.st_mode & 0777) == 0600);

    const auto secret = package::load_secret_key(dir / "k.key");
    const auto loaded = package::load_public_key(dir / "k.pub");
    CHECK(loaded.bytes == public_key.bytes);
    CHECK(secret.public_key().bytes == public_key.bytes);
    CHECK(public_key.id().size() == 16);

    const std::string signature = package::sign_package(secret, k_sha);
    CHECK(signature.rfind("fedcli-signature-v1 ed25519 " + public_key.id() + " ", 0) == 0);
    const std::vector<package::PublicKey> trusted = {loaded};
    CHECK(package::verify_package(signature, k_sha, trusted) == public_key.id());
    // Upper-case hex names the same package.
    std::string upper = k_sha;
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    CHECK(package::verify_package(signature, upper, trusted) == public_key.id());
}

TEST_CASE("a signature for another package, a tampered one or an untrusted key is refused") {
    fedcli::test::TempDir dir;
    package::generate_key_pair(dir / "a.key", dir / "a.pub");
    package::generate_key_pair(dir / "b.key", dir / "b.pub");
    const auto a_secret = package::load_secret_key(dir / "a.key");
    const std::vector<package::PublicKey> trust_a = {package::load_public_key(dir / "a.pub")};
    const std::vector<package::PublicKey> trust_b = {package::load_public_key(dir / "b.pub")};
    const std::string signature = package::sign_package(a_secret, k_sha);

    CHECK_THROWS_WITH(package::verify_package(signature, k_other_sha, trust_a),
                      Catch::Contains("does not match this package"));
    CHECK_THROWS_WITH(
        package::verify_package(signature, k_sha, trust_b),
        Catch::Contains("which this client does not trust") && Catch::Contains(trust_b[0].id()));
    CHECK_THROWS_WITH(package::verify_package(signature, k_sha, {}),
                      Catch::Contains("no --trust-key given"));

    // One flipped base64 character of the signature (well inside: the last characters
    // before the padding carry bits that decoding may ignore).
    std::string tampered = signature;
    char& inside = tampered[tampered.size() - 20];
    inside = inside == 'A' ? 'B' : 'A';
    CHECK_THROWS_WITH(package::verify_package(tampered, k_sha, trust_a),
                      Catch::Contains("does not match"));
    CHECK_THROWS_WITH(package::verify_package("garbage", k_sha, trust_a),
                      Catch::Contains("malformed"));
    CHECK_THROWS_WITH(package::verify_package(signature, "not-a-sha", trust_a),
                      Catch::Contains("is not a sha256"));
}

TEST_CASE("key files are checked: wrong kind, damaged, never overwritten") {
    fedcli::test::TempDir dir;
    package::generate_key_pair(dir / "k.key", dir / "k.pub");
    CHECK_THROWS_WITH(package::load_public_key(dir / "k.key"),
                      Catch::Contains("this is a SECRET key"));
    CHECK_THROWS_WITH(package::load_secret_key(dir / "k.pub"),
                      Catch::Contains("not a fedcli secret key"));
    CHECK_THROWS_WITH(package::generate_key_pair(dir / "k.key", dir / "other.pub"),
                      Catch::Contains("never overwritten"));

    CHECK_THROWS_WITH(package::parse_secret_key("fedcli-ed25519-secret AAAA", "x.key"),
                      Catch::Contains("x.key") && Catch::Contains("64 bytes"));
    CHECK_THROWS_WITH(package::parse_public_key("fedcli-ed25519-public !!!", "p.pub"),
                      Catch::Contains("p.pub"));
}
