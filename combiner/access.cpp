// Access control of the combiner's calls: authentication from the `authorization`
// metadata, roles, the bootstrap admin token, and the token RPCs of Control
// (docs/security.md). The token registry itself is combiner/auth.cpp.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "combiner/internal.hpp"
#include "core/error.hpp"

namespace fedcli::combiner {

namespace fs = std::filesystem;

namespace {

/// Writes `text` to `file` with mode 0600 from the start (a temporary file renamed into
/// place), so the secret is never readable by others, not even for a moment.
void write_private_file(const fs::path& file, const std::string& text) {
    fs::path temporary = file;
    temporary += ".tmp." + std::to_string(::getpid());
    const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        throw Error(file.string() + ": cannot write the admin token: " + std::strerror(errno));
    }
    const bool written =
        ::fchmod(fd, 0600) == 0 &&
        ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
        ::fsync(fd) == 0;
    const int saved_errno = errno;
    ::close(fd);
    if (!written || ::rename(temporary.c_str(), file.c_str()) != 0) {
        const int error = written ? errno : saved_errno;
        ::unlink(temporary.c_str());
        throw Error(file.string() + ": cannot write the admin token: " + std::strerror(error));
    }
}

}  // namespace

fs::path admin_token_file(const fs::path& data_dir) {
    return data_dir / "admin.token";
}

grpc::Status CombinerCore::authorize(const grpc::ServerContext* context, v1::TokenRole needed,
                                     Caller& caller) {
    if (m_options.insecure) {
        caller = Caller{};
        return grpc::Status::OK;
    }
    std::optional<std::string> header;
    const auto& metadata = context->client_metadata();
    auto found = metadata.find("authorization");
    if (found != metadata.end()) header = std::string(found->second.data(), found->second.size());
    grpc::Status status = m_tokens.authenticate(header, caller);
    if (!status.ok()) return status;
    if (needed == v1::TOKEN_ROLE_ADMIN && caller.role != v1::TOKEN_ROLE_ADMIN) {
        return {grpc::StatusCode::PERMISSION_DENIED,
                "this call needs an admin token; " + caller.label() + " may only act as a client"};
    }
    return grpc::Status::OK;
}

grpc::Status CombinerCore::check_acting_client(const Caller& caller, const std::string& client_id,
                                               std::string_view what) const {
    if (!caller.is_client() || caller.token_id.empty()) return grpc::Status::OK;
    if (caller.client_id.empty()) {
        return {grpc::StatusCode::PERMISSION_DENIED,
                std::string(what) + ": client token " + caller.token_id +
                    " has not connected yet; a client token acts as the client id it first "
                    "connects with (Federation.Connect)"};
    }
    if (client_id != caller.client_id) {
        return {grpc::StatusCode::PERMISSION_DENIED,
                std::string(what) + ": client token " + caller.token_id + " belongs to client id " +
                    caller.client_id + "; it cannot act for client id " +
                    (client_id.empty() ? std::string("''") : client_id)};
    }
    return grpc::Status::OK;
}

void CombinerCore::bootstrap_admin_token() {
    if (m_options.insecure || m_tokens.has_usable_admin()) return;
    auto [text, info] = m_tokens.create(v1::TOKEN_ROLE_ADMIN, "bootstrap admin", 0);
    // The token must be in the database before anyone may read it from the file.
    m_db->flush();
    const fs::path file = admin_token_file(m_options.data_dir);
    write_private_file(file, text + "\n");
    log("no admin token existed: created admin token " + info.token_id() + " in " + file.string() +
        " (mode 0600); operator commands on this machine read it from there " +
        "(or pass --token-file " + file.string() + ")");
}

void CombinerCore::close_streams_of_unusable_tokens() {
    for (auto& [id, client] : m_state.clients) {
        if (!client.connection || client.token_id.empty() || m_tokens.usable(client.token_id)) {
            continue;
        }
        log(client.label() + ": access token " + client.token_id +
            " is no longer valid; closing its stream");
        client.connection->cancel();
        client.token_id.clear();
    }
}

v1::CreateTokenResponse CombinerCore::create_token(const v1::CreateTokenRequest& request,
                                                   const Caller& caller, grpc::Status& status) {
    v1::CreateTokenResponse response;
    if (request.role() != v1::TOKEN_ROLE_CLIENT && request.role() != v1::TOKEN_ROLE_ADMIN) {
        status = {grpc::StatusCode::INVALID_ARGUMENT, "the role must be client or admin"};
        return response;
    }
    if (request.expires_in_ms() < 0) {
        status = {grpc::StatusCode::INVALID_ARGUMENT, "expires_in_ms must not be negative"};
        return response;
    }
    if (request.name().size() > 200) {
        status = {grpc::StatusCode::INVALID_ARGUMENT, "the name is longer than 200 bytes"};
        return response;
    }
    const std::int64_t expires =
        request.expires_in_ms() == 0 ? 0 : now_unix_ms() + request.expires_in_ms();
    auto [text, info] = m_tokens.create(request.role(), request.name(), expires);
    try {
        m_db->flush();  // a token handed out must survive a restart
    } catch (const Error& error) {
        status = {grpc::StatusCode::INTERNAL, std::string("saving the token: ") + error.what()};
        return response;
    }
    log(std::string(role_name(info.role())) + " token " + info.token_id() + " created" +
        (info.name().empty() ? "" : " ('" + info.name() + "')") + " by " + caller.label());
    response.set_token(text);
    *response.mutable_info() = info;
    status = grpc::Status::OK;
    return response;
}

v1::ListTokensResponse CombinerCore::list_tokens() {
    v1::ListTokensResponse response;
    for (v1::TokenInfo& info : m_tokens.list()) *response.add_tokens() = std::move(info);
    return response;
}

grpc::Status CombinerCore::revoke_token(const v1::RevokeTokenRequest& request, const Caller& caller,
                                        v1::RevokeTokenResponse* response) {
    v1::TokenInfo revoked;
    grpc::Status status = m_tokens.revoke(request.token_id(), revoked);
    if (!status.ok()) return status;
    try {
        m_db->flush();
    } catch (const Error& error) {
        log("error: " + std::string(error.what()));
    }
    log(std::string(role_name(revoked.role())) + " token " + revoked.token_id() + " revoked by " +
        caller.label());
    {
        std::lock_guard lock(m_mutex);
        close_streams_of_unusable_tokens();
    }
    *response->mutable_info() = revoked;
    return grpc::Status::OK;
}

}  // namespace fedcli::combiner
