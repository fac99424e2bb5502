// The combiner's gRPC server: services wired to CombinerCore, start and shutdown.
#include "combiner/combiner.hpp"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "combiner/internal.hpp"
#include "core/error.hpp"
#include "core/proto/rpc.hpp"

namespace fedcli::combiner {

namespace {

/// gRPC message limit both ways: data chunks are 1 MiB; room for peers that send more.
constexpr int k_max_message_bytes = 8 << 20;

class FederationService final : public v1::Federation::Service {
  public:
    explicit FederationService(CombinerCore& impl) : m_impl(impl) {}
    grpc::Status Connect(grpc::ServerContext* context, Connection::Stream* stream) override {
        Caller caller;
        grpc::Status status = m_impl.authorize(context, v1::TOKEN_ROLE_CLIENT, caller);
        if (!status.ok()) return status;
        return m_impl.connect(context, stream, caller);
    }
    grpc::Status ReportUpdate(grpc::ServerContext* context, const v1::UpdateReport* report,
                              v1::Ack* ack) override {
        Caller caller;
        grpc::Status status = m_impl.authorize(context, v1::TOKEN_ROLE_CLIENT, caller);
        if (status.ok()) {
            status = m_impl.check_acting_client(caller, report->client_id(), "ReportUpdate");
        }
        if (!status.ok()) return status;
        *ack = m_impl.report_update(*report);
        return grpc::Status::OK;
    }
    grpc::Status ReportValidation(grpc::ServerContext* context, const v1::ValidationReport* report,
                                  v1::Ack* ack) override {
        Caller caller;
        grpc::Status status = m_impl.authorize(context, v1::TOKEN_ROLE_CLIENT, caller);
        if (status.ok()) {
            status = m_impl.check_acting_client(caller, report->client_id(), "ReportValidation");
        }
        if (!status.ok()) return status;
        *ack = m_impl.report_validation(*report);
        return grpc::Status::OK;
    }

  private:
    CombinerCore& m_impl;
};

class TransferService final : public v1::Transfer::Service {
  public:
    explicit TransferService(CombinerCore& impl) : m_impl(impl) {}
    grpc::Status Upload(grpc::ServerContext* context, grpc::ServerReader<v1::UploadChunk>* reader,
                        v1::UploadResult* result) override {
        Caller caller;
        grpc::Status status = m_impl.authorize(context, v1::TOKEN_ROLE_CLIENT, caller);
        if (!status.ok()) return status;
        status = m_impl.begin_transfer(caller);
        if (!status.ok()) return status;
        status = m_impl.upload(context, reader, result, caller);
        m_impl.end_transfer(caller);
        return status;
    }
    grpc::Status Download(grpc::ServerContext* context, const v1::DownloadRequest* request,
                          grpc::ServerWriter<v1::DownloadChunk>* writer) override {
        Caller caller;
        grpc::Status status = m_impl.authorize(context, v1::TOKEN_ROLE_CLIENT, caller);
        if (!status.ok()) return status;
        status = m_impl.begin_transfer(caller);
        if (!status.ok()) return status;
        status = m_impl.download(context, *request, writer);
        m_impl.end_transfer(caller);
        return status;
    }
    grpc::Status QueryUpload(grpc::ServerContext* context, const v1::UploadQuery* query,
                             v1::UploadState* state) override {
        Caller caller;
        grpc::Status status = m_impl.authorize(context, v1::TOKEN_ROLE_CLIENT, caller);
        if (!status.ok()) return status;
        return m_impl.query_upload(*query, state);
    }

  private:
    CombinerCore& m_impl;
};

/// Runs `body(caller)` when the call carries an admin token (or the combiner is insecure).
template <class Body>
grpc::Status as_admin(CombinerCore& core, grpc::ServerContext* context, Body&& body) {
    Caller caller;
    grpc::Status status = core.authorize(context, v1::TOKEN_ROLE_ADMIN, caller);
    if (!status.ok()) return status;
    return body(caller);
}

/// Every Control call needs an admin token.
class ControlService final : public v1::Control::Service {
  public:
    explicit ControlService(CombinerCore& impl) : m_impl(impl) {}
    grpc::Status SetPackage(grpc::ServerContext* context, const v1::SetPackageRequest* request,
                            v1::Ack* ack) override {
        return as_admin(m_impl, context, [&](const Caller&) {
            *ack = m_impl.set_package(*request);
            return grpc::Status::OK;
        });
    }
    grpc::Status SetSeedModel(grpc::ServerContext* context, const v1::SetSeedModelRequest* request,
                              v1::Ack* ack) override {
        return as_admin(m_impl, context, [&](const Caller&) {
            *ack = m_impl.set_seed_model(*request);
            return grpc::Status::OK;
        });
    }
    grpc::Status StartSession(grpc::ServerContext* context, const v1::StartSessionRequest* request,
                              v1::StartSessionResponse* response) override {
        return as_admin(m_impl, context, [&](const Caller&) {
            *response = m_impl.start_session(*request);
            return grpc::Status::OK;
        });
    }
    grpc::Status StopSession(grpc::ServerContext* context, const v1::StopSessionRequest* request,
                             v1::Ack* ack) override {
        return as_admin(m_impl, context, [&](const Caller&) {
            *ack = m_impl.stop_session(*request);
            return grpc::Status::OK;
        });
    }
    grpc::Status GetStatus(grpc::ServerContext* context, const v1::GetStatusRequest*,
                           v1::StatusResponse* response) override {
        return as_admin(m_impl, context, [&](const Caller&) {
            *response = m_impl.status();
            return grpc::Status::OK;
        });
    }
    grpc::Status ListClients(grpc::ServerContext* context, const v1::ListClientsRequest*,
                             v1::ListClientsResponse* response) override {
        return as_admin(m_impl, context, [&](const Caller&) {
            *response = m_impl.list_clients();
            return grpc::Status::OK;
        });
    }
    grpc::Status ListRounds(grpc::ServerContext* context, const v1::ListRoundsRequest* request,
                            v1::ListRoundsResponse* response) override {
        return as_admin(m_impl, context,
                        [&](const Caller&) { return m_impl.list_rounds(*request, response); });
    }
    grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest*,
                            v1::ListModelsResponse* response) override {
        return as_admin(m_impl, context, [&](const Caller&) {
            *response = m_impl.list_models();
            return grpc::Status::OK;
        });
    }
    grpc::Status ResumeSession(grpc::ServerContext* context,
                               const v1::ResumeSessionRequest* request,
                               v1::StartSessionResponse* response) override {
        return as_admin(m_impl, context, [&](const Caller&) {
            *response = m_impl.resume_session(*request);
            return grpc::Status::OK;
        });
    }
    grpc::Status ListSessions(grpc::ServerContext* context, const v1::ListSessionsRequest*,
                              v1::ListSessionsResponse* response) override {
        return as_admin(m_impl, context, [&](const Caller&) {
            *response = m_impl.list_sessions();
            return grpc::Status::OK;
        });
    }
    grpc::Status GetLogs(grpc::ServerContext* context, const v1::GetLogsRequest* request,
                         grpc::ServerWriter<v1::LogBatch>* writer) override {
        return as_admin(m_impl, context,
                        [&](const Caller&) { return m_impl.get_logs(context, *request, writer); });
    }
    grpc::Status CreateToken(grpc::ServerContext* context, const v1::CreateTokenRequest* request,
                             v1::CreateTokenResponse* response) override {
        return as_admin(m_impl, context, [&](const Caller& caller) {
            grpc::Status status;
            *response = m_impl.create_token(*request, caller, status);
            return status;
        });
    }
    grpc::Status ListTokens(grpc::ServerContext* context, const v1::ListTokensRequest*,
                            v1::ListTokensResponse* response) override {
        return as_admin(m_impl, context, [&](const Caller&) {
            *response = m_impl.list_tokens();
            return grpc::Status::OK;
        });
    }
    grpc::Status RevokeToken(grpc::ServerContext* context, const v1::RevokeTokenRequest* request,
                             v1::RevokeTokenResponse* response) override {
        return as_admin(m_impl, context, [&](const Caller& caller) {
            return m_impl.revoke_token(*request, caller, response);
        });
    }

  private:
    CombinerCore& m_impl;
};

/// A PEM file's contents for the TLS options; throws fedcli::Error naming the flag.
std::string read_pem(const std::filesystem::path& file, std::string_view flag) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw Error(file.string() + ": cannot read (" + std::string(flag) + ")");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.find("-----BEGIN ") == std::string::npos) {
        throw Error(file.string() + ": not a PEM file (" + std::string(flag) + ")");
    }
    return text;
}

/// The server's credentials: TLS (with required client certificates when a client CA is
/// given) or plaintext.
std::shared_ptr<grpc::ServerCredentials> server_credentials(const Options& options) {
    const bool tls = !options.tls_cert_file.empty() || !options.tls_key_file.empty();
    if (!tls) {
        if (!options.client_ca_file.empty()) {
            throw Error("--client-ca needs TLS: give --tls-cert and --tls-key too");
        }
        return grpc::InsecureServerCredentials();
    }
    if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
        throw Error("TLS needs both --tls-cert and --tls-key");
    }
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({read_pem(options.tls_key_file, "--tls-key"),
                                      read_pem(options.tls_cert_file, "--tls-cert")});
    if (!options.client_ca_file.empty()) {
        ssl.pem_root_certs = read_pem(options.client_ca_file, "--client-ca");
        ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    return grpc::SslServerCredentials(ssl);
}

std::string listen_address(const std::string& host, int port) {
    bool ipv6 = host.find(':') != std::string::npos && host.front() != '[';
    return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

/// Why `host:port` cannot be listened on, found with a plain bind() (gRPC only says that
/// it failed): "Address already in use", "Cannot assign requested address", ...; empty
/// when a bind succeeds or the host does not resolve.
std::string bind_problem(const std::string& host, int port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo* addresses = nullptr;
    std::string bare = host.size() > 2 && host.front() == '[' && host.back() == ']'
                           ? host.substr(1, host.size() - 2)
                           : host;
    if (::getaddrinfo(bare.c_str(), std::to_string(port).c_str(), &hints, &addresses) != 0) {
        return {};
    }
    std::string problem;
    for (addrinfo* address = addresses; address && problem.empty(); address = address->ai_next) {
        int fd = ::socket(address->ai_family, address->ai_socktype, address->ai_protocol);
        if (fd < 0) continue;
        if (::bind(fd, address->ai_addr, address->ai_addrlen) != 0) problem = std::strerror(errno);
        ::close(fd);
    }
    ::freeaddrinfo(addresses);
    return problem;
}

}  // namespace

CombinerCore::CombinerCore(Options options)
    : m_options(std::move(options)),
      m_log(m_options.log),
      m_store(m_options.data_dir),
      m_tokens([this](const v1::TokenInfo& info, const std::string& hash) {
          m_db->save_token(info, hash);
      }) {
    if (m_options.heartbeat_interval <= std::chrono::milliseconds::zero()) {
        throw Error("combiner: heartbeat interval must be positive");
    }
}

CombinerCore::~CombinerCore() {
    shutdown();
}

void CombinerCore::log(const std::string& message) {
    m_log.write(message);
}

void CombinerCore::log_status(const std::string& message) {
    m_state.last_message = message;
    m_log.write(message);
}

void CombinerCore::start() {
    std::lock_guard shutdown_lock(m_shutdown_mutex);
    if (m_started) throw Error("combiner: already started");
    m_store.create();
    m_db = std::make_unique<Database>(m_options.data_dir / "state.db");
    m_db->set_error_callback([this](const std::string& message) { log("error: " + message); });
    {
        std::lock_guard lock(m_mutex);
        load_state();
    }
    const std::shared_ptr<grpc::ServerCredentials> credentials = server_credentials(m_options);
    bootstrap_admin_token();
    m_services.push_back(std::make_unique<FederationService>(*this));
    m_services.push_back(std::make_unique<TransferService>(*this));
    m_services.push_back(std::make_unique<ControlService>(*this));

    const std::string address = listen_address(m_options.host, m_options.port);
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address, credentials, &m_port);
    builder.SetMaxReceiveMessageSize(k_max_message_bytes);
    builder.SetMaxSendMessageSize(k_max_message_bytes);
    // Clients ping to notice dead connections; allow it (also while no call is active)
    // instead of answering with GOAWAY "too many pings".
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
    // gRPC listens with SO_REUSEPORT by default: a second combiner on a busy port would then
    // share it silently and receive half of the connections.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    proto::apply_transport_settings(
        [&](const char* name, int value) { builder.AddChannelArgument(name, value); });
    for (auto& service : m_services) builder.RegisterService(service.get());
    m_server = builder.BuildAndStart();
    if (!m_server || m_port == 0) {
        m_server.reset();
        std::string problem = bind_problem(m_options.host, m_options.port);
        if (problem.empty()) problem = "not an address of this machine?";
        throw Error("cannot listen on " + address + ": " + problem +
                    " (another combiner running? pick another --port, or 0 for any free one)");
    }
    m_started = true;
    m_watchdog = std::thread([this] { watchdog_loop(); });
    const bool tls = !m_options.tls_cert_file.empty();
    log("combiner " + std::string(FEDCLI_VERSION) + " listening on " +
        listen_address(m_options.host, m_port) + ", data in " + m_options.data_dir.string() +
        (tls ? (m_options.client_ca_file.empty() ? ", TLS" : ", TLS with client certificates")
             : ", plaintext") +
        (m_options.insecure ? ", NO AUTHENTICATION" : ", tokens required"));
    if (m_options.insecure) {
        log("WARNING: running without authentication (--insecure): anyone who can reach " +
            listen_address(m_options.host, m_port) +
            " can act as operator or client, push packages that clients run, and read models");
    }
    if (!tls && !m_options.insecure && !proto::is_loopback_host(m_options.host)) {
        log("warning: no TLS: access tokens and models cross the network in clear text; "
            "use --tls-cert and --tls-key off a trusted network");
    }
}

void CombinerCore::wait() {
    std::unique_lock lock(m_mutex);
    m_shut_down_changed.wait(lock, [&] { return m_shut_down || !m_started; });
}

void CombinerCore::shutdown() {
    std::lock_guard shutdown_lock(m_shutdown_mutex);
    {
        std::lock_guard lock(m_mutex);
        if (!m_started || m_shut_down) return;
        m_stopping = true;
        if (m_active) m_active->stop_requested = true;
    }
    m_changed.notify_all();
    m_stop_changed.notify_all();
    m_logs_changed.notify_all();
    m_store.wake_transfers();

    // The runner cancels its open tasks on the still open streams, then ends the session.
    if (m_active && m_active->thread.joinable()) m_active->thread.join();
    if (m_watchdog.joinable()) m_watchdog.join();
    std::vector<std::shared_ptr<Connection>> connections;
    {
        std::lock_guard lock(m_mutex);
        for (auto& [id, client] : m_state.clients) {
            if (client.connection) connections.push_back(client.connection);
        }
    }
    // Queued CancelTask messages reach the clients before their streams are cancelled.
    const auto deadline = Clock::now() + std::chrono::seconds(1);
    for (const auto& connection : connections) connection->drain_then_cancel(deadline);
    // Streams were cancelled above; anything else in flight gets a moment to finish.
    m_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    m_server->Wait();
    {
        std::lock_guard lock(m_mutex);
        for (auto& [id, client] : m_state.clients) {
            if (!client.info.online()) continue;
            client.info.set_online(false);
            persist_client(client);
        }
    }
    try {
        m_db->flush();
    } catch (const Error& error) {
        log("error: " + std::string(error.what()));
    }
    log("combiner stopped");
    {
        std::lock_guard lock(m_mutex);
        m_shut_down = true;
    }
    m_shut_down_changed.notify_all();
}

class Combiner::Impl : public CombinerCore {
  public:
    using CombinerCore::CombinerCore;
};

Combiner::Combiner(Options options) : m_impl(std::make_unique<Impl>(std::move(options))) {}
Combiner::~Combiner() = default;
void Combiner::start() {
    m_impl->start();
}
int Combiner::port() const {
    return m_impl->port();
}
void Combiner::wait() {
    m_impl->wait();
}
void Combiner::shutdown() {
    m_impl->shutdown();
}

}  // namespace fedcli::combiner
