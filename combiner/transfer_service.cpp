// Transfer: chunked, sha256-checked, resumable uploads and downloads (docs/protocol.md).
#include <system_error>

#include "combiner/internal.hpp"
#include "core/error.hpp"
#include "core/proto/rpc.hpp"
#include "core/proto/transfer.hpp"
#include "core/util/limits.hpp"

namespace fedcli::combiner {

namespace fs = std::filesystem;

namespace {

std::string kind_name(v1::TransferKind kind) {
    return kind == v1::TRANSFER_KIND_PACKAGE ? "package" : "model";
}

bool valid_kind(v1::TransferKind kind) {
    return kind == v1::TRANSFER_KIND_MODEL || kind == v1::TRANSFER_KIND_PACKAGE;
}

/// Holds a Store transfer lock for its lifetime.
class TransferGuard {
  public:
    TransferGuard(Store& store, std::string key) : m_store(store), m_key(std::move(key)) {}
    ~TransferGuard() { m_store.unlock_transfer(m_key); }
    TransferGuard(const TransferGuard&) = delete;
    TransferGuard& operator=(const TransferGuard&) = delete;

  private:
    Store& m_store;
    std::string m_key;
};

}  // namespace

grpc::Status CombinerCore::upload(grpc::ServerContext* context,
                                  grpc::ServerReader<v1::UploadChunk>* reader,
                                  v1::UploadResult* result, const Caller& caller) {
    v1::UploadChunk chunk;
    if (!reader->Read(&chunk)) {
        return {grpc::StatusCode::CANCELLED, "upload: the stream ended before the header"};
    }
    if (!chunk.has_header()) {
        return {grpc::StatusCode::INVALID_ARGUMENT,
                "upload: the first message must be a header, got a data chunk"};
    }
    const v1::UploadHeader header = chunk.header();
    if (!valid_kind(header.kind())) {
        return {grpc::StatusCode::INVALID_ARGUMENT,
                "upload: header.kind must be TRANSFER_KIND_MODEL or TRANSFER_KIND_PACKAGE"};
    }
    if (!is_sha256(header.sha256())) {
        return {grpc::StatusCode::INVALID_ARGUMENT,
                "upload: header.sha256 must be 64 hex digits, got '" + header.sha256() + "'"};
    }
    {
        const bool package = header.kind() == v1::TRANSFER_KIND_PACKAGE;
        const std::uint64_t limit =
            package ? m_options.max_package_bytes : m_options.max_model_bytes;
        if (header.size() > limit) {
            // Refused before a byte is stored; final, not worth a retry.
            const std::string message =
                "upload of " + kind_name(header.kind()) + " " + short_id(header.sha256()) + ": " +
                util::format_byte_size(header.size()) + " is above the combiner's limit of " +
                util::format_byte_size(limit) + " for a " + kind_name(header.kind()) +
                (package ? " (--max-package-size)" : " (--max-model-size)");
            log(message + "; refused (" + caller.label() + ")");
            return {grpc::StatusCode::INVALID_ARGUMENT, message};
        }
    }
    if (caller.is_client() && !caller.token_id.empty()) {
        // A client uploads the updates of its own tasks, nothing else.
        if (header.kind() != v1::TRANSFER_KIND_MODEL || header.task_id().empty()) {
            return {grpc::StatusCode::PERMISSION_DENIED,
                    "upload: a client token may upload only the update of one of its own "
                    "tasks (packages and seed models need an admin token)"};
        }
        std::string owner;
        {
            std::lock_guard lock(m_mutex);
            auto task = m_state.tasks.find(header.task_id());
            if (task != m_state.tasks.end()) owner = task->second.client_id;
        }
        if (owner.empty() || owner != caller.client_id) {
            return {grpc::StatusCode::PERMISSION_DENIED,
                    "upload: task " + header.task_id() + " is not a task of client id " +
                        (caller.client_id.empty() ? std::string("(not connected yet)")
                                                  : caller.client_id) +
                        ", the client this token belongs to"};
        }
    }
    const std::string sha256 = lowercase(header.sha256());
    std::string description = "upload of " + kind_name(header.kind()) + " " + short_id(sha256);
    if (!header.task_id().empty()) description += " (task " + header.task_id() + ")";

    const std::string key = kind_name(header.kind()) + "/" + sha256;
    auto give_up = [&] {
        std::lock_guard lock(m_mutex);
        return m_stopping || context->IsCancelled();
    };
    if (!m_store.lock_transfer(key, give_up)) {
        return {grpc::StatusCode::CANCELLED, description +
                                                 ": cancelled while waiting for "
                                                 "another upload of the same file"};
    }
    TransferGuard guard(m_store, key);

    const fs::path destination = m_store.path(header.kind(), sha256);
    auto fill_result = [&](std::uint64_t size) {
        result->set_id(sha256);
        result->set_sha256(sha256);
        result->set_size(size);
    };
    std::error_code error;
    if (fs::is_regular_file(destination, error)) {
        // Content-addressed: the same bytes are already stored (often a concurrent upload
        // of the same file that finished first). Nothing needs to be read.
        fill_result(fs::file_size(destination, error));
        return grpc::Status::OK;
    }
    try {
        // resume_offset 0 is a fresh upload: whatever an earlier attempt left is discarded.
        proto::ChunkReceiver receiver(
            destination, header.size(), sha256, description,
            header.resume_offset() == 0 ? proto::Resume::no : proto::Resume::yes);
        if (receiver.bytes_received() != header.resume_offset()) {
            return {grpc::StatusCode::FAILED_PRECONDITION,
                    description + ": resume offset " + std::to_string(header.resume_offset()) +
                        " but the combiner holds " + std::to_string(receiver.bytes_received()) +
                        " bytes (ask QueryUpload again or restart from 0)"};
        }
        while (reader->Read(&chunk)) {
            if (!chunk.has_data()) {
                return {grpc::StatusCode::INVALID_ARGUMENT,
                        description + ": a second header arrived after " +
                            std::to_string(receiver.bytes_received()) + " bytes"};
            }
            receiver.write(chunk.data().offset(), chunk.data().data());
        }
        if (context->IsCancelled()) {
            return {grpc::StatusCode::CANCELLED, description + ": the client went away after " +
                                                     std::to_string(receiver.bytes_received()) +
                                                     " bytes (kept for a resume)"};
        }
        fill_result(header.size());
        receiver.finish();
    } catch (const Error& failure) {
        return {grpc::StatusCode::INVALID_ARGUMENT, failure.what()};
    }
    return grpc::Status::OK;
}

grpc::Status CombinerCore::begin_transfer(const Caller& caller) {
    if (!caller.is_client() || caller.token_id.empty()) return grpc::Status::OK;
    std::lock_guard lock(m_mutex);
    std::size_t& open = m_open_transfers[caller.token_id];
    if (open >= m_options.max_transfers_per_client) {
        return {grpc::StatusCode::RESOURCE_EXHAUSTED,
                caller.label() + " already has " + std::to_string(open) +
                    " transfers open, the combiner's limit per client (--max-transfers-per-client)"
                    "; try again when one has finished"};
    }
    ++open;
    return grpc::Status::OK;
}

void CombinerCore::end_transfer(const Caller& caller) {
    if (!caller.is_client() || caller.token_id.empty()) return;
    std::lock_guard lock(m_mutex);
    auto found = m_open_transfers.find(caller.token_id);
    if (found != m_open_transfers.end() && --found->second == 0) m_open_transfers.erase(found);
}

grpc::Status CombinerCore::download(grpc::ServerContext* context,
                                    const v1::DownloadRequest& request,
                                    grpc::ServerWriter<v1::DownloadChunk>* writer) {
    v1::TransferKind kind = request.kind();
    if (kind == v1::TRANSFER_KIND_UNSPECIFIED) kind = v1::TRANSFER_KIND_MODEL;
    if (!valid_kind(kind)) {
        return {grpc::StatusCode::INVALID_ARGUMENT,
                "download: kind must be TRANSFER_KIND_MODEL or TRANSFER_KIND_PACKAGE"};
    }
    std::string id = request.id().empty() ? request.sha256() : request.id();
    if (kind == v1::TRANSFER_KIND_MODEL && id == "latest") {
        std::lock_guard lock(m_mutex);
        id = m_state.latest_model_id();
        if (id.empty()) {
            return {grpc::StatusCode::NOT_FOUND,
                    "download of the latest model: there is no model yet (no seed, no round "
                    "committed)"};
        }
    }
    if (!is_sha256(id)) {
        return {grpc::StatusCode::INVALID_ARGUMENT,
                "download: " + kind_name(kind) + " id must be 64 hex digits" +
                    (kind == v1::TRANSFER_KIND_MODEL ? " or 'latest'" : "") + ", got '" + id + "'"};
    }
    id = lowercase(id);
    const std::string description = "download of " + kind_name(kind) + " " + short_id(id);
    if (!m_store.has(kind, id)) {
        return {grpc::StatusCode::NOT_FOUND,
                description + ": the combiner has no " + kind_name(kind) + " with this id"};
    }
    // The store is content-addressed: the id is the digest.
    return proto::serve_download(context, *writer, m_store.path(kind, id), id, request.offset(),
                                 description);
}

grpc::Status CombinerCore::query_upload(const v1::UploadQuery& query, v1::UploadState* state) {
    v1::TransferKind kind = query.kind();
    if (kind == v1::TRANSFER_KIND_UNSPECIFIED) kind = v1::TRANSFER_KIND_MODEL;
    if (!valid_kind(kind) || !is_sha256(query.sha256())) {
        return {grpc::StatusCode::INVALID_ARGUMENT,
                "query upload: a kind (model or package) and a sha256 of 64 hex digits are "
                "needed, got '" +
                    query.sha256() + "'"};
    }
    const std::string sha256 = lowercase(query.sha256());
    bool complete = m_store.has(kind, sha256);
    state->set_complete(complete);
    state->set_bytes_received(
        complete ? 0 : proto::ChunkReceiver::partial_size(m_store.path(kind, sha256)));
    return grpc::Status::OK;
}

}  // namespace fedcli::combiner
