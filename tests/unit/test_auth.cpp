// Access tokens (combiner/auth.hpp): text form, hashing, durations, and the registry's
// authentication, client binding and revocation.
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "combiner/auth.hpp"
#include "combiner/db.hpp"
#include "core/error.hpp"
#include "tests/unit/support.hpp"

namespace {

namespace v1 = fedcli::v1;
using namespace fedcli::combiner;
using namespace std::chrono_literals;

/// A registry whose saves are recorded.
struct Recorded {
    std::vector<StoredToken> saves;
    TokenRegistry registry{[this](const v1::TokenInfo& info, const std::string& hash) {
        saves.push_back({info, hash});
    }};
};

std::optional<std::string> bearer(const std::string& token) {
    return "Bearer " + token;
}

}  // namespace

TEST_CASE("token text: generate, parse, hash", "[auth]") {
    const TokenText token = generate_token();
    CHECK(token.token_id.size() == k_token_id_digits);
    CHECK(token.secret.size() == k_token_secret_digits);
    const std::string text = token_string(token);
    CHECK(text.rfind("fedcli_", 0) == 0);
    const auto parsed = parse_token(text);
    REQUIRE(parsed);
    CHECK(parsed->token_id == token.token_id);
    CHECK(parsed->secret == token.secret);
    CHECK(generate_token().secret != token.secret);

    CHECK_FALSE(parse_token(""));
    CHECK_FALSE(parse_token("fedcli_0123456789ab"));
    CHECK_FALSE(parse_token("fedcli_0123456789a_" + std::string(40, 'a')));   // short id
    CHECK_FALSE(parse_token("fedcli_0123456789ab_" + std::string(31, 'a')));  // short secret
    CHECK_FALSE(parse_token("fedcli_0123456789AB_" + std::string(40, 'a')));  // uppercase
    CHECK_FALSE(parse_token("token_0123456789ab_" + std::string(40, 'a')));
    CHECK(parse_token("fedcli_0123456789ab_" + std::string(32, 'f')));

    CHECK(hash_secret("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(equal_in_constant_time("abc", "abc"));
    CHECK_FALSE(equal_in_constant_time("abc", "abd"));
    CHECK_FALSE(equal_in_constant_time("abc", "abcd"));
}

TEST_CASE("durations: 90s, 30m, 12h, 7d, 2w", "[auth]") {
    CHECK(parse_duration("90s", "--expires") == 90s);
    CHECK(parse_duration("30m", "--expires") == 30min);
    CHECK(parse_duration("12h", "--expires") == 12h);
    CHECK(parse_duration("7d", "--expires") == 7 * 24h);
    CHECK(parse_duration("2w", "--expires") == 14 * 24h);
    CHECK_THROWS_WITH(
        parse_duration("3x", "--expires"),
        Catch::Contains("--expires: '3x' is not a duration") && Catch::Contains("30m, 12h, 7d"));
    CHECK_THROWS_WITH(parse_duration("h", "--expires"), Catch::Contains("not a duration"));
    CHECK_THROWS_WITH(parse_duration("-1h", "--expires"), Catch::Contains("not a duration"));
    CHECK_THROWS_WITH(parse_duration("0d", "--expires"), Catch::Contains("longer than 0"));
    CHECK(role_name(v1::TOKEN_ROLE_CLIENT) == "client");
    CHECK(parse_role("admin") == v1::TOKEN_ROLE_ADMIN);
    CHECK_FALSE(parse_role("root"));
}

TEST_CASE("the registry authenticates, stores only hashes and refuses bad tokens", "[auth]") {
    Recorded recorded;
    TokenRegistry& registry = recorded.registry;
    auto [admin, admin_info] = registry.create(v1::TOKEN_ROLE_ADMIN, "ops", 0);
    REQUIRE(recorded.saves.size() == 1);
    CHECK(recorded.saves[0].secret_hash == hash_secret(parse_token(admin)->secret));
    CHECK(recorded.saves[0].secret_hash.find(parse_token(admin)->secret) == std::string::npos);
    CHECK(registry.has_usable_admin());

    Caller caller;
    REQUIRE(registry.authenticate(bearer(admin), caller).ok());
    CHECK(caller.role == v1::TOKEN_ROLE_ADMIN);
    CHECK(caller.token_id == admin_info.token_id());

    auto refused = [&](const std::optional<std::string>& header) {
        Caller ignored;
        grpc::Status status = registry.authenticate(header, ignored);
        CHECK(status.error_code() == grpc::StatusCode::UNAUTHENTICATED);
        return status.error_message();
    };
    CHECK_THAT(refused(std::nullopt), Catch::Contains("no access token"));
    CHECK_THAT(refused(std::string("Basic abc")), Catch::Contains("not 'Bearer <token>'"));
    CHECK_THAT(refused(bearer("nonsense")), Catch::Contains("malformed"));
    TokenText wrong = *parse_token(admin);
    wrong.secret[0] = wrong.secret[0] == 'a' ? 'b' : 'a';
    const std::string message = refused(bearer(token_string(wrong)));
    CHECK_THAT(message, Catch::Contains("access token " + wrong.token_id + " is not valid"));
    CHECK(message.find(wrong.secret) == std::string::npos);  // never echoes a secret

    auto [brief, brief_info] = registry.create(v1::TOKEN_ROLE_CLIENT, "", 1);  // long expired
    CHECK_THAT(refused(bearer(brief)), Catch::Contains("expired"));
    CHECK_FALSE(registry.usable(brief_info.token_id()));

    v1::TokenInfo revoked;
    REQUIRE(registry.revoke(admin_info.token_id().substr(0, 6), revoked).ok());
    CHECK(revoked.revoked_unix_ms() > 0);
    CHECK_THAT(refused(bearer(admin)), Catch::Contains("was revoked"));
    CHECK_FALSE(registry.has_usable_admin());
    CHECK(registry.revoke(admin, revoked).error_code() == grpc::StatusCode::FAILED_PRECONDITION);
    CHECK(registry.revoke("ffffffffffff", revoked).error_code() == grpc::StatusCode::NOT_FOUND);
    CHECK(registry.revoke("ab", revoked).error_code() == grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_CASE("a client token is bound to the client id it first connects with", "[auth]") {
    Recorded recorded;
    TokenRegistry& registry = recorded.registry;
    auto [one, one_info] = registry.create(v1::TOKEN_ROLE_CLIENT, "c1", 0);
    auto [two, two_info] = registry.create(v1::TOKEN_ROLE_CLIENT, "c2", 0);
    auto [admin, admin_info] = registry.create(v1::TOKEN_ROLE_ADMIN, "", 0);
    Caller first;
    Caller second;
    Caller operator_caller;
    REQUIRE(registry.authenticate(bearer(one), first).ok());
    REQUIRE(registry.authenticate(bearer(two), second).ok());
    REQUIRE(registry.authenticate(bearer(admin), operator_caller).ok());

    std::string id;
    REQUIRE(registry.bind_client(first, "client-a", "fresh", id).ok());
    CHECK(id == "client-a");
    CHECK(registry.list()[0].client_id() == "client-a");
    CHECK(recorded.saves.back().info.client_id() == "client-a");
    // The same id again, or none (a client that lost its work folder): the bound id.
    REQUIRE(registry.bind_client(first, "client-a", "fresh", id).ok());
    REQUIRE(registry.bind_client(first, "", "fresh", id).ok());
    CHECK(id == "client-a");

    grpc::Status other_id = registry.bind_client(first, "client-b", "fresh", id);
    CHECK(other_id.error_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK_THAT(other_id.error_message(),
               Catch::Contains("client token " + one_info.token_id() +
                               " belongs to client id client-a; it cannot connect as client id "
                               "client-b"));
    for (const Caller& intruder : {second, operator_caller}) {
        grpc::Status taken = registry.bind_client(intruder, "client-a", "fresh", id);
        CHECK(taken.error_code() == grpc::StatusCode::PERMISSION_DENIED);
        CHECK_THAT(taken.error_message(), Catch::Contains("client id client-a belongs to another "
                                                          "token"));
    }
    // An unbound token asking for no id gets the fresh one; admin tokens are never bound.
    REQUIRE(registry.bind_client(second, "", "fresh", id).ok());
    CHECK(id == "fresh");
    REQUIRE(registry.bind_client(operator_caller, "ops-client", "x", id).ok());
    CHECK(registry.list()[2].client_id().empty());
    // Unauthenticated mode: anything goes.
    REQUIRE(registry.bind_client(Caller{}, "client-a", "fresh", id).ok());

    // The records reload as they were saved.
    TokenRegistry reloaded([](const v1::TokenInfo&, const std::string&) {});
    std::vector<StoredToken> latest;
    for (const v1::TokenInfo& info : registry.list()) {
        for (auto it = recorded.saves.rbegin(); it != recorded.saves.rend(); ++it) {
            if (it->info.token_id() == info.token_id()) {
                latest.push_back({info, it->secret_hash});
                break;
            }
        }
    }
    reloaded.load(latest);
    Caller again;
    REQUIRE(reloaded.authenticate(bearer(one), again).ok());
    CHECK(again.client_id == "client-a");
}

TEST_CASE("tokens are saved in the state database and load back", "[auth]") {
    fedcli::test::TempDir dir;
    v1::TokenInfo info;
    info.set_token_id("0123456789ab");
    info.set_name("c1");
    info.set_role(v1::TOKEN_ROLE_CLIENT);
    info.set_created_unix_ms(1000);
    info.set_expires_unix_ms(2000);
    info.set_client_id("client-a");
    {
        Database db(dir / "state.db");
        db.save_token(info, std::string(64, 'e'));
        info.set_revoked_unix_ms(1500);
        db.save_token(info, std::string(64, 'e'));
        db.flush();
    }
    Database db(dir / "state.db");
    const StoredState state = db.load();
    REQUIRE(state.tokens.size() == 1);
    CHECK(state.tokens[0].secret_hash == std::string(64, 'e'));
    CHECK(state.tokens[0].info.SerializeAsString() == info.SerializeAsString());
}
