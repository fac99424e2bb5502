// Client-side helpers for the fedcli.v1 Transfer service and channels, shared by the
// client daemon and the operator commands (package push, model push/pull).
//
// upload_file() streams a local file to Transfer.Upload in 1 MiB chunks (FileChunker),
// first asking QueryUpload whether the combiner already holds it (complete: nothing is
// sent) or kept part of an interrupted upload (resumes from there). download_file() streams
// Transfer.Download into ChunkReceiver (<dest>.part, written and sha256-hashed on a thread
// of its own while the next chunk arrives, checked, renamed into place), resuming from an
// existing .part file. Both retry a broken stream a few times, each time
// from where the other side stands, before giving up with fedcli::Error naming the file
// and the gRPC status. Neither ever holds a whole file in memory.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>

#include "core/proto/fedcli.grpc.pb.h"

namespace fedcli::proto {

/// Initial HTTP/2 stream window of fedcli's channels and server (4 MiB: four chunks in
/// flight per transfer; memory per open transfer stays bounded by it).
inline constexpr int k_stream_window_bytes = 4 << 20;

/// Sets the channel arguments fedcli's channels and its server share (flow-control window,
/// TCP read sizes). `set(name, value)` is ChannelArguments::SetInt or
/// ServerBuilder::AddChannelArgument.
template <class SetInt>
void apply_transport_settings(SetInt&& set) {
    set(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, k_stream_window_bytes);
    // BDP probing grows the window without bound while the reader is slower than the
    // loopback (it hashes and writes): a client pulling 400 MB peaked at 100 MB of RSS
    // with it, 27 MB without. The fixed window above is enough for full speed.
    set(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    // gRPC reads 8 KiB per recvmsg by default and grows slowly; 1 MiB chunks want more.
    set(GRPC_ARG_TCP_READ_CHUNK_SIZE, 512 << 10);
    set(GRPC_ARG_TCP_MIN_READ_CHUNK_SIZE, 256 << 10);
    set(GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE, 4 << 20);
}

/// How a channel authenticates itself and the combiner (docs/security.md).
struct ChannelOptions {
    /// Access token, sent as `authorization: Bearer <token>` metadata on every call; empty:
    /// none (a combiner started with --insecure).
    std::string token;
    /// TLS: the CA certificate(s), PEM, that the combiner's certificate must chain to.
    /// Empty: plaintext.
    std::filesystem::path ca_file;
    /// Mutual TLS: this side's certificate and private key, PEM (both or neither; needs
    /// ca_file).
    std::filesystem::path cert_file;
    std::filesystem::path key_file;
    /// Allows sending a token in clear text to an address that is not loopback.
    bool insecure = false;
};

/// A channel to "host:port" with fedcli's settings: 8 MiB message limit, keepalive pings,
/// reconnect backoff capped at a few seconds; TLS and the token per `options`. Throws
/// fedcli::Error when a PEM file cannot be read, or when a token would travel in clear text
/// to a host that is not loopback without `options.insecure` (before connecting).
std::shared_ptr<grpc::Channel> make_channel(const std::string& target,
                                            const ChannelOptions& options = {});

/// The host of "host:port" ("[::1]" keeps its brackets).
std::string target_host(const std::string& target);
/// Whether `host` is this machine's loopback: localhost, 127.0.0.0/8, ::1.
bool is_loopback_host(std::string_view host);

/// Whether the server at "host:port" answers a TLS handshake (certificate not checked), to
/// tell a user who dials a TLS combiner in plaintext what is wrong. False when nothing
/// answers within `timeout`.
bool speaks_tls(const std::string& target,
                std::chrono::milliseconds timeout = std::chrono::milliseconds(2000));

/// A hint for a call to `target` that failed with `status` when the cause may be TLS: the
/// combiner speaks TLS but the channel does not (" (the combiner at X speaks TLS; pass --ca
/// FILE ...)"), or a TLS handshake failed. Empty otherwise. May probe the server
/// (speaks_tls), so only call it after a failure.
std::string transport_hint(const std::string& target, const ChannelOptions& options,
                           const grpc::Status& status);

/// Parses "host:port" (port 1-65535; host may be a name, IPv4, or [IPv6]). Throws
/// fedcli::Error naming `what` (e.g. "--combiner") when malformed.
void check_target(const std::string& target, const std::string& what);

/// "UNAVAILABLE: failed to connect to all addresses": the status code's name and message,
/// for error and log lines.
std::string status_text(const grpc::Status& status);

/// "train", "validate", "predict" (the entry point a task runs), else "unknown".
std::string_view task_kind_name(fedcli::v1::TaskKind kind);

struct TransferOptions {
    /// Attempts in all (a broken stream is resumed from the other side's offset).
    int attempts = 3;
    /// Deadline per attempt; zero: none.
    std::chrono::milliseconds attempt_timeout{0};
    /// Called after each chunk with (bytes done, total); may be empty.
    std::function<void(std::uint64_t, std::uint64_t)> progress;
    /// When stop is requested the running attempt is cancelled and the call throws
    /// fedcli::Error ("...: cancelled"); partial files stay for a later resume.
    std::stop_token stop;
    /// upload_file only: the file's sha256 (hex) when the caller has computed it already, so
    /// that the file is not read one extra time. The combiner checks it against the bytes it
    /// receives: a file that changed since fails the upload.
    std::string sha256;
};

struct UploadOutcome {
    std::string id;  ///< the stored file's id (its sha256)
    std::uint64_t size = 0;
    bool skipped = false;  ///< the combiner already held it; nothing was sent
};

/// Uploads `file` as `kind` (for a client update, `task_id` names the task). Computes the
/// file's sha256 first (one read) unless `options.sha256` gives it.
UploadOutcome upload_file(fedcli::v1::Transfer::Stub& stub, fedcli::v1::TransferKind kind,
                          const std::filesystem::path& file, const std::string& task_id = {},
                          const TransferOptions& options = {});

struct DownloadOutcome {
    std::string id;  ///< resolved id ("latest" becomes the model's sha256)
    std::uint64_t size = 0;
};

/// Downloads model `id` ("latest" allowed) or package `sha256` (kind PACKAGE: `id` is the
/// sha256) to `destination` (its folder must exist).
DownloadOutcome download_file(fedcli::v1::Transfer::Stub& stub, fedcli::v1::TransferKind kind,
                              const std::string& id, const std::filesystem::path& destination,
                              const TransferOptions& options = {});

/// The server side of Transfer.Download for a file whose id is its sha256: sends the
/// header {id, size, sha256 = id, offset}, then the file from `offset` in 1 MiB chunks (not
/// hashed again: the id is the digest). Returns CANCELLED when the client went away or
/// `context` was cancelled, INVALID_ARGUMENT when the file cannot be read or the offset is
/// past its end; messages start with `description`.
grpc::Status serve_download(grpc::ServerContext* context,
                            grpc::ServerWriter<fedcli::v1::DownloadChunk>& writer,
                            const std::filesystem::path& file, const std::string& id,
                            std::uint64_t offset, const std::string& description);

}  // namespace fedcli::proto
