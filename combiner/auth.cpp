// Access tokens: text form, hashing, durations and the registry (combiner/auth.hpp).
#include "combiner/auth.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cctype>
#include <limits>

#include "core/error.hpp"
#include "core/util/ids.hpp"
#include "core/util/sha256.hpp"

namespace fedcli::combiner {

namespace {

constexpr std::string_view k_prefix = "fedcli_";
constexpr std::string_view k_bearer = "Bearer ";

bool is_lower_hex(std::string_view text) {
    return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
    });
}

std::string secure_random_hex(std::size_t digits) {
    std::string bytes((digits + 1) / 2, '\0');
    if (RAND_bytes(reinterpret_cast<unsigned char*>(bytes.data()),
                   static_cast<int>(bytes.size())) != 1) {
        throw Error("creating a token: the system's random source failed");
    }
    static constexpr char k_digits[] = "0123456789abcdef";
    std::string text;
    for (unsigned char byte : bytes) {
        text.push_back(k_digits[byte >> 4]);
        text.push_back(k_digits[byte & 15]);
    }
    text.resize(digits);
    return text;
}

grpc::Status unauthenticated(const std::string& why) {
    return {grpc::StatusCode::UNAUTHENTICATED, why};
}

}  // namespace

std::optional<TokenText> parse_token(std::string_view text) {
    if (text.substr(0, k_prefix.size()) != k_prefix) return std::nullopt;
    text.remove_prefix(k_prefix.size());
    const std::size_t separator = text.find('_');
    if (separator != k_token_id_digits) return std::nullopt;
    const std::string_view id = text.substr(0, separator);
    const std::string_view secret = text.substr(separator + 1);
    if (!is_lower_hex(id) || !is_lower_hex(secret) || secret.size() < k_token_secret_min_digits ||
        secret.size() > 128) {
        return std::nullopt;
    }
    return TokenText{std::string(id), std::string(secret)};
}

TokenText generate_token() {
    return {secure_random_hex(k_token_id_digits), secure_random_hex(k_token_secret_digits)};
}

std::string token_string(const TokenText& token) {
    return std::string(k_prefix) + token.token_id + "_" + token.secret;
}

std::string hash_secret(std::string_view secret) {
    return util::sha256_hex(std::as_bytes(std::span(secret.data(), secret.size())));
}

bool equal_in_constant_time(std::string_view left, std::string_view right) {
    if (left.size() != right.size()) return false;
    return CRYPTO_memcmp(left.data(), right.data(), left.size()) == 0;
}

std::chrono::milliseconds parse_duration(std::string_view text, std::string_view what) {
    auto refuse = [&]() -> Error {
        return Error(std::string(what) + ": '" + std::string(text) +
                     "' is not a duration; use a whole number and a unit, e.g. 90s, 30m, "
                     "12h, 7d or 2w");
    };
    if (text.size() < 2) throw refuse();
    const char unit = text.back();
    const std::string_view digits = text.substr(0, text.size() - 1);
    if (!std::all_of(digits.begin(), digits.end(),
                     [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }) ||
        digits.size() > 9) {
        throw refuse();
    }
    const std::int64_t count = std::stoll(std::string(digits));
    std::int64_t unit_ms = 0;
    switch (unit) {
        case 's':
            unit_ms = 1000;
            break;
        case 'm':
            unit_ms = 60 * 1000;
            break;
        case 'h':
            unit_ms = 3600 * 1000;
            break;
        case 'd':
            unit_ms = 24 * 3600 * 1000;
            break;
        case 'w':
            unit_ms = 7LL * 24 * 3600 * 1000;
            break;
        default:
            throw refuse();
    }
    if (count <= 0) {
        throw Error(std::string(what) + ": '" + std::string(text) + "' must be longer than 0");
    }
    return std::chrono::milliseconds(count * unit_ms);
}

std::string_view role_name(v1::TokenRole role) {
    switch (role) {
        case v1::TOKEN_ROLE_CLIENT:
            return "client";
        case v1::TOKEN_ROLE_ADMIN:
            return "admin";
        default:
            return "unknown";
    }
}

std::optional<v1::TokenRole> parse_role(std::string_view text) {
    if (text == "client") return v1::TOKEN_ROLE_CLIENT;
    if (text == "admin") return v1::TOKEN_ROLE_ADMIN;
    return std::nullopt;
}

std::string Caller::label() const {
    if (token_id.empty()) return "anonymous caller";
    std::string text = std::string(role_name(role)) + " token " + token_id;
    if (!client_id.empty()) text += " (client id " + util::short_id(client_id) + ")";
    return text;
}

// ---------------------------------------------------------------------------------------
// TokenRegistry

void TokenRegistry::load(const std::vector<StoredToken>& tokens) {
    std::lock_guard lock(m_mutex);
    m_tokens.clear();
    m_order.clear();
    for (const StoredToken& token : tokens) {
        Record record{token.info, token.secret_hash, token.info.last_used_unix_ms()};
        if (m_tokens.emplace(token.info.token_id(), std::move(record)).second) {
            m_order.push_back(token.info.token_id());
        }
    }
}

std::pair<std::string, v1::TokenInfo> TokenRegistry::create(v1::TokenRole role,
                                                            const std::string& name,
                                                            std::int64_t expires_unix_ms) {
    if (role != v1::TOKEN_ROLE_CLIENT && role != v1::TOKEN_ROLE_ADMIN) {
        throw Error("creating a token: the role must be client or admin");
    }
    std::lock_guard lock(m_mutex);
    TokenText token = generate_token();
    while (m_tokens.count(token.token_id)) token = generate_token();
    Record record;
    record.info.set_token_id(token.token_id);
    record.info.set_name(name);
    record.info.set_role(role);
    record.info.set_created_unix_ms(util::now_unix_ms());
    record.info.set_expires_unix_ms(expires_unix_ms);
    record.secret_hash = hash_secret(token.secret);
    m_save(record.info, record.secret_hash);
    v1::TokenInfo info = record.info;
    m_tokens.emplace(token.token_id, std::move(record));
    m_order.push_back(token.token_id);
    return {token_string(token), info};
}

bool TokenRegistry::usable_locked(const Record& record, std::int64_t now_ms) const {
    const v1::TokenInfo& info = record.info;
    return info.revoked_unix_ms() == 0 &&
           (info.expires_unix_ms() == 0 || info.expires_unix_ms() > now_ms);
}

grpc::Status TokenRegistry::authenticate(const std::optional<std::string>& header, Caller& caller) {
    if (!header) {
        return unauthenticated(
            "no access token: this combiner requires one (metadata 'authorization: Bearer "
            "<token>'; fedcli takes it from --token, --token-file, FEDCLI_TOKEN or "
            "FEDCLI_TOKEN_FILE)");
    }
    if (header->compare(0, k_bearer.size(), k_bearer) != 0) {
        return unauthenticated("the authorization metadata is not 'Bearer <token>'");
    }
    const std::optional<TokenText> token =
        parse_token(std::string_view(*header).substr(k_bearer.size()));
    if (!token) {
        return unauthenticated(
            "the access token is malformed (expected fedcli_<12 hex digits>_<secret>)");
    }
    const std::string presented_hash = hash_secret(token->secret);
    std::lock_guard lock(m_mutex);
    auto found = m_tokens.find(token->token_id);
    // An unknown id and a wrong secret get the same answer: nobody learns which ids exist.
    if (found == m_tokens.end() ||
        !equal_in_constant_time(found->second.secret_hash, presented_hash)) {
        return unauthenticated("access token " + token->token_id +
                               " is not valid (unknown to this combiner, or a wrong secret)");
    }
    Record& record = found->second;
    const std::int64_t now_ms = util::now_unix_ms();
    if (record.info.revoked_unix_ms() != 0) {
        return unauthenticated("access token " + token->token_id + " was revoked");
    }
    if (record.info.expires_unix_ms() != 0 && record.info.expires_unix_ms() <= now_ms) {
        return unauthenticated("access token " + token->token_id + " expired");
    }
    record.info.set_last_used_unix_ms(now_ms);
    // Last use is for the operator's listing; a minute's precision spares the database.
    if (now_ms - record.last_saved_use_ms >= 60 * 1000) {
        record.last_saved_use_ms = now_ms;
        m_save(record.info, record.secret_hash);
    }
    caller.token_id = record.info.token_id();
    caller.role = record.info.role();
    caller.client_id = record.info.client_id();
    return grpc::Status::OK;
}

grpc::Status TokenRegistry::bind_client(const Caller& caller, const std::string& requested,
                                        const std::string& fresh_id, std::string& client_id) {
    if (caller.token_id.empty()) {  // unauthenticated mode
        client_id = requested.empty() ? fresh_id : requested;
        return grpc::Status::OK;
    }
    std::lock_guard lock(m_mutex);
    auto own = m_tokens.find(caller.token_id);
    if (own == m_tokens.end()) {
        return unauthenticated("access token " + caller.token_id + " is not valid");
    }
    Record& record = own->second;
    const std::string& bound = record.info.client_id();
    if (record.info.role() == v1::TOKEN_ROLE_CLIENT && !bound.empty()) {
        if (!requested.empty() && requested != bound) {
            return {grpc::StatusCode::PERMISSION_DENIED,
                    "client token " + caller.token_id + " belongs to client id " + bound +
                        "; it cannot connect as client id " + requested +
                        " (each client needs its own token)"};
        }
        client_id = bound;
        return grpc::Status::OK;
    }
    const std::string wanted = requested.empty() ? fresh_id : requested;
    for (const auto& [id, other] : m_tokens) {
        if (id != caller.token_id && other.info.client_id() == wanted) {
            return {grpc::StatusCode::PERMISSION_DENIED,
                    "client id " + wanted + " belongs to another token (" + id +
                        "); connect with that token, or as a new client"};
        }
    }
    if (record.info.role() == v1::TOKEN_ROLE_CLIENT) {
        record.info.set_client_id(wanted);
        m_save(record.info, record.secret_hash);
    }
    client_id = wanted;
    return grpc::Status::OK;
}

std::vector<v1::TokenInfo> TokenRegistry::list() const {
    std::lock_guard lock(m_mutex);
    std::vector<v1::TokenInfo> tokens;
    for (const std::string& id : m_order) tokens.push_back(m_tokens.at(id).info);
    return tokens;
}

grpc::Status TokenRegistry::revoke(const std::string& name, v1::TokenInfo& revoked) {
    std::string id = name;
    if (std::optional<TokenText> token = parse_token(name)) id = token->token_id;
    id = util::lowercase(id);
    if (id.size() < 4 || !is_lower_hex(id)) {
        return {grpc::StatusCode::INVALID_ARGUMENT,
                "'" + id.substr(0, 16) +
                    "' is not a token id (12 hex digits, or a unique "
                    "prefix of at least 4)"};
    }
    std::lock_guard lock(m_mutex);
    Record* match = nullptr;
    for (auto& [token_id, record] : m_tokens) {
        if (token_id.compare(0, id.size(), id) != 0) continue;
        if (match) {
            return {grpc::StatusCode::INVALID_ARGUMENT,
                    "token id prefix '" + id + "' is ambiguous; give more digits"};
        }
        match = &record;
    }
    if (!match) return {grpc::StatusCode::NOT_FOUND, "no token with id " + id};
    if (match->info.revoked_unix_ms() != 0) {
        return {grpc::StatusCode::FAILED_PRECONDITION,
                "token " + match->info.token_id() + " is already revoked"};
    }
    match->info.set_revoked_unix_ms(util::now_unix_ms());
    m_save(match->info, match->secret_hash);
    revoked = match->info;
    return grpc::Status::OK;
}

bool TokenRegistry::usable(const std::string& token_id) const {
    std::lock_guard lock(m_mutex);
    auto found = m_tokens.find(token_id);
    return found != m_tokens.end() && usable_locked(found->second, util::now_unix_ms());
}

bool TokenRegistry::has_usable_admin() const {
    std::lock_guard lock(m_mutex);
    const std::int64_t now_ms = util::now_unix_ms();
    return std::any_of(m_tokens.begin(), m_tokens.end(), [&](const auto& entry) {
        return entry.second.info.role() == v1::TOKEN_ROLE_ADMIN &&
               usable_locked(entry.second, now_ms);
    });
}

}  // namespace fedcli::combiner
