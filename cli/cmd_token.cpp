// `fedcli token create|list|revoke`: the combiner's access tokens (docs/security.md), through
// its Control service (admin token needed), or — `token create --data-dir` — written
// straight into the state database of a combiner that is not running.
#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/app.hpp"
#include "cli/commands.hpp"
#include "cli/federation.hpp"
#include "cli/text.hpp"
#include "combiner/auth.hpp"
#include "combiner/db.hpp"
#include "core/error.hpp"
#include "core/util/ids.hpp"

namespace fedcli::cli {

namespace {

namespace v1 = fedcli::v1;
using Stub = v1::Control::Stub;

nlohmann::ordered_json token_json(const v1::TokenInfo& token) {
    return {{"token_id", token.token_id()},
            {"name", token.name()},
            {"role", std::string(combiner::role_name(token.role()))},
            {"client_id", token.client_id()},
            {"created_unix_ms", token.created_unix_ms()},
            {"expires_unix_ms", token.expires_unix_ms()},
            {"revoked_unix_ms", token.revoked_unix_ms()},
            {"last_used_unix_ms", token.last_used_unix_ms()}};
}

/// "active", "revoked", "expired".
std::string token_state(const v1::TokenInfo& token) {
    if (token.revoked_unix_ms() != 0) return "revoked";
    if (token.expires_unix_ms() != 0 && token.expires_unix_ms() <= util::now_unix_ms()) {
        return "expired";
    }
    return "active";
}

struct CreateOptions {
    std::string combiner = k_default_combiner;
    std::string role;
    std::string name;
    std::string expires;
    std::filesystem::path data_dir;
    bool json = false;
};

void print_created(std::ostream& out, const std::string& token, const v1::TokenInfo& info,
                   bool json) {
    if (json) {
        nlohmann::ordered_json object = token_json(info);
        object["token"] = token;
        out << dump_json(object) << '\n';
        return;
    }
    // The token alone on stdout, so `fedcli token create ... > c1.token` stores it.
    out << token << '\n';
}

int token_create(const CreateOptions& options, const Streams& streams) {
    const std::string command = "fedcli token create";
    const std::optional<v1::TokenRole> role = combiner::parse_role(options.role);
    if (!role) {
        throw UsageError("--role must be client or admin, not '" + options.role + "'", command);
    }
    std::int64_t expires_in_ms = 0;
    if (!options.expires.empty()) {
        expires_in_ms = combiner::parse_duration(options.expires, "--expires").count();
    }
    v1::TokenInfo info;
    std::string token;
    if (!options.data_dir.empty()) {
        const std::filesystem::path file = options.data_dir / "state.db";
        if (!std::filesystem::is_directory(options.data_dir)) {
            throw Error(options.data_dir.string() + ": no such folder (--data-dir)");
        }
        combiner::Database database(file);
        combiner::TokenRegistry registry([&](const v1::TokenInfo& record, const std::string& hash) {
            database.save_token(record, hash);
        });
        registry.load(database.load().tokens);
        std::tie(token, info) = registry.create(
            *role, options.name, expires_in_ms == 0 ? 0 : util::now_unix_ms() + expires_in_ms);
        database.flush();
    } else {
        CombinerConnection connection(options.combiner);
        v1::CreateTokenRequest request;
        request.set_role(*role);
        request.set_name(options.name);
        request.set_expires_in_ms(expires_in_ms);
        v1::CreateTokenResponse response =
            connection.call(&Stub::CreateToken, request, "creating a token");
        token = response.token();
        info = response.info();
    }
    print_created(streams.out, token, info, options.json);
    streams.err << "created " << combiner::role_name(info.role()) << " token " << info.token_id()
                << (info.expires_unix_ms() ? ", expires " + utc_time(info.expires_unix_ms())
                                           : std::string(", never expires"))
                << "; it is shown only this once\n";
    return k_exit_success;
}

Action setup_create(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<CreateOptions>();
    command.add_option("--role", options->role, "client or admin")->type_name("ROLE")->required();
    command.add_option("--name", options->name, "A name to recognise the token by")
        ->type_name("NAME");
    command
        .add_option("--expires", options->expires,
                    "Lifetime, e.g. 30m, 12h, 7d, 2w (default: never expires)")
        ->type_name("DURATION");
    command
        .add_option("--data-dir", options->data_dir,
                    "Write into this combiner data folder directly instead of asking a running "
                    "combiner (only while no combiner runs on it)")
        ->type_name("DIR");
    command.add_flag("--json", options->json, "Print a JSON object with the token and its record");
    add_combiner_option(command, options->combiner);
    command.footer(
        "Prints the token on stdout, once: the combiner keeps only a hash of it. A client\n"
        "token lets one client connect, download, and upload and report the results of its\n"
        "own tasks; it is bound to the client id it first connects with. An admin token\n"
        "may do everything (sessions, packages, models, tokens).\n"
        "Examples:\n"
        "  fedcli token create --role client --name c1 --expires 30d > c1.token\n"
        "  fedcli client start --name c1 --token-file c1.token");
    const Streams& out = streams;
    return [options, out] { return token_create(*options, out); };
}

int token_list(const ListingOptions& options, std::ostream& out) {
    CombinerConnection connection(options.combiner);
    v1::ListTokensResponse response =
        connection.call(&Stub::ListTokens, v1::ListTokensRequest{}, "listing the tokens");
    if (options.json) {
        print_json_array(out, response.tokens(), token_json);
        return k_exit_success;
    }
    Table table({"TOKEN ID", "ROLE", "NAME", "STATE", "CLIENT", "CREATED", "EXPIRES", "LAST USED"});
    for (const v1::TokenInfo& token : response.tokens()) {
        table.add_row({token.token_id(), std::string(combiner::role_name(token.role())),
                       token.name().empty() ? "-" : token.name(), token_state(token),
                       short_id(token.client_id()), utc_time(token.created_unix_ms()),
                       token.expires_unix_ms() ? utc_time(token.expires_unix_ms()) : "never",
                       utc_time(token.last_used_unix_ms())});
    }
    table.print(out);
    return k_exit_success;
}

Action setup_list(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<ListingOptions>();
    add_listing_options(command, *options);
    command.footer(
        "Lists every token of the combiner (never their secrets): id, role, name, state\n"
        "(active, expired, revoked), the client id a client token is bound to, and times.");
    std::ostream& out = streams.out;
    return [options, &out] { return token_list(*options, out); };
}

struct RevokeOptions {
    std::string combiner = k_default_combiner;
    std::string token_id;
};

int token_revoke(const RevokeOptions& options, std::ostream& out) {
    CombinerConnection connection(options.combiner);
    v1::RevokeTokenRequest request;
    request.set_token_id(options.token_id);
    v1::RevokeTokenResponse response =
        connection.call(&Stub::RevokeToken, request, "revoking token " + options.token_id);
    out << "revoked " << combiner::role_name(response.info().role()) << " token "
        << response.info().token_id()
        << (response.info().client_id().empty()
                ? std::string()
                : " (client id " + short_id(response.info().client_id()) + ", disconnected)")
        << '\n';
    return k_exit_success;
}

Action setup_revoke(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<RevokeOptions>();
    command
        .add_option("token", options->token_id,
                    "Token id (12 hex digits, or a unique prefix of 4 or more), or the token")
        ->required();
    add_combiner_option(command, options->combiner);
    command.footer(
        "Revokes at once: calls with the token are refused from now on, and the stream of\n"
        "the client it belongs to is closed (the client stops with an error).\n"
        "Example:\n  fedcli token revoke 3fa2b1c0d4e5");
    std::ostream& out = streams.out;
    return [options, &out] { return token_revoke(*options, out); };
}

}  // namespace

void register_token_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_commands[] = {
        {"create", "Make an access token for a client or an operator (printed once)", setup_create},
        {"list", "List the combiner's access tokens (never their secrets)", setup_list},
        {"revoke", "Revoke an access token and disconnect the client using it", setup_revoke},
    };
    add_group(app, "token", "Manage the combiner's access tokens (clients and operators)",
              k_commands, dispatch);
}

}  // namespace fedcli::cli
