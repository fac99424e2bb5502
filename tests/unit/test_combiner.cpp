// combiner: the daemon in-process on 127.0.0.1 port 0, driven over a real gRPC channel by
// operator calls and by fake clients written here (a Connect stream sending Hello and
// heartbeats, answering tasks by uploading an .npz and reporting it). Harness::restart()
// replaces the combiner by a new one on the same data folder, which restores its state.
#include "combiner/combiner.hpp"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "combiner/db.hpp"
#include "core/npz/npz.hpp"
#include "core/proto/fedcli.grpc.pb.h"
#include "core/proto/rpc.hpp"
#include "core/proto/transfer.hpp"
#include "core/util/sha256.hpp"
#include "tests/unit/support.hpp"

namespace fs = std::filesystem;
namespace v1 = fedcli::v1;
namespace npz = fedcli::npz;
using namespace std::chrono_literals;
using fedcli::test::describe;
using Clock = std::chrono::steady_clock;

namespace {

/// Polls `condition` until it holds or `limit` passed; true when it held. For state that
/// only the combiner knows (asked through Control calls), polling is the only way to wait.
bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds limit = 10s) {
    const auto deadline = Clock::now() + limit;
    for (;;) {
        if (condition()) return true;
        if (Clock::now() >= deadline) return false;
        std::this_thread::sleep_for(5ms);
    }
}

constexpr std::uint64_t k_mib = 1 << 20;

void write_random_file(const fs::path& path, std::uint64_t size, unsigned seed) {
    std::mt19937_64 generator(seed);
    std::string data(size, '\0');
    for (auto& c : data) c = static_cast<char>(generator() & 0xff);
    fedcli::test::write_file(path, data);
}

/// A small model: "w" float32 [2, 3] and "b" float32 [3] (shape of "b" configurable).
npz::ParameterSet make_model(float base, std::uint64_t b_size = 3) {
    npz::ParameterSet model;
    npz::Array w(npz::DType::float32, {2, 3});
    auto wv = w.values<float>();
    for (std::size_t i = 0; i < wv.size(); ++i) wv[i] = base + 0.25f * static_cast<float>(i);
    npz::Array b(npz::DType::float32, {b_size});
    auto bv = b.values<float>();
    for (std::size_t i = 0; i < bv.size(); ++i) bv[i] = -base + static_cast<float>(i);
    model.add("w", std::move(w));
    model.add("b", std::move(b));
    return model;
}

std::vector<float> flatten(const npz::ParameterSet& model) {
    std::vector<float> values;
    for (const auto& entry : model) {
        for (float v : entry.array.values<float>()) values.push_back(v);
    }
    return values;
}

struct UploadCall {
    grpc::Status status;
    v1::UploadResult result;
};

/// Uploads `file` (header, then 1 MiB chunks from `resume_offset`); with `max_chunks`, the
/// stream ends after that many chunks (an interrupted upload).
UploadCall upload(v1::Transfer::Stub& stub, v1::TransferKind kind, const fs::path& file,
                  std::uint64_t resume_offset = 0, int max_chunks = -1,
                  const std::string& sha_override = {}) {
    UploadCall call;
    grpc::ClientContext context;
    auto writer = stub.Upload(&context, &call.result);
    v1::UploadChunk chunk;
    auto* header = chunk.mutable_header();
    header->set_kind(kind);
    header->set_size(fs::file_size(file));
    header->set_sha256(sha_override.empty() ? fedcli::util::sha256_file(file) : sha_override);
    header->set_resume_offset(resume_offset);
    writer->Write(chunk);
    fedcli::proto::FileChunker chunker(file, resume_offset);
    int sent = 0;
    while (!chunker.done()) {
        if (max_chunks >= 0 && sent == max_chunks) break;  // the sender gives up early
        auto* data = chunk.mutable_data();
        data->set_offset(chunker.offset());
        auto view = chunker.next_view();
        data->set_data(view.data(), view.size());
        if (!writer->Write(chunk)) break;
        ++sent;
    }
    writer->WritesDone();
    call.status = writer->Finish();
    return call;
}

struct DownloadCall {
    grpc::Status status;
    v1::DownloadHeader header;
    std::string data;
};

DownloadCall download(v1::Transfer::Stub& stub, v1::TransferKind kind, const std::string& id,
                      std::uint64_t offset = 0) {
    DownloadCall call;
    grpc::ClientContext context;
    v1::DownloadRequest request;
    request.set_kind(kind);
    request.set_id(id);
    request.set_offset(offset);
    auto reader = stub.Download(&context, request);
    v1::DownloadChunk chunk;
    std::uint64_t expected = offset;
    while (reader->Read(&chunk)) {
        if (chunk.has_header()) {
            call.header = chunk.header();
        } else if (chunk.data().offset() == expected) {
            call.data += chunk.data().data();
            expected += chunk.data().data().size();
        } else {
            call.data += "<out of order>";
        }
    }
    call.status = reader->Finish();
    return call;
}

/// A combiner on port 0 with its own data folder, and stubs for its three services.
class Harness {
  public:
    explicit Harness(std::chrono::milliseconds heartbeat = 10s) {
        m_options.port = 0;
        m_options.data_dir = m_dir / "data";
        m_options.heartbeat_interval = heartbeat;
        m_options.log = &m_log;
        // Authentication is tested on its own below ("access tokens ..."); these tests
        // exercise everything else.
        m_options.insecure = true;
        launch();
    }
    ~Harness() {
        if (combiner) combiner->shutdown();
    }

    /// Shuts the combiner down and starts a new one on the same data folder (a new port,
    /// so new stubs). FakeClients reconnect with connect(their id) afterwards.
    void restart() {
        combiner->shutdown();
        combiner.reset();
        launch();
    }

    const fs::path& dir() const { return m_dir.path(); }
    fs::path data_dir() const { return m_dir / "data"; }

    /// Shuts the combiner down and returns its event log (safe to read only then).
    std::string stop() {
        combiner->shutdown();
        return m_log.str();
    }

    /// Writes `model` to a file, uploads it and makes it the seed; returns its id.
    std::string seed(const npz::ParameterSet& model) {
        fs::path file = m_dir / ("seed-" + std::to_string(m_files++) + ".npz");
        npz::write_npz(file, model);
        UploadCall call = upload(*transfer, v1::TRANSFER_KIND_MODEL, file);
        REQUIRE(call.status.ok());
        v1::Ack ack = set_seed(call.result.id());
        INFO(ack.reason());
        REQUIRE(ack.accepted());
        return call.result.id();
    }

    v1::Ack set_seed(const std::string& id) {
        grpc::ClientContext context;
        v1::SetSeedModelRequest request;
        request.set_model_id(id);
        v1::Ack ack;
        REQUIRE(control->SetSeedModel(&context, request, &ack).ok());
        return ack;
    }

    v1::StartSessionResponse start(const v1::SessionConfig& config) {
        grpc::ClientContext context;
        v1::StartSessionRequest request;
        *request.mutable_config() = config;
        v1::StartSessionResponse response;
        REQUIRE(control->StartSession(&context, request, &response).ok());
        return response;
    }

    /// StopSession; `now`: end at once (the open round fails), else after the round.
    v1::Ack stop_session(bool now) {
        grpc::ClientContext context;
        v1::StopSessionRequest request;
        request.set_now(now);
        v1::Ack ack;
        REQUIRE(control->StopSession(&context, request, &ack).ok());
        return ack;
    }

    v1::StatusResponse status() {
        grpc::ClientContext context;
        v1::StatusResponse response;
        REQUIRE(control->GetStatus(&context, v1::GetStatusRequest(), &response).ok());
        return response;
    }

    /// Waits until the session is no longer RUNNING; returns its final status.
    v1::StatusResponse wait_session_end(std::chrono::milliseconds limit = 20s) {
        v1::StatusResponse last;
        bool ended = eventually(
            [&] {
                last = status();
                return last.session_state() != v1::SESSION_STATE_RUNNING;
            },
            limit);
        INFO(describe(last));
        REQUIRE(ended);
        return last;
    }

    std::vector<v1::RoundInfo> rounds(const std::string& session_id = {}) {
        grpc::ClientContext context;
        v1::ListRoundsRequest request;
        request.set_session_id(session_id);
        v1::ListRoundsResponse response;
        REQUIRE(control->ListRounds(&context, request, &response).ok());
        return {response.rounds().begin(), response.rounds().end()};
    }

    /// Every round of every session, oldest first.
    std::vector<v1::RoundInfo> all_rounds() {
        grpc::ClientContext context;
        v1::ListRoundsRequest request;
        request.set_all_sessions(true);
        v1::ListRoundsResponse response;
        REQUIRE(control->ListRounds(&context, request, &response).ok());
        return {response.rounds().begin(), response.rounds().end()};
    }

    std::vector<v1::SessionInfo> sessions() {
        grpc::ClientContext context;
        v1::ListSessionsResponse response;
        REQUIRE(control->ListSessions(&context, v1::ListSessionsRequest(), &response).ok());
        return {response.sessions().begin(), response.sessions().end()};
    }

    v1::StartSessionResponse resume(const std::string& session_id = {}, std::uint32_t rounds = 0) {
        grpc::ClientContext context;
        v1::ResumeSessionRequest request;
        request.set_session_id(session_id);
        request.set_rounds(rounds);
        v1::StartSessionResponse response;
        REQUIRE(control->ResumeSession(&context, request, &response).ok());
        return response;
    }

    struct LogsCall {
        grpc::Status status;
        std::vector<v1::LogEntry> entries;
    };
    /// GetLogs without follow: every batch until the stream ends.
    LogsCall logs(const v1::GetLogsRequest& request) {
        LogsCall call;
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + 10s);
        auto reader = control->GetLogs(&context, request);
        v1::LogBatch batch;
        while (reader->Read(&batch)) {
            for (const auto& entry : batch.entries()) call.entries.push_back(entry);
        }
        call.status = reader->Finish();
        return call;
    }
    LogsCall logs(const std::string& client) {
        v1::GetLogsRequest request;
        request.set_client(client);
        return logs(request);
    }

    /// Waits until `count` clients are online and idle (their first heartbeat arrived), so
    /// that a session started next selects all of them.
    void wait_idle(std::size_t count) {
        REQUIRE(eventually([&] {
            std::size_t idle = 0;
            for (const auto& client : clients()) {
                idle += client.online() && client.status() == v1::CLIENT_STATUS_IDLE ? 1 : 0;
            }
            return idle == count;
        }));
    }

    std::vector<v1::ClientInfo> clients() {
        grpc::ClientContext context;
        v1::ListClientsResponse response;
        REQUIRE(control->ListClients(&context, v1::ListClientsRequest(), &response).ok());
        return {response.clients().begin(), response.clients().end()};
    }

    std::vector<v1::ModelInfo> models() {
        grpc::ClientContext context;
        v1::ListModelsResponse response;
        REQUIRE(control->ListModels(&context, v1::ListModelsRequest(), &response).ok());
        return {response.models().begin(), response.models().end()};
    }

    /// The model `id` ("latest" allowed) as parameters.
    npz::ParameterSet fetch_model(const std::string& id) {
        DownloadCall call = download(*transfer, v1::TRANSFER_KIND_MODEL, id);
        INFO(call.status.error_message());
        REQUIRE(call.status.ok());
        fs::path file = m_dir / ("fetched-" + std::to_string(m_files++) + ".npz");
        fedcli::test::write_file(file, call.data);
        return npz::read_npz(file);
    }

    std::unique_ptr<fedcli::combiner::Combiner> combiner;
    std::unique_ptr<v1::Control::Stub> control;
    std::unique_ptr<v1::Transfer::Stub> transfer;
    std::unique_ptr<v1::Federation::Stub> federation;

  private:
    void launch() {
        combiner = std::make_unique<fedcli::combiner::Combiner>(m_options);
        combiner->start();
        REQUIRE(combiner->port() > 0);
        // Streams of FakeClients opened on an earlier channel may outlive its stubs.
        if (m_channel) m_old_channels.push_back(m_channel);
        m_channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(combiner->port()),
                                        grpc::InsecureChannelCredentials());
        control = v1::Control::NewStub(m_channel);
        transfer = v1::Transfer::NewStub(m_channel);
        federation = v1::Federation::NewStub(m_channel);
    }

    fedcli::test::TempDir m_dir;
    std::ostringstream m_log;
    fedcli::combiner::Options m_options;
    std::shared_ptr<grpc::Channel> m_channel;
    std::vector<std::shared_ptr<grpc::Channel>> m_old_channels;
    int m_files = 0;
};

/// A client written against the protocol: one Connect stream, tasks answered by a handler
/// that runs on the stream's reader thread. Catch2 assertions are not thread-safe, so the
/// handler records problems in errors() for the test thread to check.
class FakeClient {
  public:
    using Handler = std::function<void(FakeClient&, const v1::Task&)>;

    FakeClient(Harness& harness, std::string name, Handler handler = {},
               std::vector<std::string> capabilities = {"train", "validate", "local-package"})
        : m_harness(harness),
          m_name(std::move(name)),
          m_handler(std::move(handler)),
          m_capabilities(std::move(capabilities)),
          m_work(harness.dir() / ("client-" + m_name)) {
        fs::create_directories(m_work);
    }
    ~FakeClient() { disconnect(); }

    /// Connects (Hello -> Welcome) with `id` (empty: ask for one) and sends an IDLE
    /// heartbeat unless told not to.
    void connect(const std::string& id = {}, bool heartbeat = true,
                 const std::string& package = {}) {
        disconnect();
        m_context = std::make_unique<grpc::ClientContext>();
        m_stream = m_harness.federation->Connect(m_context.get());
        v1::ClientMessage hello;
        hello.mutable_hello()->set_client_id(id);
        hello.mutable_hello()->set_name(m_name);
        hello.mutable_hello()->set_version("test");
        hello.mutable_hello()->set_protocol_version(1);
        hello.mutable_hello()->set_package_sha256(package);
        for (const auto& capability : m_capabilities) {
            hello.mutable_hello()->add_capabilities(capability);
        }
        REQUIRE(m_stream->Write(hello));
        v1::ServerMessage first;
        REQUIRE(m_stream->Read(&first));
        REQUIRE(first.has_welcome());
        welcome = first.welcome();
        client_id = welcome.client_id();
        m_sequence = 0;
        m_ended = false;
        m_reader = std::thread([this] { read_loop(); });
        if (heartbeat) this->heartbeat(v1::CLIENT_STATUS_IDLE, package);
    }

    /// Ends the stream the polite way (WritesDone) and waits for the server to close it.
    void disconnect() {
        if (!m_stream) return;
        {
            std::lock_guard lock(m_write_mutex);
            m_stream->WritesDone();
        }
        m_reader.join();
        m_final_status = m_stream->Finish();
        m_stream.reset();
    }

    void send(const v1::ClientMessage& message) {
        std::lock_guard lock(m_write_mutex);
        if (m_stream) m_stream->Write(message);
    }

    void heartbeat(v1::ClientStatus status = v1::CLIENT_STATUS_IDLE,
                   const std::string& package = {}) {
        v1::ClientMessage message;
        message.mutable_heartbeat()->set_sequence(++m_sequence);
        message.mutable_heartbeat()->set_status(status);
        message.mutable_heartbeat()->set_package_sha256(package);
        send(message);
    }

    void task_status(const std::string& task_id, v1::TaskState state, const std::string& text = {},
                     int exit_code = 0) {
        v1::ClientMessage message;
        message.mutable_task_status()->set_task_id(task_id);
        message.mutable_task_status()->set_state(state);
        message.mutable_task_status()->set_message(text);
        message.mutable_task_status()->set_exit_code(exit_code);
        send(message);
    }

    void log_lines(const std::string& task_id, v1::LogStream stream,
                   const std::vector<std::string>& lines) {
        v1::ClientMessage message;
        message.mutable_log_lines()->set_task_id(task_id);
        message.mutable_log_lines()->set_stream(stream);
        for (const auto& line : lines) message.mutable_log_lines()->add_lines(line);
        send(message);
    }

    /// Uploads `model` as an update and reports it for `task`; returns the Ack.
    v1::Ack report(const v1::Task& task, const npz::ParameterSet& model,
                   const std::string& metadata_json) {
        fs::path file = m_work / (task.task_id() + "-" + std::to_string(m_files++) + ".npz");
        npz::write_npz(file, model);
        UploadCall call = upload(*m_harness.transfer, v1::TRANSFER_KIND_MODEL, file);
        if (!call.status.ok()) error("upload failed: " + call.status.error_message());
        return report_id(task, call.result.id(), metadata_json);
    }

    v1::Ack report_id(const v1::Task& task, const std::string& model_id,
                      const std::string& metadata_json) {
        grpc::ClientContext context;
        v1::UpdateReport report;
        report.set_client_id(client_id);
        report.set_task_id(task.task_id());
        report.set_round_id(task.round_id());
        report.set_model_id(model_id);
        report.set_metadata_json(metadata_json);
        v1::Ack ack;
        grpc::Status status = m_harness.federation->ReportUpdate(&context, report, &ack);
        if (!status.ok()) error("ReportUpdate failed: " + status.error_message());
        std::lock_guard lock(m_mutex);
        m_acks[task.task_id()].push_back(ack);
        return ack;
    }

    v1::Ack validate(const v1::Task& task, const std::string& metrics_json) {
        grpc::ClientContext context;
        v1::ValidationReport report;
        report.set_client_id(client_id);
        report.set_task_id(task.task_id());
        report.set_round_id(task.round_id());
        report.set_model_id(task.model_id());
        report.set_metrics_json(metrics_json);
        v1::Ack ack;
        grpc::Status status = m_harness.federation->ReportValidation(&context, report, &ack);
        if (!status.ok()) error("ReportValidation failed: " + status.error_message());
        if (!ack.accepted()) error("validation refused: " + ack.reason());
        return ack;
    }

    /// Downloads the task's input model.
    npz::ParameterSet input(const v1::Task& task) {
        DownloadCall call = download(*m_harness.transfer, v1::TRANSFER_KIND_MODEL, task.model_id());
        if (!call.status.ok()) error("download failed: " + call.status.error_message());
        fs::path file = m_work / (task.task_id() + "-input-" + std::to_string(m_files++));
        fedcli::test::write_file(file, call.data);
        return npz::read_npz(file);
    }

    void error(const std::string& text) {
        std::lock_guard lock(m_mutex);
        m_errors.push_back(m_name + ": " + text);
    }

    /// Waits until at least `count` tasks arrived; returns them.
    std::vector<v1::Task> wait_tasks(std::size_t count, std::chrono::milliseconds limit = 10s) {
        std::unique_lock lock(m_mutex);
        m_changed.wait_for(lock, limit, [&] { return m_tasks.size() >= count; });
        return m_tasks;
    }
    std::vector<v1::CancelTask> wait_cancels(std::size_t count,
                                             std::chrono::milliseconds limit = 10s) {
        std::unique_lock lock(m_mutex);
        m_changed.wait_for(lock, limit, [&] { return m_cancels.size() >= count; });
        return m_cancels;
    }
    std::vector<v1::PackageAvailable> wait_packages(std::size_t count,
                                                    std::chrono::milliseconds limit = 10s) {
        std::unique_lock lock(m_mutex);
        m_changed.wait_for(lock, limit, [&] { return m_packages.size() >= count; });
        return m_packages;
    }
    /// Waits until the server ended the stream (e.g. replaced by a newer one).
    bool wait_ended(std::chrono::milliseconds limit = 10s) {
        std::unique_lock lock(m_mutex);
        return m_changed.wait_for(lock, limit, [&] { return m_ended; });
    }
    /// Every Ack this client got for a task, in order.
    std::vector<v1::Ack> acks(const std::string& task_id) {
        std::lock_guard lock(m_mutex);
        return m_acks[task_id];
    }
    /// Waits until a handler stored `count` acks for some task.
    bool wait_acks(std::size_t count, std::chrono::milliseconds limit = 10s) {
        return eventually(
            [&] {
                std::lock_guard lock(m_mutex);
                std::size_t total = 0;
                for (const auto& [id, list] : m_acks) total += list.size();
                return total >= count;
            },
            limit);
    }
    std::vector<std::string> errors() {
        std::lock_guard lock(m_mutex);
        return m_errors;
    }

    v1::Transfer::Stub* transfer() { return m_harness.transfer.get(); }

    v1::Welcome welcome;
    std::string client_id;

  private:
    void read_loop() {
        v1::ServerMessage message;
        while (m_stream->Read(&message)) {
            if (message.has_task()) {
                {
                    std::lock_guard lock(m_mutex);
                    m_tasks.push_back(message.task());
                }
                m_changed.notify_all();
                if (m_handler) m_handler(*this, message.task());
            } else if (message.has_cancel_task()) {
                // As a real client does: the task stops and its end is reported.
                task_status(message.cancel_task().task_id(), v1::TASK_STATE_CANCELLED);
                std::lock_guard lock(m_mutex);
                m_cancels.push_back(message.cancel_task());
            } else if (message.has_package_available()) {
                std::lock_guard lock(m_mutex);
                m_packages.push_back(message.package_available());
            }
            m_changed.notify_all();
        }
        {
            std::lock_guard lock(m_mutex);
            m_ended = true;
        }
        m_changed.notify_all();
    }

    Harness& m_harness;
    std::string m_name;
    Handler m_handler;
    std::vector<std::string> m_capabilities;
    fs::path m_work;
    std::unique_ptr<grpc::ClientContext> m_context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::ClientMessage, v1::ServerMessage>> m_stream;
    std::mutex m_write_mutex;
    std::thread m_reader;
    std::uint64_t m_sequence = 0;
    grpc::Status m_final_status;
    int m_files = 0;

    std::mutex m_mutex;
    std::condition_variable m_changed;
    std::vector<v1::Task> m_tasks;
    std::vector<v1::CancelTask> m_cancels;
    std::vector<v1::PackageAvailable> m_packages;
    std::map<std::string, std::vector<v1::Ack>> m_acks;
    std::vector<std::string> m_errors;
    bool m_ended = false;
};

/// A train handler: update = input * scale + shift (float32 arithmetic), reported with
/// `examples`; validate tasks are answered with {"accuracy": 0.5}.
FakeClient::Handler affine_trainer(float scale, float shift, int examples) {
    return [=](FakeClient& client, const v1::Task& task) {
        if (task.kind() == v1::TASK_KIND_VALIDATE) {
            client.validate(task, R"({"accuracy": 0.5})");
            client.task_status(task.task_id(), v1::TASK_STATE_SUCCEEDED);
            return;
        }
        client.task_status(task.task_id(), v1::TASK_STATE_RUNNING);
        npz::ParameterSet model = client.input(task);
        for (auto& entry : model) {
            for (float& v : entry.array.values<float>()) v = v * scale + shift;
        }
        client.report(task, model, R"({"num_examples": )" + std::to_string(examples) + "}");
        client.task_status(task.task_id(), v1::TASK_STATE_SUCCEEDED);
    };
}

v1::SessionConfig session_config(std::uint32_t rounds, std::uint32_t min_clients = 1,
                                 std::uint64_t timeout_ms = 20000) {
    v1::SessionConfig config;
    config.set_rounds(rounds);
    config.set_min_clients(min_clients);
    config.set_round_timeout_ms(timeout_ms);
    return config;
}

}  // namespace

TEST_CASE("models go up and down through the combiner's Transfer service, with resume") {
    Harness harness;
    const std::uint64_t size = 3 * k_mib + 12345;
    write_random_file(harness.dir() / "blob.bin", size, 5);
    const std::string sha = fedcli::util::sha256_file(harness.dir() / "blob.bin");
    auto& transfer = *harness.transfer;

    SECTION("round trip, then a download resumed from an offset") {
        UploadCall up = upload(transfer, v1::TRANSFER_KIND_MODEL, harness.dir() / "blob.bin");
        INFO(up.status.error_message());
        REQUIRE(up.status.ok());
        CHECK(up.result.id() == sha);
        CHECK(up.result.size() == size);
        CHECK(fs::exists(harness.data_dir() / "models" / (sha + ".npz")));

        DownloadCall whole = download(transfer, v1::TRANSFER_KIND_MODEL, sha);
        REQUIRE(whole.status.ok());
        CHECK(whole.header.size() == size);
        CHECK(whole.header.sha256() == sha);
        CHECK(whole.data == fedcli::test::read_file(harness.dir() / "blob.bin"));

        const std::uint64_t offset = k_mib + 7;
        DownloadCall rest = download(transfer, v1::TRANSFER_KIND_MODEL, sha, offset);
        REQUIRE(rest.status.ok());
        CHECK(rest.header.offset() == offset);
        CHECK(rest.data == whole.data.substr(offset));

        // Uploading the same file again sends nothing new and answers the same id.
        UploadCall again = upload(transfer, v1::TRANSFER_KIND_MODEL, harness.dir() / "blob.bin");
        CHECK(again.status.ok());
        CHECK(again.result.id() == sha);
    }

    SECTION("an interrupted upload resumes from what the combiner kept") {
        UploadCall broken =
            upload(transfer, v1::TRANSFER_KIND_MODEL, harness.dir() / "blob.bin", 0, 2);
        CHECK(broken.status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
        CHECK_THAT(broken.status.error_message(), Catch::Contains("incomplete"));
        auto query_state = [&] {
            grpc::ClientContext context;
            v1::UploadQuery query;
            query.set_kind(v1::TRANSFER_KIND_MODEL);
            query.set_sha256(sha);
            v1::UploadState state;
            REQUIRE(transfer.QueryUpload(&context, query, &state).ok());
            return state;
        };
        v1::UploadState state = query_state();
        CHECK(state.bytes_received() == 2 * k_mib);
        CHECK_FALSE(state.complete());

        // A resume offset the combiner does not hold is refused.
        UploadCall wrong =
            upload(transfer, v1::TRANSFER_KIND_MODEL, harness.dir() / "blob.bin", k_mib);
        CHECK(wrong.status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
        CHECK_THAT(wrong.status.error_message(),
                   Catch::Contains("resume offset 1048576 but the combiner holds 2097152"));

        UploadCall resumed = upload(transfer, v1::TRANSFER_KIND_MODEL, harness.dir() / "blob.bin",
                                    state.bytes_received());
        INFO(resumed.status.error_message());
        REQUIRE(resumed.status.ok());
        CHECK(resumed.result.id() == sha);
        CHECK(fedcli::util::sha256_file(harness.data_dir() / "models" / (sha + ".npz")) == sha);
        CHECK(query_state().complete());
    }

    SECTION("a sha256 mismatch is refused and nothing is stored") {
        const std::string wrong(64, 'c');
        UploadCall call =
            upload(transfer, v1::TRANSFER_KIND_PACKAGE, harness.dir() / "blob.bin", 0, -1, wrong);
        CHECK(call.status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
        CHECK_THAT(call.status.error_message(),
                   Catch::StartsWith("upload of package cccccccc: sha256 mismatch") &&
                       Catch::Contains(sha));
        CHECK_FALSE(fs::exists(harness.data_dir() / "packages" / (wrong + ".tgz")));
        CHECK_FALSE(fs::exists(harness.data_dir() / "packages" / (wrong + ".tgz.part")));
    }

    SECTION("unknown and malformed ids") {
        DownloadCall missing = download(transfer, v1::TRANSFER_KIND_MODEL, std::string(64, 'a'));
        CHECK(missing.status.error_code() == grpc::StatusCode::NOT_FOUND);
        DownloadCall latest = download(transfer, v1::TRANSFER_KIND_MODEL, "latest");
        CHECK(latest.status.error_code() == grpc::StatusCode::NOT_FOUND);
        CHECK_THAT(latest.status.error_message(), Catch::Contains("no model yet"));
        DownloadCall sneaky = download(transfer, v1::TRANSFER_KIND_MODEL, "../../etc/passwd");
        CHECK(sneaky.status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);

        std::string seed = harness.seed(make_model(1));
        DownloadCall now = download(transfer, v1::TRANSFER_KIND_MODEL, "latest");
        REQUIRE(now.status.ok());
        CHECK(now.header.id() == seed);
    }
}

TEST_CASE("clients join with Hello/Welcome and go offline when their stream ends") {
    Harness harness;
    FakeClient a(harness, "a");
    a.connect();
    CHECK(std::regex_match(a.client_id, std::regex("[0-9a-f]{16}")));
    CHECK(a.welcome.heartbeat_interval_ms() == 10000);
    CHECK(a.welcome.protocol_version() == 1);
    REQUIRE(eventually([&] {
        auto clients = harness.clients();
        return clients.size() == 1 && clients[0].status() == v1::CLIENT_STATUS_IDLE;
    }));
    auto clients = harness.clients();
    CHECK(clients[0].client_id() == a.client_id);
    CHECK(clients[0].name() == "a");
    CHECK(clients[0].version() == "test");
    CHECK(clients[0].online());
    CHECK(clients[0].last_seen_unix_ms() > 0);
    CHECK(harness.status().clients_online() == 1);

    const std::string id = a.client_id;
    a.disconnect();
    REQUIRE(eventually([&] { return !harness.clients().at(0).online(); }));
    CHECK(harness.status().clients_online() == 0);
    CHECK(harness.status().clients_known() == 1);

    // Reconnecting with the id from Welcome keeps the identity.
    a.connect(id);
    CHECK(a.client_id == id);
    REQUIRE(eventually([&] { return harness.clients().at(0).online(); }));
    CHECK(harness.clients().size() == 1);

    // A second stream with the same id replaces the first, which the combiner ends.
    FakeClient twin(harness, "a-twin");
    twin.connect(id);
    CHECK(twin.client_id == id);
    CHECK(a.wait_ended());
    REQUIRE(eventually([&] {
        auto list = harness.clients();
        return list.size() == 1 && list[0].online() && list[0].name() == "a-twin";
    }));

    twin.disconnect();
    a.disconnect();
    std::string log = harness.stop();
    CHECK_THAT(log, Catch::Contains("client 'a' (id " + id.substr(0, 8) + ") joined; 1 online"));
    CHECK_THAT(log, Catch::Contains("client 'a' (id " + id.substr(0, 8) +
                                    ") left: stream closed; 0 online"));
    std::istringstream lines(log);
    std::string line;
    while (std::getline(lines, line)) {
        INFO(line);
        CHECK(std::regex_search(line, std::regex(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S)")));
    }
}

TEST_CASE("a client without heartbeats goes offline after three intervals") {
    Harness harness(100ms);
    FakeClient a(harness, "quiet");
    a.connect();
    CHECK(a.welcome.heartbeat_interval_ms() == 100);
    REQUIRE(eventually([&] { return harness.clients().size() == 1; }));
    const auto silent_since = Clock::now();
    REQUIRE(eventually([&] { return !harness.clients().at(0).online(); }, 5s));
    CHECK(Clock::now() - silent_since >= 250ms);
    // The stream is still open: the next message brings it back.
    a.heartbeat();
    REQUIRE(eventually([&] { return harness.clients().at(0).online(); }));
    a.disconnect();
    CHECK_THAT(harness.stop(), Catch::Contains("left: no message for"));
}

TEST_CASE("a current package is announced to clients that need it") {
    Harness harness;
    write_random_file(harness.dir() / "package.tgz", 1000, 9);
    UploadCall up =
        upload(*harness.transfer, v1::TRANSFER_KIND_PACKAGE, harness.dir() / "package.tgz");
    REQUIRE(up.status.ok());
    const std::string sha = up.result.id();

    FakeClient remote(harness, "remote", {}, {"train"});
    FakeClient local(harness, "local");
    remote.connect();
    local.connect();

    grpc::ClientContext context;
    v1::SetPackageRequest request;
    request.set_sha256(std::string(64, 'd'));
    v1::Ack ack;
    REQUIRE(harness.control->SetPackage(&context, request, &ack).ok());
    CHECK_FALSE(ack.accepted());
    CHECK_THAT(ack.reason(), Catch::Contains("was not uploaded"));

    grpc::ClientContext context2;
    request.set_sha256(sha);
    request.set_name("package.tgz");
    REQUIRE(harness.control->SetPackage(&context2, request, &ack).ok());
    CHECK(ack.accepted());
    auto packages = remote.wait_packages(1);
    REQUIRE(packages.size() == 1);
    CHECK(packages[0].sha256() == sha);
    CHECK(packages[0].size() == 1000);
    CHECK(harness.status().package_sha256() == sha);

    // A client that connects later hears about it right after Welcome.
    FakeClient late(harness, "late", {}, {"train"});
    late.connect();
    CHECK(late.wait_packages(1).size() == 1);
    CHECK(local.wait_packages(1, 50ms).empty());
}

TEST_CASE("two clients, two fedavg rounds: the global model is the weighted mean") {
    Harness harness;
    const npz::ParameterSet seed_model = make_model(1.5f);
    const std::string seed = harness.seed(seed_model);
    FakeClient a(harness, "a", affine_trainer(2.0f, 1.0f, 100));
    FakeClient b(harness, "b", affine_trainer(0.5f, -3.0f, 300));
    a.connect();
    b.connect();
    harness.wait_idle(2);

    v1::SessionConfig config = session_config(2, 2);
    config.set_validate(true);
    config.set_settings_json(R"({"epochs": 3})");
    v1::StartSessionResponse started = harness.start(config);
    INFO(started.ack().reason());
    REQUIRE(started.ack().accepted());
    REQUIRE(started.session_id().size() == 16);

    v1::StatusResponse status = harness.wait_session_end();
    INFO(status.message());
    CHECK(status.session_state() == v1::SESSION_STATE_FINISHED);
    CHECK(status.rounds() == 2);
    CHECK(a.errors().empty());
    CHECK(b.errors().empty());

    // Expected: each round, the clients' float32 updates averaged with weights 100:300.
    std::vector<float> expected = flatten(seed_model);
    for (int round = 0; round < 2; ++round) {
        for (float& x : expected) {
            float ua = x * 2.0f + 1.0f;
            float ub = x * 0.5f + -3.0f;
            x = static_cast<float>((100.0 * ua + 300.0 * ub) / 400.0);
        }
    }
    std::vector<float> actual = flatten(harness.fetch_model("latest"));
    REQUIRE(actual.size() == expected.size());
    for (std::size_t i = 0; i < actual.size(); ++i) {
        CHECK(actual[i] == Approx(expected[i]).epsilon(1e-6));
    }

    auto rounds = harness.rounds();
    REQUIRE(rounds.size() == 2);
    std::string input = seed;
    for (const auto& round : rounds) {
        INFO(describe(round));
        CHECK(round.state() == v1::ROUND_STATE_COMMITTED);
        CHECK(round.session_id() == started.session_id());
        CHECK(round.clients_selected() == 2);
        CHECK(round.updates_accepted() == 2);
        CHECK(round.rejected_size() == 0);
        CHECK(round.aggregator() == "fedavg");
        CHECK(round.input_model_id() == input);
        CHECK(round.output_model_id().size() == 64);
        REQUIRE(round.updates_size() == 2);
        std::uint64_t examples = 0;
        for (const auto& update : round.updates()) {
            examples += update.num_examples();
            CHECK(update.used());
            CHECK(update.model_id().size() == 64);
        }
        CHECK(examples == 400);
        REQUIRE(round.validations_size() == 2);
        for (const auto& validation : round.validations()) {
            CHECK(validation.model_id() == round.output_model_id());
            CHECK(nlohmann::json::parse(validation.metrics_json())["accuracy"] == 0.5);
        }
        input = round.output_model_id();
    }
    CHECK(rounds[1].round_id() == rounds[0].round_id() + 1);
    CHECK(status.latest_model_id() == rounds[1].output_model_id());

    // Lineage: seed -> round 1 -> round 2.
    auto models = harness.models();
    REQUIRE(models.size() == 3);
    CHECK(models[0].model_id() == seed);
    CHECK(models[0].parent_id().empty());
    CHECK(models[0].round_id() == 0);
    CHECK(models[1].parent_id() == seed);
    CHECK(models[1].round_id() == rounds[0].round_id());
    CHECK(models[1].session_id() == started.session_id());
    CHECK(models[2].parent_id() == models[1].model_id());
    CHECK(models[2].round_id() == rounds[1].round_id());
    CHECK(models[2].size() > 0);
    CHECK(models[2].created_unix_ms() >= models[1].created_unix_ms());

    // Tasks carried the round, the session and the session's settings.
    auto tasks = a.wait_tasks(4);
    REQUIRE(tasks.size() == 4);  // train, validate, train, validate
    CHECK(tasks[0].kind() == v1::TASK_KIND_TRAIN);
    CHECK(tasks[1].kind() == v1::TASK_KIND_VALIDATE);
    auto settings = nlohmann::json::parse(tasks[2].settings_json());
    CHECK(settings["round"] == rounds[1].round_id());
    CHECK(settings["session_round"] == 2);
    CHECK(settings["session_id"] == started.session_id());
    CHECK(settings["epochs"] == 3);
    CHECK(tasks[0].model_sha256() == seed);
    CHECK(tasks[0].deadline_unix_ms() > 0);

    a.disconnect();
    b.disconnect();
    std::string log = harness.stop();
    CHECK_THAT(log, Catch::Contains("round " + std::to_string(rounds[0].round_id()) +
                                    " started: 2 clients selected, model " + seed.substr(0, 8)));
    CHECK_THAT(log, Catch::Contains(" committed in ") &&
                        Catch::Contains(": 2 updates (400 examples), 0 rejected -> model " +
                                        rounds[1].output_model_id().substr(0, 8)));
}

TEST_CASE("too few ready clients fail the round and the session with a reason") {
    Harness harness;
    harness.seed(make_model(0));
    FakeClient a(harness, "a", affine_trainer(1, 0, 10));
    a.connect();
    REQUIRE(harness.start(session_config(3, 2, 300)).ack().accepted());
    v1::StatusResponse status = harness.wait_session_end();
    CHECK(status.session_state() == v1::SESSION_STATE_FAILED);
    CHECK_THAT(status.message(), Catch::Contains("only 1 of 2 required clients ready after 0."));
    auto rounds = harness.rounds();
    REQUIRE(rounds.size() == 1);
    CHECK(rounds[0].state() == v1::ROUND_STATE_FAILED);
    CHECK_THAT(rounds[0].reason(), Catch::StartsWith("only 1 of 2 required clients ready after"));
    CHECK(rounds[0].closed_unix_ms() >= rounds[0].started_unix_ms());
}

TEST_CASE("a failed train task is recorded as rejected, and the round commits with the others") {
    Harness harness;
    harness.seed(make_model(2));
    FakeClient a(harness, "a", affine_trainer(1, 1, 10));
    FakeClient b(harness, "b", [](FakeClient& client, const v1::Task& task) {
        client.task_status(task.task_id(), v1::TASK_STATE_FAILED, "exited with code 3: boom", 3);
    });
    a.connect();
    b.connect();
    harness.wait_idle(2);

    SECTION("min_clients 1: committed") {
        REQUIRE(harness.start(session_config(1, 1)).ack().accepted());
        v1::StatusResponse status = harness.wait_session_end();
        CHECK(status.session_state() == v1::SESSION_STATE_FINISHED);
        auto rounds = harness.rounds();
        REQUIRE(rounds.size() == 1);
        CHECK(rounds[0].state() == v1::ROUND_STATE_COMMITTED);
        CHECK(rounds[0].updates_accepted() == 1);
        REQUIRE(rounds[0].rejected_size() == 1);
        CHECK(rounds[0].rejected(0).client_id() == b.client_id);
        CHECK(rounds[0].rejected(0).reason() == "train failed: exited with code 3: boom");
        CHECK(rounds[0].rejected(0).task_id() == b.wait_tasks(1).at(0).task_id());
    }
    SECTION("min_clients 2: the round fails naming the rejection") {
        REQUIRE(harness.start(session_config(1, 2)).ack().accepted());
        v1::StatusResponse status = harness.wait_session_end();
        CHECK(status.session_state() == v1::SESSION_STATE_FAILED);
        auto rounds = harness.rounds();
        REQUIRE(rounds.size() == 1);
        CHECK(rounds[0].state() == v1::ROUND_STATE_FAILED);
        CHECK(rounds[0].reason() ==
              "1 update accepted, 2 required; rejected: 'b': train failed: exited with code 3: "
              "boom");
        CHECK_THAT(status.message(), Catch::Contains(rounds[0].reason()));
        CHECK(rounds[0].output_model_id().empty());
    }
}

TEST_CASE("a mismatched update is refused naming the array, and the round commits without it") {
    Harness harness;
    const npz::ParameterSet seed_model = make_model(1);
    harness.seed(seed_model);
    FakeClient a(harness, "a", [](FakeClient& client, const v1::Task& task) {
        npz::ParameterSet model = client.input(task);
        for (auto& entry : model) {
            for (float& v : entry.array.values<float>()) v += 1;
        }
        client.report(task, model, R"({"num_examples": 5})");
        // A repeated report is answered the same and not folded twice.
        client.report(task, model, R"({"num_examples": 5})");
        client.task_status(task.task_id(), v1::TASK_STATE_SUCCEEDED);
    });
    FakeClient b(harness, "b", [](FakeClient& client, const v1::Task& task) {
        client.report(task, make_model(7, 4), R"({"num_examples": 50})");
        client.task_status(task.task_id(), v1::TASK_STATE_SUCCEEDED);
    });
    FakeClient c(harness, "c", [](FakeClient& client, const v1::Task& task) {
        client.report(task, client.input(task), R"({"loss": 0.5})");
        client.task_status(task.task_id(), v1::TASK_STATE_SUCCEEDED);
    });
    a.connect();
    b.connect();
    c.connect();
    harness.wait_idle(3);
    REQUIRE(harness.start(session_config(1, 1)).ack().accepted());
    v1::StatusResponse status = harness.wait_session_end();
    CHECK(status.session_state() == v1::SESSION_STATE_FINISHED);

    const std::string task_a = a.wait_tasks(1).at(0).task_id();
    const std::string task_b = b.wait_tasks(1).at(0).task_id();
    REQUIRE(a.wait_acks(2));  // the repeat may come after the round closed: still accepted
    auto acks_a = a.acks(task_a);
    REQUIRE(acks_a.size() == 2);
    CHECK(acks_a[0].accepted());
    CHECK(acks_a[1].accepted());
    auto acks_b = b.acks(task_b);
    REQUIRE(acks_b.size() == 1);
    CHECK_FALSE(acks_b[0].accepted());
    CHECK(acks_b[0].code() == v1::ACK_CODE_INVALID);
    CHECK_THAT(acks_b[0].reason(), Catch::StartsWith("update from client 'b'") &&
                                       Catch::Contains("array \"b\"") && Catch::Contains("[4]"));

    auto acks_c = c.acks(c.wait_tasks(1).at(0).task_id());
    REQUIRE(acks_c.size() == 1);
    CHECK(acks_c[0].code() == v1::ACK_CODE_INVALID);
    CHECK_THAT(acks_c[0].reason(), Catch::Contains("num_examples"));

    auto rounds = harness.rounds();
    REQUIRE(rounds.size() == 1);
    CHECK(rounds[0].state() == v1::ROUND_STATE_COMMITTED);
    CHECK(rounds[0].clients_selected() == 3);
    CHECK(rounds[0].updates_accepted() == 1);
    REQUIRE(rounds[0].updates_size() == 1);
    CHECK(rounds[0].updates(0).client_id() == a.client_id);
    CHECK(rounds[0].updates(0).num_examples() == 5);
    REQUIRE(rounds[0].rejected_size() == 2);
    std::map<std::string, std::string> reasons;
    for (const auto& rejected : rounds[0].rejected()) {
        reasons[rejected.client_id()] = rejected.reason();
    }
    CHECK_THAT(reasons[b.client_id], Catch::Contains("array \"b\""));
    CHECK_THAT(reasons[c.client_id], Catch::Contains("num_examples"));

    std::vector<float> expected = flatten(seed_model);
    for (float& x : expected) x += 1;
    CHECK(flatten(harness.fetch_model("latest")) == expected);

    a.disconnect();
    b.disconnect();
    c.disconnect();
    CHECK_THAT(harness.stop(), Catch::Contains("update from client 'b' rejected: array \"b\""));
}

TEST_CASE("reports for closed rounds, unknown tasks and other clients' tasks are refused") {
    Harness harness;
    harness.seed(make_model(1));
    FakeClient silent(harness, "silent");  // takes tasks, never answers
    silent.connect();
    FakeClient other(harness, "other", {}, {"train"});  // never ready: no package
    other.connect();
    harness.wait_idle(2);

    // No session yet: nothing to report to.
    v1::Task bogus;
    bogus.set_task_id("no-such-task");
    bogus.set_round_id(1);
    CHECK(silent.report(bogus, make_model(1), R"({"num_examples": 1})").code() ==
          v1::ACK_CODE_NO_SESSION);

    // Round 1 times out without an answer: the session fails, the task was cancelled.
    REQUIRE(harness.start(session_config(1, 1, 300)).ack().accepted());
    v1::StatusResponse status = harness.wait_session_end();
    CHECK(status.session_state() == v1::SESSION_STATE_FAILED);
    CHECK_THAT(status.message(),
               Catch::Contains("0 updates accepted, 1 required; no answer within 0.3 s from "
                               "'silent'"));
    const v1::Task late = silent.wait_tasks(1).at(0);
    auto cancels = silent.wait_cancels(1);
    REQUIRE(cancels.size() == 1);
    CHECK(cancels[0].task_id() == late.task_id());

    // A second session is running: the old task's report is stale.
    REQUIRE(harness.start(session_config(1, 1, 20000)).ack().accepted());
    const v1::Task current = silent.wait_tasks(2).at(1);
    // Round ids count on across sessions; session_round starts again at 1.
    auto current_settings = nlohmann::json::parse(current.settings_json());
    CHECK(current_settings["round"] == current.round_id());
    CHECK(current.round_id() == late.round_id() + 1);
    CHECK(current_settings["session_round"] == 1);
    v1::Ack stale = silent.report(late, make_model(1), R"({"num_examples": 1})");
    CHECK_FALSE(stale.accepted());
    CHECK(stale.code() == v1::ACK_CODE_STALE_ROUND);
    CHECK_THAT(stale.reason(), Catch::Contains("is closed"));

    v1::Ack unknown = silent.report(bogus, make_model(1), R"({"num_examples": 1})");
    CHECK(unknown.code() == v1::ACK_CODE_UNKNOWN_TASK);
    // Another client cannot answer this client's task.
    v1::Ack foreign = other.report(current, make_model(1), R"({"num_examples": 1})");
    CHECK(foreign.code() == v1::ACK_CODE_UNKNOWN_TASK);
    // A report naming the wrong round is refused without answering the task.
    v1::Task wrong_round = current;
    wrong_round.set_round_id(current.round_id() + 7);
    v1::Ack mismatch = silent.report(wrong_round, make_model(1), R"({"num_examples": 1})");
    CHECK(mismatch.code() == v1::ACK_CODE_INVALID);
    CHECK_THAT(mismatch.reason(), Catch::Contains("belongs to round"));
    // An update that was never uploaded is refused, and that answers the task for good.
    v1::Ack missing = silent.report_id(current, std::string(64, 'f'), R"({"num_examples": 1})");
    CHECK(missing.code() == v1::ACK_CODE_INVALID);
    CHECK_THAT(missing.reason(), Catch::Contains("was not uploaded"));
    v1::Ack repeat = silent.report(current, make_model(1), R"({"num_examples": 1})");
    CHECK(repeat.reason() == missing.reason());
    status = harness.wait_session_end();
    CHECK(status.session_state() == v1::SESSION_STATE_FAILED);
    CHECK_THAT(status.message(),
               Catch::Contains("0 updates accepted, 1 required; rejected: 'silent': model"));
    auto rounds = harness.rounds();
    REQUIRE(rounds.size() == 1);
    REQUIRE(rounds[0].rejected_size() == 1);
    CHECK_THAT(rounds[0].rejected(0).reason(), Catch::Contains("was not uploaded"));
    CHECK(silent.errors().empty());
}

TEST_CASE("StopSession cancels the open round's tasks and ends the session STOPPED") {
    Harness harness;
    harness.seed(make_model(1));
    FakeClient silent(harness, "silent");
    silent.connect();
    v1::StartSessionResponse started = harness.start(session_config(3, 1, 60000));
    REQUIRE(started.ack().accepted());
    const v1::Task task = silent.wait_tasks(1).at(0);

    // A second session is refused while this one runs.
    v1::StartSessionResponse second = harness.start(session_config(1));
    CHECK_FALSE(second.ack().accepted());
    CHECK_THAT(second.ack().reason(), Catch::Contains("is running"));

    v1::Ack ack = harness.stop_session(true);
    INFO(ack.reason());
    CHECK(ack.accepted());
    v1::StatusResponse status = harness.status();
    CHECK(status.session_state() == v1::SESSION_STATE_STOPPED);
    CHECK_THAT(status.message(), Catch::Contains("stopped by the operator"));
    auto cancels = silent.wait_cancels(1);
    REQUIRE(cancels.size() == 1);
    CHECK(cancels[0].task_id() == task.task_id());
    auto rounds = harness.rounds(started.session_id());
    REQUIRE(rounds.size() == 1);
    CHECK(rounds[0].state() == v1::ROUND_STATE_FAILED);
    CHECK(rounds[0].reason() == "session stopped by the operator");

    CHECK_FALSE(harness.stop_session(true).accepted());
    grpc::ClientContext context;
    v1::ListRoundsRequest request;
    request.set_session_id("nope");
    v1::ListRoundsResponse response;
    CHECK(harness.control->ListRounds(&context, request, &response).error_code() ==
          grpc::StatusCode::NOT_FOUND);
}

TEST_CASE("seed models and session configurations are checked") {
    Harness harness;
    // No starting model at all.
    v1::StartSessionResponse none = harness.start(session_config(1));
    CHECK_FALSE(none.ack().accepted());
    CHECK_THAT(none.ack().reason(), Catch::Contains("no starting model"));

    // A file that is not a parameter file cannot be the seed.
    write_random_file(harness.dir() / "corrupt.npz", 5000, 3);
    UploadCall up =
        upload(*harness.transfer, v1::TRANSFER_KIND_MODEL, harness.dir() / "corrupt.npz");
    REQUIRE(up.status.ok());
    v1::Ack corrupt = harness.set_seed(up.result.id());
    CHECK_FALSE(corrupt.accepted());
    CHECK(corrupt.code() == v1::ACK_CODE_INVALID);
    CHECK_THAT(corrupt.reason(), Catch::Contains("is not a readable parameter file"));
    CHECK(harness.set_seed(std::string(64, 'e')).reason().find("was not uploaded") !=
          std::string::npos);
    CHECK_FALSE(harness.set_seed("short").accepted());
    CHECK(harness.models().empty());

    harness.seed(make_model(1));
    v1::SessionConfig config = session_config(1);
    config.set_aggregator("fedavgg");
    v1::StartSessionResponse typo = harness.start(config);
    CHECK_FALSE(typo.ack().accepted());
    CHECK_THAT(typo.ack().reason(), Catch::Contains("fedavg"));
    config.set_aggregator("fedavg");
    config.set_aggregator_config_json(R"({"bacth": 2})");
    CHECK_THAT(harness.start(config).ack().reason(), Catch::Contains("batch"));
    config.set_aggregator_config_json("");
    config.set_settings_json("[1, 2]");
    CHECK_THAT(harness.start(config).ack().reason(),
               Catch::Contains("settings_json must be a JSON object"));
    config.set_settings_json("");
    config.set_rounds(0);
    CHECK_THAT(harness.start(config).ack().reason(), Catch::Contains("rounds must be at least 1"));
    CHECK(harness.status().session_state() == v1::SESSION_STATE_IDLE);
}

TEST_CASE("the combiner starts and stops cleanly, repeatedly, with clients and a session") {
    for (int i = 0; i < 4; ++i) {
        Harness harness;
        harness.seed(make_model(static_cast<float>(i)));
        FakeClient a(harness, "a");
        a.connect();
        if (i % 2) {
            REQUIRE(harness.start(session_config(2, 1, 60000)).ack().accepted());
            a.wait_tasks(1);
        }
        const auto began = Clock::now();
        std::string log = harness.stop();
        CHECK(Clock::now() - began < 5s);
        CHECK(a.wait_ended());
        CHECK_THAT(log, Catch::Contains("combiner stopped"));
        harness.combiner->shutdown();  // a second shutdown is a no-op
    }
}

namespace {

/// The client of that id in a ListClients answer; fails the test when it is missing.
v1::ClientInfo client_info(const std::vector<v1::ClientInfo>& clients, const std::string& id) {
    for (const auto& client : clients) {
        if (client.client_id() == id) return client;
    }
    FAIL("client " << id << " is not listed");
    return {};
}

std::string join_lines(const std::vector<std::string>& lines) {
    std::string text;
    for (const auto& line : lines) text += line + "\n";
    return text;
}

}  // namespace

TEST_CASE("sessions, rounds, models, clients and the seed survive a restart") {
    Harness harness;
    const std::string seed = harness.seed(make_model(1.5f));
    FakeClient a(harness, "a", affine_trainer(2.0f, 1.0f, 100));
    FakeClient b(harness, "b", affine_trainer(0.5f, -3.0f, 300));
    a.connect();
    b.connect();
    harness.wait_idle(2);
    const std::string id_a = a.client_id;
    const std::string id_b = b.client_id;

    v1::SessionConfig config = session_config(2, 2);
    config.set_validate(true);
    config.set_settings_json(R"({"epochs": 3})");
    v1::StartSessionResponse started = harness.start(config);
    REQUIRE(started.ack().accepted());
    REQUIRE(harness.wait_session_end().session_state() == v1::SESSION_STATE_FINISHED);

    const auto sessions = harness.sessions();
    const auto rounds = harness.all_rounds();
    const auto models = harness.models();
    const auto clients = harness.clients();
    REQUIRE(sessions.size() == 1);
    REQUIRE(rounds.size() == 2);
    REQUIRE(models.size() == 3);
    REQUIRE(clients.size() == 2);
    for (const auto& round : rounds) {
        REQUIRE(round.updates_size() == 2);
        REQUIRE(round.validations_size() == 2);
    }
    CHECK(client_info(clients, id_a).rounds_contributed() == 2);
    CHECK(client_info(clients, id_b).examples_contributed() == 600);

    // The clients are still connected: the shutdown ends their streams.
    harness.restart();
    CHECK(a.wait_ended());
    CHECK(b.wait_ended());

    const auto sessions_after = harness.sessions();
    REQUIRE(sessions_after.size() == sessions.size());
    for (std::size_t i = 0; i < sessions.size(); ++i) {
        CHECK(describe(sessions_after[i]) == describe(sessions[i]));
    }
    CHECK(sessions_after[0].state() == v1::SESSION_STATE_FINISHED);
    CHECK(sessions_after[0].config().settings_json() == R"({"epochs": 3})");

    // Every round with its updates (examples, metadata), validations and models.
    const auto rounds_after = harness.all_rounds();
    REQUIRE(rounds_after.size() == rounds.size());
    for (std::size_t i = 0; i < rounds.size(); ++i) {
        CHECK(describe(rounds_after[i]) == describe(rounds[i]));
    }
    CHECK(rounds_after[0].updates(0).metadata_json().find("num_examples") != std::string::npos);
    CHECK(harness.rounds().size() == 2);  // the latest session is still the default

    // Lineage: seed -> round 1 -> round 2.
    const auto models_after = harness.models();
    REQUIRE(models_after.size() == models.size());
    for (std::size_t i = 0; i < models.size(); ++i) {
        CHECK(describe(models_after[i]) == describe(models[i]));
    }
    CHECK(models_after[0].model_id() == seed);
    CHECK(models_after[2].parent_id() == models_after[1].model_id());

    // Clients are known, offline, with identity, first contact and contributions kept.
    const auto clients_after = harness.clients();
    REQUIRE(clients_after.size() == clients.size());
    for (const auto& before : clients) {
        INFO(describe(before));
        const v1::ClientInfo after = client_info(clients_after, before.client_id());
        CHECK_FALSE(after.online());
        CHECK(after.name() == before.name());
        CHECK(after.version() == before.version());
        CHECK(after.first_seen_unix_ms() == before.first_seen_unix_ms());
        CHECK(after.first_seen_unix_ms() > 0);
        CHECK(after.last_seen_unix_ms() >= before.last_seen_unix_ms());
        CHECK(after.rounds_contributed() == before.rounds_contributed());
        CHECK(after.examples_contributed() == before.examples_contributed());
        CHECK(after.consecutive_failures() == 0);
        CHECK_FALSE(after.skipped());
    }

    // No session runs: the status shows the finished one, nobody online.
    v1::StatusResponse status = harness.status();
    CHECK(status.session_id() == started.session_id());
    CHECK(status.session_state() == v1::SESSION_STATE_FINISHED);
    CHECK(status.message() == sessions[0].message());
    CHECK_THAT(status.message(), Catch::Contains("finished: 2 rounds"));
    CHECK(status.clients_online() == 0);
    CHECK(status.clients_known() == 2);
    CHECK(status.latest_model_id() == rounds[1].output_model_id());
    CHECK(describe(status.session()) == describe(sessions[0]));
    CHECK(describe(status.round()) == describe(rounds[1]));
    CHECK(harness.fetch_model("latest").size() == 2);

    // The clients come back with their ids; a new session starts from the latest model.
    a.connect(id_a);
    b.connect(id_b);
    CHECK(a.client_id == id_a);
    harness.wait_idle(2);
    CHECK(harness.clients().size() == 2);
    CHECK(client_info(harness.clients(), id_a).first_seen_unix_ms() ==
          client_info(clients, id_a).first_seen_unix_ms());
    v1::StartSessionResponse next = harness.start(session_config(1, 2));
    INFO(next.ack().reason());
    REQUIRE(next.ack().accepted());
    CHECK(next.session_id() != started.session_id());
    REQUIRE(harness.wait_session_end().session_state() == v1::SESSION_STATE_FINISHED);
    const auto next_rounds = harness.rounds();
    REQUIRE(next_rounds.size() == 1);
    CHECK(next_rounds[0].state() == v1::ROUND_STATE_COMMITTED);
    CHECK(next_rounds[0].input_model_id() == rounds[1].output_model_id());
    CHECK(next_rounds[0].round_id() > rounds[1].round_id());  // ids go on across restarts
    CHECK(next_rounds[0].session_round() == 1);
    CHECK(harness.sessions().size() == 2);
    CHECK(harness.sessions().at(1).config().model_id() == rounds[1].output_model_id());
    CHECK(harness.models().size() == 4);
    CHECK(a.errors().empty());
    CHECK(b.errors().empty());
}

TEST_CASE("a restart interrupts the running session; ResumeSession continues it") {
    Harness harness;
    harness.seed(make_model(1));
    std::atomic<int> trains{0};
    const FakeClient::Handler trainer = affine_trainer(1, 1, 10);
    FakeClient a(harness, "a", [&](FakeClient& client, const v1::Task& task) {
        // Round 2's first try goes unanswered: the combiner restarts while it is out.
        if (task.kind() == v1::TASK_KIND_TRAIN && ++trains == 2) return;
        trainer(client, task);
    });
    a.connect();
    const std::string id_a = a.client_id;
    harness.wait_idle(1);
    v1::StartSessionResponse started = harness.start(session_config(3, 1, 60000));
    REQUIRE(started.ack().accepted());
    const auto tasks = a.wait_tasks(2);
    REQUIRE(tasks.size() == 2);
    const auto before = harness.rounds();
    REQUIRE(before.size() == 2);
    CHECK(before[0].state() == v1::ROUND_STATE_COMMITTED);
    CHECK(before[1].state() == v1::ROUND_STATE_OPEN);
    CHECK(tasks[1].round_id() == before[1].round_id());

    harness.restart();
    REQUIRE(a.wait_ended());
    // The shutdown withdrew the open task (the stream has ended: what came is all there is).
    // BUG (reported to the lead), flaky, about 1 run in 30: CombinerCore::shutdown() calls
    // Connection::cancel() (TryCancel) on every stream right after the runner queued its
    // CancelTask messages, without letting the writer threads drain their queues first, so
    // the CancelTask is sometimes never written.
    const auto cancels = a.wait_cancels(0);
    CHECK(cancels.size() == 1);
    if (!cancels.empty()) CHECK(cancels[0].task_id() == tasks[1].task_id());

    auto sessions = harness.sessions();
    REQUIRE(sessions.size() == 1);
    CHECK(sessions[0].session_id() == started.session_id());
    CHECK(sessions[0].state() == v1::SESSION_STATE_INTERRUPTED);
    CHECK_THAT(sessions[0].message(), Catch::Contains("interrupted after 1 of 3 rounds"));
    CHECK(sessions[0].rounds_committed() == 1);
    CHECK(sessions[0].latest_model_id() == before[0].output_model_id());
    CHECK(sessions[0].ended_unix_ms() > 0);
    v1::StatusResponse status = harness.status();
    CHECK(status.session_state() == v1::SESSION_STATE_INTERRUPTED);
    CHECK(status.message() == sessions[0].message());
    const auto after = harness.rounds();
    REQUIRE(after.size() == 2);
    CHECK(describe(after[0]) == describe(before[0]));
    CHECK(after[1].round_id() == before[1].round_id());
    CHECK(after[1].state() == v1::ROUND_STATE_FAILED);
    CHECK(after[1].output_model_id().empty());
    CHECK(after[1].closed_unix_ms() > 0);
    // BUG (reported to the lead): on a clean shutdown the runner closes the open round with
    // "session stopped by the operator" (session.cpp, run_round: the stop_requested branch
    // that shutdown() also takes), although no operator stopped it; the reason should say
    // that the combiner stopped, like the one load_state() gives an OPEN round.
    CHECK_THAT(after[1].reason(), Catch::Contains("combiner"));
    CHECK_FALSE(harness.clients().at(0).online());

    // Resumed while the client is still away: it waits for it, as the same session.
    v1::StartSessionResponse resumed = harness.resume();
    INFO(resumed.ack().reason());
    REQUIRE(resumed.ack().accepted());
    CHECK(resumed.session_id() == started.session_id());
    REQUIRE(eventually([&] { return harness.rounds().size() == 3; }));
    status = harness.status();
    CHECK(status.session_id() == started.session_id());
    CHECK(status.session_state() == v1::SESSION_STATE_RUNNING);
    CHECK(status.session().state() == v1::SESSION_STATE_RUNNING);
    CHECK(status.session().ended_unix_ms() == 0);
    CHECK(status.round().session_round() == 2);
    CHECK(status.round().attempt() == 2);
    CHECK(harness.sessions().size() == 1);
    v1::StartSessionResponse twice = harness.resume();
    CHECK_FALSE(twice.ack().accepted());
    CHECK_THAT(twice.ack().reason(), Catch::Contains("is running"));

    a.connect(id_a);
    REQUIRE(harness.wait_session_end().session_state() == v1::SESSION_STATE_FINISHED);
    auto rounds = harness.rounds();
    REQUIRE(rounds.size() == 4);
    const v1::RoundInfo& retried = rounds[2];
    CHECK(retried.state() == v1::ROUND_STATE_COMMITTED);
    CHECK(retried.session_round() == 2);
    CHECK(retried.attempt() == 2);
    CHECK(retried.input_model_id() == before[0].output_model_id());
    CHECK(retried.round_id() > before[1].round_id());
    CHECK(rounds[3].session_round() == 3);
    CHECK(rounds[3].attempt() == 1);
    CHECK(rounds[3].input_model_id() == retried.output_model_id());
    const auto all_tasks = a.wait_tasks(4);
    REQUIRE(all_tasks.size() == 4);
    CHECK(all_tasks[2].session_id() == started.session_id());
    CHECK(all_tasks[2].round_id() == retried.round_id());
    CHECK(all_tasks[2].model_id() == before[0].output_model_id());

    auto check_rounds = [&](std::uint32_t expected_committed) {
        std::map<std::uint32_t, int> committed;
        std::set<std::uint64_t> ids;
        for (const auto& round : harness.rounds()) {
            INFO(describe(round));
            CHECK(round.session_id() == started.session_id());
            CHECK(ids.insert(round.round_id()).second);
            if (round.state() == v1::ROUND_STATE_COMMITTED) ++committed[round.session_round()];
        }
        CHECK(committed.size() == expected_committed);
        for (std::uint32_t n = 1; n <= expected_committed; ++n) CHECK(committed[n] == 1);
    };
    check_rounds(3);
    sessions = harness.sessions();
    REQUIRE(sessions.size() == 1);
    CHECK(sessions[0].state() == v1::SESSION_STATE_FINISHED);
    CHECK(sessions[0].rounds_committed() == 3);
    CHECK(sessions[0].latest_model_id() == rounds[3].output_model_id());

    // A finished session runs more rounds only when asked for a number.
    v1::StartSessionResponse refused = harness.resume(started.session_id());
    CHECK_FALSE(refused.ack().accepted());
    CHECK_THAT(refused.ack().reason(), Catch::Contains("has run all its 3 rounds"));
    CHECK(harness.status().session_state() == v1::SESSION_STATE_FINISHED);
    v1::StartSessionResponse more = harness.resume(started.session_id().substr(0, 6), 1);
    INFO(more.ack().reason());
    REQUIRE(more.ack().accepted());
    CHECK(more.session_id() == started.session_id());
    REQUIRE(harness.wait_session_end().session_state() == v1::SESSION_STATE_FINISHED);
    rounds = harness.rounds();
    REQUIRE(rounds.size() == 5);
    CHECK(rounds[4].state() == v1::ROUND_STATE_COMMITTED);
    CHECK(rounds[4].session_round() == 4);
    CHECK(rounds[4].attempt() == 1);
    CHECK(rounds[4].input_model_id() == rounds[3].output_model_id());
    check_rounds(4);
    sessions = harness.sessions();
    CHECK(sessions.at(0).rounds_committed() == 4);
    CHECK(sessions.at(0).config().rounds() == 4);
    CHECK(a.errors().empty());

    a.disconnect();
    harness.stop();
    const auto problems = fedcli::combiner::check_data_dir(harness.data_dir());
    INFO(join_lines(problems));
    CHECK(problems.empty());
}

TEST_CASE("after a crash the open round fails and the running session is INTERRUPTED") {
    Harness harness;
    harness.seed(make_model(1));
    FakeClient a(harness, "a");  // takes its task, never answers
    a.connect();
    const std::string id_a = a.client_id;
    harness.wait_idle(1);
    v1::StartSessionResponse started = harness.start(session_config(2, 1, 60000));
    REQUIRE(started.ack().accepted());
    REQUIRE(a.wait_tasks(1).size() == 1);
    const v1::SessionInfo running = harness.sessions().at(0);
    const v1::RoundInfo open = harness.rounds().at(0);
    REQUIRE(running.state() == v1::SESSION_STATE_RUNNING);
    REQUIRE(open.state() == v1::ROUND_STATE_OPEN);
    a.disconnect();
    harness.stop();
    // What a crash leaves behind: the session and its round as they were written while the
    // round was open (the clean shutdown above closed them; put them back).
    {
        fedcli::combiner::Database db(harness.data_dir() / "state.db");
        db.save_session(running);
        db.save_round(open);
        db.flush();
    }
    harness.restart();

    auto sessions = harness.sessions();
    REQUIRE(sessions.size() == 1);
    CHECK(sessions[0].session_id() == started.session_id());
    CHECK(sessions[0].state() == v1::SESSION_STATE_INTERRUPTED);
    CHECK_THAT(sessions[0].message(),
               Catch::Contains("interrupted after 0 of 2 rounds (the combiner stopped)"));
    CHECK(sessions[0].ended_unix_ms() > 0);
    auto rounds = harness.rounds();
    REQUIRE(rounds.size() == 1);
    CHECK(rounds[0].round_id() == open.round_id());
    CHECK(rounds[0].state() == v1::ROUND_STATE_FAILED);
    CHECK(rounds[0].reason() == "the combiner stopped while the round was open");
    CHECK(rounds[0].closed_unix_ms() > 0);
    CHECK(harness.status().session_state() == v1::SESSION_STATE_INTERRUPTED);

    // Resumed, the round is tried again under a new id.
    a.connect(id_a);
    REQUIRE(harness.resume().ack().accepted());
    REQUIRE(a.wait_tasks(2).size() == 2);
    rounds = harness.rounds();
    REQUIRE(rounds.size() == 2);
    CHECK(rounds[1].round_id() > open.round_id());
    CHECK(rounds[1].session_round() == 1);
    CHECK(rounds[1].attempt() == 2);
    CHECK(rounds[1].input_model_id() == open.input_model_id());
    CHECK(harness.stop_session(true).accepted());
}

TEST_CASE(
    "StopSession without now lets the round in progress finish; before its tasks, it "
    "ends at once") {
    Harness harness;
    harness.seed(make_model(1));
    FakeClient a(harness, "a");  // answers only when the test does
    a.connect();
    harness.wait_idle(1);

    SECTION("tasks out: the round commits when the client reports, then the session stops") {
        v1::StartSessionResponse started = harness.start(session_config(3, 1, 60000));
        REQUIRE(started.ack().accepted());
        const v1::Task task = a.wait_tasks(1).at(0);
        v1::Ack ack = harness.stop_session(false);
        INFO(ack.reason());
        CHECK(ack.accepted());
        CHECK_THAT(ack.reason(),
                   Catch::Contains("stops after round " + std::to_string(task.round_id())));
        CHECK(harness.status().session_state() == v1::SESSION_STATE_RUNNING);
        CHECK(harness.rounds().at(0).state() == v1::ROUND_STATE_OPEN);

        v1::Ack report = a.report(task, make_model(2), R"({"num_examples": 4})");
        CHECK(report.accepted());
        a.task_status(task.task_id(), v1::TASK_STATE_SUCCEEDED);
        v1::StatusResponse status = harness.wait_session_end();
        CHECK(status.session_state() == v1::SESSION_STATE_STOPPED);
        CHECK_THAT(status.message(),
                   Catch::Contains("stopped by the operator after 1 committed round;"));
        auto rounds = harness.rounds();
        REQUIRE(rounds.size() == 1);
        CHECK(rounds[0].state() == v1::ROUND_STATE_COMMITTED);
        CHECK(rounds[0].updates_accepted() == 1);
        CHECK(status.latest_model_id() == rounds[0].output_model_id());
        auto sessions = harness.sessions();
        REQUIRE(sessions.size() == 1);
        CHECK(sessions[0].state() == v1::SESSION_STATE_STOPPED);
        CHECK(sessions[0].rounds_committed() == 1);
        CHECK(a.wait_tasks(0).size() == 1);  // no second round began
        CHECK(a.wait_cancels(0).empty());
        CHECK(flatten(harness.fetch_model("latest")) == flatten(make_model(2)));
    }
    SECTION("waiting for clients, no task sent: it ends at once") {
        v1::StartSessionResponse started = harness.start(session_config(3, 2, 60000));
        REQUIRE(started.ack().accepted());
        REQUIRE(
            eventually([&] { return harness.status().round().state() == v1::ROUND_STATE_OPEN; }));
        const auto began = Clock::now();
        v1::Ack ack = harness.stop_session(false);
        INFO(ack.reason());
        CHECK(ack.accepted());
        CHECK(Clock::now() - began < 10s);
        v1::StatusResponse status = harness.status();
        CHECK(status.session_state() == v1::SESSION_STATE_STOPPED);
        CHECK_THAT(status.message(),
                   Catch::Contains("stopped by the operator after 0 committed rounds"));
        auto rounds = harness.rounds();
        REQUIRE(rounds.size() == 1);
        CHECK(rounds[0].state() == v1::ROUND_STATE_FAILED);
        CHECK(rounds[0].reason() == "session stopped by the operator before the round began");
        CHECK(a.wait_tasks(0).empty());
    }
}

TEST_CASE("buffer_size closes the round after K accepted updates and cancels the rest") {
    Harness harness;
    const npz::ParameterSet seed_model = make_model(1);
    harness.seed(seed_model);
    FakeClient a(harness, "a", affine_trainer(1, 1, 10));
    FakeClient b(harness, "b", affine_trainer(1, 3, 30));
    FakeClient slow(harness, "slow");  // takes its task, never answers
    a.connect();
    b.connect();
    slow.connect();
    harness.wait_idle(3);

    v1::SessionConfig config = session_config(1, 1, 60000);
    config.set_buffer_size(2);
    REQUIRE(harness.start(config).ack().accepted());
    // Well before the 60 s round timeout.
    v1::StatusResponse status = harness.wait_session_end();
    CHECK(status.session_state() == v1::SESSION_STATE_FINISHED);
    auto rounds = harness.rounds();
    REQUIRE(rounds.size() == 1);
    CHECK(rounds[0].state() == v1::ROUND_STATE_COMMITTED);
    CHECK(rounds[0].clients_selected() == 3);
    CHECK(rounds[0].updates_accepted() == 2);
    REQUIRE(rounds[0].updates_size() == 2);
    std::set<std::string> contributors;
    for (const auto& update : rounds[0].updates()) contributors.insert(update.client_id());
    CHECK(contributors == std::set<std::string>{a.client_id, b.client_id});
    CHECK(rounds[0].rejected_size() == 0);

    const auto cancels = slow.wait_cancels(1);
    REQUIRE(cancels.size() == 1);
    CHECK(cancels[0].task_id() == slow.wait_tasks(1).at(0).task_id());
    CHECK_THAT(cancels[0].reason(), Catch::Contains("buffer of 2 updates is full"));
    CHECK(a.wait_cancels(0).empty());
    CHECK(b.wait_cancels(0).empty());
    v1::Ack late = slow.report(slow.wait_tasks(1).at(0), make_model(1), R"({"num_examples": 5})");
    CHECK(late.code() == v1::ACK_CODE_STALE_ROUND);
    CHECK(harness.rounds().at(0).updates_accepted() == 2);
    // Cut off by a full buffer is not a failure of the client.
    CHECK(client_info(harness.clients(), slow.client_id).consecutive_failures() == 0);

    std::vector<float> expected = flatten(seed_model);
    for (float& x : expected) x = static_cast<float>((10.0 * (x + 1) + 30.0 * (x + 3)) / 40.0);
    std::vector<float> actual = flatten(harness.fetch_model("latest"));
    REQUIRE(actual.size() == expected.size());
    for (std::size_t i = 0; i < actual.size(); ++i) {
        CHECK(actual[i] == Approx(expected[i]).epsilon(1e-6));
    }
}

TEST_CASE("max_round_retries tries a failed round again as the same session round") {
    Harness harness;
    harness.seed(make_model(1));
    std::atomic<int> failures_left{0};
    const FakeClient::Handler trainer = affine_trainer(1, 3, 30);
    FakeClient a(harness, "a", affine_trainer(1, 1, 10));
    FakeClient b(harness, "b", [&](FakeClient& client, const v1::Task& task) {
        if (task.kind() == v1::TASK_KIND_TRAIN && failures_left-- > 0) {
            client.task_status(task.task_id(), v1::TASK_STATE_FAILED,
                               "exited with code 1: diverged", 1);
            return;
        }
        trainer(client, task);
    });
    v1::SessionConfig config = session_config(1, 2, 20000);
    config.set_max_round_retries(1);

    SECTION("every try fails: the session fails after the retry") {
        failures_left = 1000;
        a.connect();
        b.connect();
        harness.wait_idle(2);
        REQUIRE(harness.start(config).ack().accepted());
        v1::StatusResponse status = harness.wait_session_end();
        CHECK(status.session_state() == v1::SESSION_STATE_FAILED);
        auto rounds = harness.rounds();
        REQUIRE(rounds.size() == 2);
        for (std::size_t i = 0; i < rounds.size(); ++i) {
            INFO(describe(rounds[i]));
            CHECK(rounds[i].state() == v1::ROUND_STATE_FAILED);
            CHECK(rounds[i].session_round() == 1);
            CHECK(rounds[i].attempt() == i + 1);
            CHECK(rounds[i].reason() ==
                  "1 update accepted, 2 required; rejected: 'b': train failed: exited with "
                  "code 1: diverged");
        }
        CHECK(rounds[1].round_id() == rounds[0].round_id() + 1);
        CHECK_THAT(status.message(),
                   Catch::Contains("round " + std::to_string(rounds[1].round_id()) +
                                   " failed: " + rounds[1].reason()));
        CHECK(harness.sessions().at(0).rounds_committed() == 0);
        CHECK(a.wait_tasks(2).size() == 2);
        CHECK(b.wait_tasks(2).size() == 2);
    }
    SECTION("the retry succeeds: the session finishes") {
        failures_left = 1;
        a.connect();
        b.connect();
        harness.wait_idle(2);
        REQUIRE(harness.start(config).ack().accepted());
        v1::StatusResponse status = harness.wait_session_end();
        CHECK(status.session_state() == v1::SESSION_STATE_FINISHED);
        auto rounds = harness.rounds();
        REQUIRE(rounds.size() == 2);
        CHECK(rounds[0].state() == v1::ROUND_STATE_FAILED);
        CHECK(rounds[0].session_round() == 1);
        CHECK(rounds[0].attempt() == 1);
        CHECK(rounds[1].state() == v1::ROUND_STATE_COMMITTED);
        CHECK(rounds[1].session_round() == 1);
        CHECK(rounds[1].attempt() == 2);
        CHECK(rounds[1].updates_accepted() == 2);
        CHECK(rounds[1].input_model_id() == rounds[0].input_model_id());
        CHECK(harness.sessions().at(0).rounds_committed() == 1);
    }
    CHECK(a.errors().empty());
    CHECK(b.errors().empty());
}

TEST_CASE("max_client_failures skips a failing client for the session until it reconnects") {
    Harness harness;
    harness.seed(make_model(1));
    bool fail = true;  // set before the clients connect
    FakeClient a(harness, "a", affine_trainer(1, 1, 10));
    FakeClient b(harness, "b", [&fail](FakeClient& client, const v1::Task& task) {
        if (fail) client.task_status(task.task_id(), v1::TASK_STATE_FAILED, "boom", 2);
        // else: no answer at all
    });
    std::uint64_t timeout_ms = 20000;
    SECTION("a failed train task") {
        fail = true;
    }
    SECTION("no answer by the round timeout") {
        fail = false;
        timeout_ms = 1500;
    }
    a.connect();
    b.connect();
    harness.wait_idle(2);
    v1::SessionConfig config = session_config(2, 1, timeout_ms);
    config.set_max_client_failures(1);
    REQUIRE(harness.start(config).ack().accepted());
    v1::StatusResponse status = harness.wait_session_end();
    CHECK(status.session_state() == v1::SESSION_STATE_FINISHED);

    auto rounds = harness.rounds();
    REQUIRE(rounds.size() == 2);
    CHECK(rounds[0].state() == v1::ROUND_STATE_COMMITTED);
    CHECK(rounds[0].clients_selected() == 2);
    CHECK(rounds[0].updates_accepted() == 1);
    CHECK(rounds[1].state() == v1::ROUND_STATE_COMMITTED);
    CHECK(rounds[1].clients_selected() == 1);
    REQUIRE(rounds[1].updates_size() == 1);
    CHECK(rounds[1].updates(0).client_id() == a.client_id);
    const auto tasks_a = a.wait_tasks(2);
    REQUIRE(tasks_a.size() == 2);
    CHECK(tasks_a[1].round_id() == rounds[1].round_id());
    const auto tasks_b = b.wait_tasks(1);
    REQUIRE(tasks_b.size() == 1);  // nothing in round 2
    CHECK(tasks_b[0].round_id() == rounds[0].round_id());

    auto clients = harness.clients();
    v1::ClientInfo info_b = client_info(clients, b.client_id);
    CHECK(info_b.consecutive_failures() == 1);
    CHECK(info_b.skipped());
    v1::ClientInfo info_a = client_info(clients, a.client_id);
    CHECK(info_a.consecutive_failures() == 0);
    CHECK_FALSE(info_a.skipped());

    // A reconnect is a fresh start.
    const std::string id_b = b.client_id;
    b.disconnect();
    REQUIRE(eventually([&] { return !client_info(harness.clients(), id_b).online(); }));
    b.connect(id_b);
    info_b = client_info(harness.clients(), id_b);
    CHECK(info_b.online());
    CHECK(info_b.consecutive_failures() == 0);
    CHECK_FALSE(info_b.skipped());
    CHECK(harness.stop().find("failed 1 tasks in a row: not selected again") != std::string::npos);
}

TEST_CASE("clients' log lines are kept per task and served by GetLogs, also after a restart") {
    Harness harness;
    harness.seed(make_model(1));
    const FakeClient::Handler trainer = affine_trainer(1, 1, 10);
    FakeClient a(harness, "a", [&](FakeClient& client, const v1::Task& task) {
        client.log_lines(task.task_id(), v1::LOG_STREAM_STDOUT,
                         {"epoch 1: loss 0.9", "epoch 2: loss 0.5"});
        client.log_lines(task.task_id(), v1::LOG_STREAM_STDERR, {"warning: slow disk"});
        trainer(client, task);
    });
    FakeClient b(harness, "b", trainer);
    // Ids of the shape the combiner hands out (16 hex digits); a's begins with b's name.
    a.connect("b7e1c0de5eed0001");
    b.connect("c0ffee0000000002");
    const std::string id_a = a.client_id;
    const std::string id_b = b.client_id;
    REQUIRE(id_a == "b7e1c0de5eed0001");
    harness.wait_idle(2);
    v1::StartSessionResponse started = harness.start(session_config(1, 2));
    REQUIRE(started.ack().accepted());
    REQUIRE(harness.wait_session_end().session_state() == v1::SESSION_STATE_FINISHED);
    const v1::RoundInfo round = harness.rounds().at(0);
    const v1::Task task_a = a.wait_tasks(1).at(0);
    const v1::Task task_b = b.wait_tasks(1).at(0);

    // The lines travel on the stream, the report on a call of its own: wait for them.
    Harness::LogsCall call;
    REQUIRE(eventually([&] {
        call = harness.logs("a");
        return call.entries.size() >= 3;
    }));
    CHECK(call.status.ok());
    REQUIRE(call.entries.size() == 3);
    const std::vector<std::string> lines = {"epoch 1: loss 0.9", "epoch 2: loss 0.5",
                                            "warning: slow disk"};
    const std::vector<v1::LogStream> streams = {v1::LOG_STREAM_STDOUT, v1::LOG_STREAM_STDOUT,
                                                v1::LOG_STREAM_STDERR};
    for (std::size_t i = 0; i < 3; ++i) {
        const v1::LogEntry& entry = call.entries[i];
        INFO(describe(entry));
        CHECK(entry.line() == lines[i]);
        CHECK(entry.stream() == streams[i]);
        CHECK(entry.client_id() == id_a);
        CHECK(entry.client_name() == "a");
        CHECK(entry.task_id() == task_a.task_id());
        CHECK(entry.round_id() == round.round_id());
        CHECK(entry.session_id() == started.session_id());
        CHECK(entry.kind() == v1::TASK_KIND_TRAIN);
        CHECK(entry.unix_ms() > 0);
        if (i > 0) CHECK(entry.sequence() > call.entries[i - 1].sequence());
    }
    CHECK(harness.logs(id_a.substr(0, 6)).entries.size() == 3);  // an id prefix works too

    Harness::LogsCall of_b = harness.logs("b");
    CHECK(of_b.status.ok());
    // BUG (reported to the lead): the lines of client 'a' come back for client 'b' because
    // a's id begins with "b": CombinerCore::get_logs (logs.cpp) takes every client whose name
    // equals the argument OR whose id begins with it, so a short name that is also a hex
    // prefix of another client's id (1 in 16 for one-letter names) picks up that client too.
    // An exact name match should win over id prefixes.
    CHECK(of_b.entries.empty());
    Harness::LogsCall unknown = harness.logs("nobody");
    CHECK(unknown.status.error_code() == grpc::StatusCode::NOT_FOUND);
    CHECK_THAT(unknown.status.error_message(), Catch::Contains("no client named 'nobody'"));
    CHECK(
        std::regex_search(unknown.status.error_message(), std::regex(R"(\(known: (a, b|b, a)\))")));

    v1::GetLogsRequest request;
    request.set_client("a");
    request.set_tail(1);
    Harness::LogsCall tail = harness.logs(request);
    REQUIRE(tail.entries.size() == 1);
    CHECK(tail.entries[0].line() == "warning: slow disk");
    request.set_tail(0);
    request.set_round_id(round.round_id());
    CHECK(harness.logs(request).entries.size() == 3);
    request.set_round_id(round.round_id() + 1);
    CHECK(harness.logs(request).entries.empty());
    request.set_round_id(0);
    request.set_session_id(started.session_id());
    CHECK(harness.logs(request).entries.size() == 3);

    // Lines for a task the client was not given are dropped. One stream keeps its order:
    // once the line sent after them is stored, they were handled.
    a.log_lines("no-such-task", v1::LOG_STREAM_STDOUT, {"dropped: unknown task"});
    a.log_lines(task_b.task_id(), v1::LOG_STREAM_STDOUT, {"dropped: b's task"});
    a.log_lines(task_a.task_id(), v1::LOG_STREAM_STDOUT, {"after the dropped ones"});
    REQUIRE(eventually([&] {
        call = harness.logs("");
        return !call.entries.empty() && call.entries.back().line() == "after the dropped ones";
    }));
    REQUIRE(call.entries.size() == 4);
    for (const auto& entry : call.entries) {
        CHECK(entry.client_id() == id_a);
        CHECK_THAT(entry.line(), !Catch::StartsWith("dropped:"));
    }

    // follow: the stream stays open and brings a line sent after the call began.
    {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + 20s);
        v1::GetLogsRequest follow;
        follow.set_client("a");
        follow.set_follow(true);
        auto reader = harness.control->GetLogs(&context, follow);
        std::mutex mutex;
        std::vector<v1::LogEntry> seen;
        std::thread follower([&] {
            v1::LogBatch batch;
            while (reader->Read(&batch)) {
                std::lock_guard lock(mutex);
                for (const auto& entry : batch.entries()) seen.push_back(entry);
            }
        });
        auto count = [&] {
            std::lock_guard lock(mutex);
            return seen.size();
        };
        const bool stored_first = eventually([&] { return count() >= 4; });
        a.log_lines(task_a.task_id(), v1::LOG_STREAM_STDERR, {"followed line"});
        const bool followed = eventually([&] { return count() >= 5; });
        context.TryCancel();
        follower.join();
        reader->Finish();
        CHECK(stored_first);
        REQUIRE(followed);
        REQUIRE(seen.size() == 5);
        CHECK(seen[4].line() == "followed line");
        CHECK(seen[4].stream() == v1::LOG_STREAM_STDERR);
        CHECK(seen[4].task_id() == task_a.task_id());
    }

    // The lines are in the state database: a restarted combiner serves them.
    const std::vector<v1::LogEntry> stored = harness.logs("").entries;
    REQUIRE(stored.size() == 5);
    harness.restart();
    Harness::LogsCall restored = harness.logs("a");
    CHECK(restored.status.ok());
    REQUIRE(restored.entries.size() == stored.size());
    for (std::size_t i = 0; i < stored.size(); ++i) {
        CHECK(describe(restored.entries[i]) == describe(stored[i]));
    }
    // New lines go on numbering after the stored ones.
    a.connect(id_a);
    b.connect(id_b);
    harness.wait_idle(2);
    REQUIRE(harness.start(session_config(1, 2)).ack().accepted());
    REQUIRE(harness.wait_session_end().session_state() == v1::SESSION_STATE_FINISHED);
    const std::uint64_t second_round = harness.rounds().at(0).round_id();
    REQUIRE(eventually([&] {
        call = harness.logs("a");
        return call.entries.size() >= 8;
    }));
    REQUIRE(call.entries.size() == 8);
    for (std::size_t i = 5; i < 8; ++i) {
        CHECK(call.entries[i].sequence() > stored.back().sequence());
        CHECK(call.entries[i].round_id() == second_round);
    }
    CHECK(a.errors().empty());
}

TEST_CASE("ListClients counts each client's contributions to committed rounds") {
    Harness harness;
    harness.seed(make_model(1));
    std::atomic<int> c_trains{0};
    const FakeClient::Handler c_trainer = affine_trainer(1, 2, 50);
    FakeClient a(harness, "a", affine_trainer(1, 1, 100));
    FakeClient b(harness, "b", affine_trainer(1, 3, 300));
    FakeClient c(harness, "c", [&](FakeClient& client, const v1::Task& task) {
        if (++c_trains == 1) {  // its first round's task fails
            client.task_status(task.task_id(), v1::TASK_STATE_FAILED, "out of memory", 137);
            return;
        }
        c_trainer(client, task);
    });
    a.connect();
    b.connect();
    c.connect();
    harness.wait_idle(3);
    for (const auto& client : harness.clients()) {
        CHECK(client.rounds_contributed() == 0);
        CHECK(client.examples_contributed() == 0);
        CHECK(client.first_seen_unix_ms() > 0);
        CHECK(client.first_seen_unix_ms() <= client.last_seen_unix_ms());
    }
    REQUIRE(harness.start(session_config(2, 1)).ack().accepted());
    REQUIRE(harness.wait_session_end().session_state() == v1::SESSION_STATE_FINISHED);
    auto rounds = harness.rounds();
    REQUIRE(rounds.size() == 2);
    CHECK(rounds[0].updates_accepted() == 2);
    CHECK(rounds[1].updates_accepted() == 3);

    auto clients = harness.clients();
    REQUIRE(clients.size() == 3);
    CHECK(client_info(clients, a.client_id).rounds_contributed() == 2);
    CHECK(client_info(clients, a.client_id).examples_contributed() == 200);
    CHECK(client_info(clients, b.client_id).rounds_contributed() == 2);
    CHECK(client_info(clients, b.client_id).examples_contributed() == 600);
    CHECK(client_info(clients, c.client_id).rounds_contributed() == 1);
    CHECK(client_info(clients, c.client_id).examples_contributed() == 50);
    // Its success in round 2 ended c's failure streak.
    CHECK(client_info(clients, c.client_id).consecutive_failures() == 0);
}

TEST_CASE("check_data_dir finds a finished session's folder consistent and names a lost model") {
    Harness harness;
    harness.seed(make_model(1));
    FakeClient a(harness, "a", affine_trainer(1, 1, 10));
    a.connect();
    harness.wait_idle(1);
    REQUIRE(harness.start(session_config(2, 1)).ack().accepted());
    REQUIRE(harness.wait_session_end().session_state() == v1::SESSION_STATE_FINISHED);
    const auto rounds = harness.rounds();
    REQUIRE(rounds.size() == 2);
    a.disconnect();
    harness.stop();

    auto problems = fedcli::combiner::check_data_dir(harness.data_dir());
    {
        INFO(join_lines(problems));
        CHECK(problems.empty());
    }
    const std::string lost = rounds[0].output_model_id();
    REQUIRE(fs::remove(harness.data_dir() / "models" / (lost + ".npz")));
    problems = fedcli::combiner::check_data_dir(harness.data_dir());
    INFO(join_lines(problems));
    REQUIRE_FALSE(problems.empty());
    for (const auto& problem : problems) CHECK_THAT(problem, Catch::Contains(lost));
    CHECK(std::any_of(problems.begin(), problems.end(), [&](const std::string& problem) {
        return problem.find("models/" + lost + ".npz is missing") != std::string::npos;
    }));
}

// ---------------------------------------------------------------------------------------
// Access tokens and roles (docs/security.md)

namespace {

/// A combiner with authentication on, and stubs that present a given token.
class SecuredCombiner {
  public:
    explicit SecuredCombiner(
        const std::function<void(fedcli::combiner::Options&)>& configure = {}) {
        options.port = 0;
        options.data_dir = dir / "data";
        options.log = &log;
        if (configure) configure(options);
        combiner = std::make_unique<fedcli::combiner::Combiner>(options);
        combiner->start();
        admin_token = fedcli::test::read_file(options.data_dir / "admin.token");
        while (!admin_token.empty() && admin_token.back() == '\n') admin_token.pop_back();
    }
    ~SecuredCombiner() { combiner->shutdown(); }

    std::shared_ptr<grpc::Channel> channel(const std::string& token) {
        fedcli::proto::ChannelOptions channel_options;
        channel_options.token = token;
        return fedcli::proto::make_channel("127.0.0.1:" + std::to_string(combiner->port()),
                                           channel_options);
    }
    std::unique_ptr<v1::Control::Stub> control(const std::string& token) {
        return v1::Control::NewStub(channel(token));
    }
    grpc::Status get_status(const std::string& token) {
        grpc::ClientContext context;
        v1::StatusResponse response;
        return control(token)->GetStatus(&context, v1::GetStatusRequest(), &response);
    }
    std::string create_token(v1::TokenRole role, std::int64_t expires_in_ms = 0) {
        grpc::ClientContext context;
        v1::CreateTokenRequest request;
        request.set_role(role);
        request.set_expires_in_ms(expires_in_ms);
        v1::CreateTokenResponse response;
        grpc::Status status = control(admin_token)->CreateToken(&context, request, &response);
        INFO(status.error_message());
        REQUIRE(status.ok());
        return response.token();
    }

    fedcli::test::TempDir dir;
    std::ostringstream log;
    fedcli::combiner::Options options;
    std::unique_ptr<fedcli::combiner::Combiner> combiner;
    std::string admin_token;
};

/// One Connect stream with a token: Hello, then the first answer.
struct TokenStream {
    TokenStream(SecuredCombiner& server, const std::string& token, const std::string& id,
                bool heartbeat = true)
        : stub(v1::Federation::NewStub(server.channel(token))) {
        stream = stub->Connect(&context);
        v1::ClientMessage hello;
        hello.mutable_hello()->set_client_id(id);
        hello.mutable_hello()->set_name(id);
        hello.mutable_hello()->set_protocol_version(1);
        hello.mutable_hello()->add_capabilities("train");
        hello.mutable_hello()->add_capabilities("local-package");
        stream->Write(hello);
        v1::ServerMessage first;
        if (stream->Read(&first) && first.has_welcome()) {
            welcomed = true;
            client_id = first.welcome().client_id();
            if (heartbeat) {
                v1::ClientMessage beat;
                beat.mutable_heartbeat()->set_sequence(1);
                beat.mutable_heartbeat()->set_status(v1::CLIENT_STATUS_IDLE);
                stream->Write(beat);
            }
        } else {
            status = stream->Finish();
        }
    }
    ~TokenStream() {
        if (welcomed) {
            context.TryCancel();
            stream->Finish();
        }
    }
    /// The next message that is not PackageAvailable; false when the stream ended.
    bool read(v1::ServerMessage& message) {
        while (stream->Read(&message)) {
            if (!message.has_package_available()) return true;
        }
        return false;
    }

    std::unique_ptr<v1::Federation::Stub> stub;
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::ClientMessage, v1::ServerMessage>> stream;
    bool welcomed = false;
    std::string client_id;
    grpc::Status status;
};

}  // namespace

TEST_CASE("access tokens: bootstrap admin token, refusals, roles", "[combiner][auth]") {
    SecuredCombiner server;
    const fs::path token_file = server.options.data_dir / "admin.token";
    CHECK((fs::status(token_file).permissions() & fs::perms::all) ==
          (fs::perms::owner_read | fs::perms::owner_write));
    CHECK(server.admin_token.rfind("fedcli_", 0) == 0);
    CHECK(server.get_status(server.admin_token).ok());

    grpc::Status missing = server.get_status("");
    CHECK(missing.error_code() == grpc::StatusCode::UNAUTHENTICATED);
    CHECK_THAT(missing.error_message(), Catch::Contains("no access token"));
    grpc::Status wrong = server.get_status("fedcli_000000000000_" + std::string(40, '0'));
    CHECK(wrong.error_code() == grpc::StatusCode::UNAUTHENTICATED);
    CHECK_THAT(wrong.error_message(), Catch::Contains("is not valid"));

    const std::string client = server.create_token(v1::TOKEN_ROLE_CLIENT);
    grpc::Status control = server.get_status(client);
    CHECK(control.error_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK_THAT(control.error_message(), Catch::Contains("this call needs an admin token"));

    const std::string brief = server.create_token(v1::TOKEN_ROLE_ADMIN, 1);
    CHECK(eventually([&] {
        grpc::Status status = server.get_status(brief);
        return status.error_code() == grpc::StatusCode::UNAUTHENTICATED &&
               status.error_message().find("expired") != std::string::npos;
    }));

    // A restart keeps the tokens and does not make a new admin token.
    server.combiner->shutdown();
    server.combiner = std::make_unique<fedcli::combiner::Combiner>(server.options);
    server.combiner->start();
    CHECK(server.get_status(server.admin_token).ok());
    CHECK(server.get_status(client).error_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK(fedcli::test::read_file(token_file) == server.admin_token + "\n");
}

TEST_CASE("access tokens: a client token acts only as its own client", "[combiner][auth]") {
    SecuredCombiner server;
    const std::string token_a = server.create_token(v1::TOKEN_ROLE_CLIENT);
    const std::string token_b = server.create_token(v1::TOKEN_ROLE_CLIENT);

    // Seed model through the admin token, so a session can run.
    const fs::path seed = server.dir / "seed.npz";
    npz::write_npz(seed, make_model(1.0f));
    auto admin_transfer = v1::Transfer::NewStub(server.channel(server.admin_token));
    UploadCall seeded = upload(*admin_transfer, v1::TRANSFER_KIND_MODEL, seed);
    REQUIRE(seeded.status.ok());
    {
        grpc::ClientContext context;
        v1::SetSeedModelRequest request;
        request.set_model_id(seeded.result.id());
        v1::Ack ack;
        REQUIRE(server.control(server.admin_token)->SetSeedModel(&context, request, &ack).ok());
        REQUIRE(ack.accepted());
    }

    TokenStream a(server, token_a, "client-a");
    REQUIRE(a.welcomed);
    CHECK(a.client_id == "client-a");

    // Token A with another id; id A with token B.
    TokenStream a_as_b(server, token_a, "client-b");
    CHECK_FALSE(a_as_b.welcomed);
    CHECK(a_as_b.status.error_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK_THAT(a_as_b.status.error_message(),
               Catch::Contains("belongs to client id client-a; it cannot connect as client id "
                               "client-b"));
    TokenStream b_as_a(server, token_b, "client-a");
    CHECK_FALSE(b_as_a.welcomed);
    CHECK(b_as_a.status.error_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK_THAT(b_as_a.status.error_message(),
               Catch::Contains("client id client-a belongs to another token"));
    TokenStream b(server, token_b, "client-b", /*heartbeat=*/false);  // never selected
    REQUIRE(b.welcomed);

    // A session gives client A a task.
    {
        grpc::ClientContext context;
        v1::StartSessionRequest request;
        request.mutable_config()->set_rounds(1);
        request.mutable_config()->set_round_timeout_ms(20000);
        v1::StartSessionResponse response;
        REQUIRE(
            server.control(server.admin_token)->StartSession(&context, request, &response).ok());
        INFO(response.ack().reason());
        REQUIRE(response.ack().accepted());
    }
    v1::ServerMessage message;
    REQUIRE(a.read(message));
    REQUIRE(message.has_task());
    const v1::Task task = message.task();

    // Client B cannot upload for A's task, nor packages or seeds, nor report as A.
    auto transfer_b = v1::Transfer::NewStub(server.channel(token_b));
    auto upload_as = [&](const std::string& task_id, v1::TransferKind kind) {
        grpc::ClientContext context;
        v1::UploadResult result;
        auto writer = transfer_b->Upload(&context, &result);
        v1::UploadChunk chunk;
        chunk.mutable_header()->set_kind(kind);
        chunk.mutable_header()->set_size(fs::file_size(seed));
        chunk.mutable_header()->set_sha256(fedcli::util::sha256_file(seed));
        chunk.mutable_header()->set_task_id(task_id);
        writer->Write(chunk);
        writer->WritesDone();
        return writer->Finish();
    };
    grpc::Status foreign = upload_as(task.task_id(), v1::TRANSFER_KIND_MODEL);
    CHECK(foreign.error_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK_THAT(foreign.error_message(),
               Catch::Contains("task " + task.task_id() + " is not a task of client id client-b"));
    grpc::Status package = upload_as("", v1::TRANSFER_KIND_PACKAGE);
    CHECK(package.error_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK_THAT(package.error_message(), Catch::Contains("need an admin token"));

    auto federation_b = v1::Federation::NewStub(server.channel(token_b));
    {
        grpc::ClientContext context;
        v1::UpdateReport report;
        report.set_client_id("client-a");
        report.set_task_id(task.task_id());
        report.set_round_id(task.round_id());
        v1::Ack ack;
        grpc::Status status = federation_b->ReportUpdate(&context, report, &ack);
        CHECK(status.error_code() == grpc::StatusCode::PERMISSION_DENIED);
        CHECK_THAT(status.error_message(),
                   Catch::Contains("belongs to client id client-b; it cannot act for client id "
                                   "client-a"));
    }
    {
        grpc::ClientContext context;
        v1::ValidationReport report;
        report.set_client_id("client-a");
        report.set_task_id(task.task_id());
        v1::Ack ack;
        CHECK(federation_b->ReportValidation(&context, report, &ack).error_code() ==
              grpc::StatusCode::PERMISSION_DENIED);
    }
    {
        // As itself, B is told the task is not its own.
        grpc::ClientContext context;
        v1::UpdateReport report;
        report.set_client_id("client-b");
        report.set_task_id(task.task_id());
        report.set_round_id(task.round_id());
        v1::Ack ack;
        REQUIRE(federation_b->ReportUpdate(&context, report, &ack).ok());
        CHECK_FALSE(ack.accepted());
        CHECK(ack.code() == v1::ACK_CODE_UNKNOWN_TASK);
    }

    // Client A may upload and report its own update.
    auto transfer_a = v1::Transfer::NewStub(server.channel(token_a));
    UploadCall own = upload(*transfer_a, v1::TRANSFER_KIND_MODEL, seed);
    CHECK(own.status.error_code() == grpc::StatusCode::PERMISSION_DENIED);  // no task named
    {
        grpc::ClientContext context;
        v1::UploadResult result;
        auto writer = transfer_a->Upload(&context, &result);
        v1::UploadChunk chunk;
        chunk.mutable_header()->set_kind(v1::TRANSFER_KIND_MODEL);
        chunk.mutable_header()->set_size(fs::file_size(seed));
        chunk.mutable_header()->set_sha256(fedcli::util::sha256_file(seed));
        chunk.mutable_header()->set_task_id(task.task_id());
        writer->Write(chunk);
        writer->WritesDone();
        grpc::Status status = writer->Finish();  // the file is stored already
        INFO(status.error_message());
        CHECK(status.ok());
    }

    // Revoking A's token closes its stream; A's calls are refused from then on.
    grpc::ClientContext list_context;
    v1::ListTokensResponse tokens;
    REQUIRE(server.control(server.admin_token)
                ->ListTokens(&list_context, v1::ListTokensRequest(), &tokens)
                .ok());
    std::string id_a;
    for (const auto& token : tokens.tokens()) {
        if (token.client_id() == "client-a") id_a = token.token_id();
    }
    REQUIRE(token_a.find(id_a) != std::string::npos);
    {
        grpc::ClientContext context;
        v1::RevokeTokenRequest request;
        request.set_token_id(id_a);
        v1::RevokeTokenResponse response;
        REQUIRE(server.control(server.admin_token)->RevokeToken(&context, request, &response).ok());
        CHECK(response.info().revoked_unix_ms() > 0);
    }
    while (a.read(message)) {
    }  // the stream ends (CancelTask or other messages may come first)
    a.welcomed = false;
    CHECK(a.stream->Finish().error_code() == grpc::StatusCode::CANCELLED);
    TokenStream again(server, token_a, "client-a");
    CHECK_FALSE(again.welcomed);
    CHECK(again.status.error_code() == grpc::StatusCode::UNAUTHENTICATED);
    CHECK_THAT(again.status.error_message(), Catch::Contains("was revoked"));
}

TEST_CASE("limits: a client token has at most max_transfers_per_client transfers open",
          "[combiner][limits]") {
    SecuredCombiner server(
        [](fedcli::combiner::Options& options) { options.max_transfers_per_client = 1; });
    const std::string token = server.create_token(v1::TOKEN_ROLE_CLIENT);
    TokenStream client(server, token, "client-a");
    REQUIRE(client.welcomed);
    // 32 MiB: far more than the stream's flow-control window, so a download that is not
    // read stays open on the server.
    const fs::path big = server.dir / "big.bin";
    {
        std::ofstream stream(big, std::ios::binary);
        const std::string block(1 << 20, 'x');
        for (int i = 0; i < 32; ++i) stream << block;
    }
    auto admin_transfer = v1::Transfer::NewStub(server.channel(server.admin_token));
    UploadCall stored = upload(*admin_transfer, v1::TRANSFER_KIND_MODEL, big);
    REQUIRE(stored.status.ok());

    auto transfer = v1::Transfer::NewStub(server.channel(token));
    v1::DownloadRequest request;
    request.set_kind(v1::TRANSFER_KIND_MODEL);
    request.set_id(stored.result.id());
    auto download = [&](v1::Transfer::Stub& stub) {
        grpc::ClientContext context;
        auto reader = stub.Download(&context, request);
        v1::DownloadChunk chunk;
        while (reader->Read(&chunk)) {
        }
        return reader->Finish();
    };

    // A download that has sent its first chunk holds the client's only slot.
    grpc::ClientContext held_context;
    auto held = transfer->Download(&held_context, request);
    v1::DownloadChunk chunk;
    REQUIRE(held->Read(&chunk));
    grpc::Status refused = download(*transfer);
    REQUIRE(refused.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
    CHECK_THAT(refused.error_message(), Catch::Contains("--max-transfers-per-client"));
    // The admin is not counted.
    CHECK(download(*admin_transfer).ok());

    // Once the held download is read to its end the slot is free again (the server gives
    // it back before it sends the call's status).
    while (held->Read(&chunk)) {
    }
    REQUIRE(held->Finish().ok());
    CHECK(download(*transfer).ok());
}
