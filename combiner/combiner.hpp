// The combiner: fedcli's aggregation server (docs/protocol.md, docs/federation.md).
//
// A Combiner serves the fedcli.v1 services Federation (clients' long-lived streams and
// reports), Transfer (chunked, sha256-checked model and package files) and Control
// (operators) on one gRPC port. It keeps a registry of clients (online/offline from
// heartbeats), the current compute package and a content-addressed model store in
// `data_dir`, and runs sessions of rounds: select clients, send train tasks, fold updates
// into an aggregator (core/aggregate) as they arrive, close the round when every selected
// client answered or the round timeout passed, commit the new global model (with its
// parent and round) and optionally collect validations.
//
// Access: every call needs an access token (`authorization: Bearer ...` metadata) unless
// Options::insecure; Control needs an admin token; a client token acts as one client id
// (combiner/auth.hpp). TLS and mutual TLS are optional (Options::tls_*).
//
// Logging: one line per event that matters goes to `Options::log` (client joined/left,
// round started/closed with counts and time, update rejected and why, ...).
//
// Thread-safety: start(), port(), wait() and shutdown() may be called from any thread;
// shutdown() may be called more than once.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <ostream>
#include <string>

namespace fedcli::combiner {

struct Options {
    std::string host = "127.0.0.1";
    /// 0 = any free port (read it back with Combiner::port()).
    int port = 12080;
    /// Models, packages, uploads in progress. Created if missing.
    std::filesystem::path data_dir = ".fedcli/combiner";
    /// Announced to clients in Welcome; a client is offline after `missed_heartbeats`
    /// intervals without a message, or at once when its stream ends.
    std::chrono::milliseconds heartbeat_interval{2000};
    int missed_heartbeats = 3;
    /// Event lines (one per line, flushed). Null: no log.
    std::ostream* log = nullptr;
    /// Unauthenticated mode: every caller may do everything (a warning is logged and shown
    /// by GetStatus). By default every call needs an access token (docs/security.md); on
    /// the first start without a usable admin token one is made and written to
    /// `data_dir/admin.token` (mode 0600).
    bool insecure = false;
    /// TLS: the server's certificate (chain) and private key, PEM files. Both or neither;
    /// neither: plaintext.
    std::filesystem::path tls_cert_file;
    std::filesystem::path tls_key_file;
    /// Mutual TLS: require client certificates signed by this CA (PEM). Needs TLS.
    std::filesystem::path client_ca_file;

    // Limits (docs/hardening.md). A peer that exceeds one gets RESOURCE_EXHAUSTED or
    // INVALID_ARGUMENT naming the limit, and the combiner logs a line; nothing grows
    // without bound.
    /// Largest model (seed or client update) an upload may declare.
    std::uint64_t max_model_bytes = std::uint64_t{4} << 30;
    /// Largest compute package an upload may declare.
    std::uint64_t max_package_bytes = std::uint64_t{512} << 20;
    /// Clients registered at once; a new client id beyond it is refused (known ids may
    /// always reconnect).
    std::size_t max_clients = 1000;
    /// Uploads and downloads one client token may have open at once.
    std::size_t max_transfers_per_client = 4;
    /// Connect attempts per second from one network address (a burst of twice as many is
    /// allowed); 0: unlimited.
    double max_connects_per_second = 20;
};

/// The file a combiner writes its bootstrap admin token to: data_dir/admin.token.
std::filesystem::path admin_token_file(const std::filesystem::path& data_dir);

class Combiner {
  public:
    explicit Combiner(Options options);
    ~Combiner();  ///< shuts down if still running
    Combiner(const Combiner&) = delete;
    Combiner& operator=(const Combiner&) = delete;

    /// Creates the data folder and starts serving. Throws fedcli::Error when the address
    /// cannot be bound (naming host:port) or the data folder cannot be created.
    void start();
    /// The port actually bound (after start()).
    int port() const;
    /// Blocks until shutdown() has completed.
    void wait();
    /// Stops the running session (if any), closes client streams and stops serving.
    void shutdown();

  private:
    class Impl;
    std::unique_ptr<Impl> m_impl;
};

}  // namespace fedcli::combiner
