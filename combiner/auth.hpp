// Access tokens of the combiner (docs/security.md): their text form, how secrets are
// hashed and compared, expiry durations, and the registry that authenticates calls.
//
// A token is "fedcli_<token id: 12 hex digits>_<secret: 32 or more hex digits>". The id is
// public (listings, logs); only SHA-256(secret) is stored, and a presented secret's hash is
// compared in constant time. A token has a role: `admin` may call everything, `client` the
// Federation and Transfer services as one client — the client id it first connects with
// (it is bound to it; see TokenRegistry::bind_client).
//
// Thread-safety: the free functions are reentrant; every TokenRegistry member may be called
// from any thread (one internal mutex, a leaf: nothing else is locked under it except the
// save callback, which must not call back into the registry).
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "combiner/db.hpp"
#include "core/proto/fedcli.pb.h"

namespace fedcli::combiner {

inline constexpr std::size_t k_token_id_digits = 12;
/// Digits of a secret fedcli makes (160 bits); 32 is the least a presented token may have.
inline constexpr std::size_t k_token_secret_digits = 40;
inline constexpr std::size_t k_token_secret_min_digits = 32;

/// The parts of a token's text.
struct TokenText {
    std::string token_id;
    std::string secret;
};

/// Splits "fedcli_<12 hex>_<32+ hex>" (lowercase hex); nullopt when malformed.
std::optional<TokenText> parse_token(std::string_view text);
/// A fresh random token (id and secret from the system's random source).
TokenText generate_token();
/// "fedcli_<id>_<secret>".
std::string token_string(const TokenText& token);
/// Lowercase hex SHA-256 of the secret: what the combiner stores.
std::string hash_secret(std::string_view secret);
/// Whether two strings are equal, taking the same time whatever their contents (their
/// lengths may leak; hashes always have the same length).
bool equal_in_constant_time(std::string_view left, std::string_view right);

/// A duration such as "90s", "30m", "12h", "7d" or "2w" (a positive whole number and one
/// unit). Throws fedcli::Error naming `what` ("--expires") and the forms it accepts.
std::chrono::milliseconds parse_duration(std::string_view text, std::string_view what);

/// "client", "admin"; "unknown" for anything else.
std::string_view role_name(v1::TokenRole role);
/// "client" or "admin"; nullopt otherwise.
std::optional<v1::TokenRole> parse_role(std::string_view text);

/// Who makes a call, as authenticate() found it.
struct Caller {
    /// Empty in unauthenticated mode (--insecure): anyone, with every right.
    std::string token_id;
    v1::TokenRole role = v1::TOKEN_ROLE_ADMIN;
    /// For a client token: the client id it is bound to ("" until its first Connect).
    std::string client_id;

    bool is_client() const { return role == v1::TOKEN_ROLE_CLIENT; }
    /// "token 3fa2b1c0d4e5 (client 'c1')" style label for log lines; "anonymous caller" in
    /// unauthenticated mode.
    std::string label() const;
};

/// The combiner's tokens, in memory; every change goes to `save` (the state database).
class TokenRegistry {
  public:
    using Save = std::function<void(const v1::TokenInfo& info, const std::string& secret_hash)>;
    explicit TokenRegistry(Save save) : m_save(std::move(save)) {}

    /// Replaces the registry's contents (start-up).
    void load(const std::vector<StoredToken>& tokens);

    /// A new token. `expires_unix_ms` 0: never. Returns the token's text (shown once) and its
    /// record.
    std::pair<std::string, v1::TokenInfo> create(v1::TokenRole role, const std::string& name,
                                                 std::int64_t expires_unix_ms);

    /// Checks the value of the `authorization` metadata ("Bearer <token>"; absent: nullopt).
    /// OK with `caller` filled in, or UNAUTHENTICATED saying why: missing, malformed, unknown
    /// or wrong secret ("not valid"), expired, revoked. Never echoes the secret.
    grpc::Status authenticate(const std::optional<std::string>& header, Caller& caller);

    /// Which client id a Connect with `requested` ("" or malformed: none) may use. A client
    /// token bound to an id gets that id for an empty request and PERMISSION_DENIED for
    /// another; an unbound one is bound to `requested` (or to `fresh_id` when empty). An id
    /// bound to one token is refused to every other token (admin tokens included). Sets
    /// `client_id` on OK.
    grpc::Status bind_client(const Caller& caller, const std::string& requested,
                             const std::string& fresh_id, std::string& client_id);

    /// Every token, oldest first.
    std::vector<v1::TokenInfo> list() const;
    /// Revokes the token named by id, unique id prefix (4+ digits) or whole text.
    /// NOT_FOUND, INVALID_ARGUMENT (ambiguous, too short) or FAILED_PRECONDITION (already
    /// revoked) otherwise.
    grpc::Status revoke(const std::string& name, v1::TokenInfo& revoked);
    /// Whether the token may still be used now (known, not revoked, not expired).
    bool usable(const std::string& token_id) const;
    /// Whether an admin token that may be used exists.
    bool has_usable_admin() const;

  private:
    struct Record {
        v1::TokenInfo info;
        std::string secret_hash;
        std::int64_t last_saved_use_ms = 0;
    };
    bool usable_locked(const Record& record, std::int64_t now_ms) const;

    Save m_save;
    mutable std::mutex m_mutex;
    std::map<std::string, Record> m_tokens;  ///< by token id
    std::vector<std::string> m_order;        ///< token ids, oldest first
};

}  // namespace fedcli::combiner
