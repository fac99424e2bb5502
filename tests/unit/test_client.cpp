// client/ and core/proto/rpc: the transfer helpers and the client daemon, against small
// in-process Federation and Transfer services that record what the client sends and let a
// test inject faults (broken streams, a stale resume offset, a server that goes away).
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <streambuf>
#include <string>
#include <thread>
#include <vector>

#include "client/client.hpp"
#include "combiner/combiner.hpp"
#include "core/dispatch/dispatch.hpp"
#include "core/error.hpp"
#include "core/package/package.hpp"
#include "core/project/project.hpp"
#include "core/proto/fedcli.grpc.pb.h"
#include "core/proto/rpc.hpp"
#include "core/proto/transfer.hpp"
#include "core/util/sha256.hpp"
#include "templates/templates.hpp"
#include "tests/unit/support.hpp"

namespace fs = std::filesystem;
namespace v1 = fedcli::v1;
using fedcli::proto::ChunkReceiver;
using fedcli::proto::FileChunker;
using fedcli::test::read_file;
using fedcli::test::TempDir;
using fedcli::test::write_file;
using fedcli::util::sha256_file;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t k_mib = 1 << 20;
constexpr auto k_deadline = 60s;

void write_random_file(const fs::path& path, std::uint64_t size, unsigned seed) {
    std::mt19937 random(seed);
    std::string bytes(size, '\0');
    for (char& byte : bytes) byte = static_cast<char>(random() & 0xff);
    write_file(path, bytes);
}

/// Waits until `ready()` holds, checked whenever `changed` is notified, up to a deadline.
template <class Predicate>
bool wait_until(std::mutex& mutex, std::condition_variable& changed, Predicate ready,
                std::chrono::seconds timeout = k_deadline) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, timeout, ready);
}

// ---------------------------------------------------------------------------------------
// A Transfer service storing files as <root>/<sha256>, with fault injection.

class FakeTransfer final : public v1::Transfer::Service {
  public:
    explicit FakeTransfer(fs::path root) : m_root(std::move(root)) {
        fs::create_directories(m_root);
    }

    // Faults, set before the client runs.
    std::uint64_t break_upload_after_bytes = 0;  ///< once: UNAVAILABLE after this many bytes
    std::uint64_t lie_in_first_query = 0;        ///< once: QueryUpload claims this many bytes kept

    // What happened.
    std::mutex mutex;
    std::vector<v1::UploadHeader> upload_headers;
    std::vector<v1::DownloadRequest> download_requests;
    std::uint64_t upload_bytes = 0;

    const fs::path& root() const { return m_root; }

    grpc::Status Upload(grpc::ServerContext*, grpc::ServerReader<v1::UploadChunk>* reader,
                        v1::UploadResult* result) override {
        v1::UploadChunk chunk;
        if (!reader->Read(&chunk) || !chunk.has_header()) {
            return {grpc::StatusCode::INVALID_ARGUMENT, "first upload chunk must be a header"};
        }
        const v1::UploadHeader header = chunk.header();
        {
            std::lock_guard lock(mutex);
            upload_headers.push_back(header);
        }
        try {
            ChunkReceiver receiver(m_root / header.sha256(), header.size(), header.sha256(),
                                   "upload of " + header.sha256());
            if (receiver.bytes_received() != header.resume_offset()) {
                return {grpc::StatusCode::FAILED_PRECONDITION,
                        "resume offset " + std::to_string(header.resume_offset()) +
                            " but server holds " + std::to_string(receiver.bytes_received())};
            }
            std::uint64_t this_stream = 0;
            while (reader->Read(&chunk)) {
                if (!chunk.has_data()) {
                    return {grpc::StatusCode::INVALID_ARGUMENT, "second header in upload"};
                }
                receiver.write(chunk.data().offset(), chunk.data().data());
                this_stream += chunk.data().data().size();
                {
                    std::lock_guard lock(mutex);
                    upload_bytes += chunk.data().data().size();
                }
                if (break_upload_after_bytes > 0 && this_stream >= break_upload_after_bytes) {
                    break_upload_after_bytes = 0;
                    return {grpc::StatusCode::UNAVAILABLE, "connection lost (injected)"};
                }
            }
            result->set_sha256(receiver.finish());
            result->set_id(result->sha256());
            result->set_size(header.size());
        } catch (const fedcli::Error& e) {
            return {grpc::StatusCode::INVALID_ARGUMENT, e.what()};
        }
        return grpc::Status::OK;
    }

    grpc::Status Download(grpc::ServerContext*, const v1::DownloadRequest* request,
                          grpc::ServerWriter<v1::DownloadChunk>* writer) override {
        {
            std::lock_guard lock(mutex);
            download_requests.push_back(*request);
        }
        const std::string id = request->id().empty() ? request->sha256() : request->id();
        const fs::path path = m_root / id;
        if (id.empty() || !fs::exists(path)) {
            return {grpc::StatusCode::NOT_FOUND, "no file " + id};
        }
        return fedcli::proto::serve_download(nullptr, *writer, path, id, request->offset(),
                                             "download");
    }

    grpc::Status QueryUpload(grpc::ServerContext*, const v1::UploadQuery* query,
                             v1::UploadState* state) override {
        state->set_complete(fs::exists(m_root / query->sha256()));
        state->set_bytes_received(ChunkReceiver::partial_size(m_root / query->sha256()));
        if (lie_in_first_query > 0) {
            state->set_bytes_received(lie_in_first_query);
            lie_in_first_query = 0;
        }
        return grpc::Status::OK;
    }

    /// Stores a file as the server would after an upload; returns its id.
    std::string store(const fs::path& file) {
        const std::string sha = sha256_file(file);
        fs::copy_file(file, m_root / sha, fs::copy_options::overwrite_existing);
        return sha;
    }

  private:
    fs::path m_root;
};

// ---------------------------------------------------------------------------------------
// A Federation service that welcomes clients, records what they send and lets the test
// push messages down the current stream.

class FakeFederation final : public v1::Federation::Service {
  public:
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<v1::Hello> hellos;
    std::vector<v1::Heartbeat> heartbeats;
    std::vector<v1::TaskStatus> statuses;
    std::vector<v1::UpdateReport> updates;
    std::vector<v1::ValidationReport> validations;
    int streams_ended = 0;
    /// Sent right after Welcome when set.
    std::optional<v1::PackageAvailable> package;
    /// Answer to ReportUpdate.
    v1::Ack update_answer;
    int next_id = 1;

    FakeFederation() {
        update_answer.set_accepted(true);
        update_answer.set_code(v1::ACK_CODE_OK);
    }

    grpc::Status Connect(
        grpc::ServerContext*,
        grpc::ServerReaderWriter<v1::ServerMessage, v1::ClientMessage>* stream) override {
        v1::ClientMessage message;
        if (!stream->Read(&message) || !message.has_hello()) {
            return {grpc::StatusCode::INVALID_ARGUMENT, "first message must be Hello"};
        }
        v1::ServerMessage welcome;
        {
            std::lock_guard lock(mutex);
            std::string id = message.hello().client_id();
            if (id.empty()) id = "client-" + std::to_string(next_id++);
            welcome.mutable_welcome()->set_client_id(id);
            welcome.mutable_welcome()->set_heartbeat_interval_ms(200);
            welcome.mutable_welcome()->set_combiner_version("test");
            welcome.mutable_welcome()->set_protocol_version(1);
        }
        {
            std::lock_guard lock(m_write_mutex);
            stream->Write(welcome);
            if (package) {
                v1::ServerMessage offer;
                *offer.mutable_package_available() = *package;
                stream->Write(offer);
            }
            m_stream = stream;
        }
        {
            std::lock_guard lock(mutex);
            hellos.push_back(message.hello());
        }
        changed.notify_all();
        while (stream->Read(&message)) {
            {
                std::lock_guard lock(mutex);
                if (message.has_heartbeat()) heartbeats.push_back(message.heartbeat());
                if (message.has_task_status()) statuses.push_back(message.task_status());
            }
            changed.notify_all();
        }
        {
            std::lock_guard lock(m_write_mutex);
            m_stream = nullptr;
        }
        {
            std::lock_guard lock(mutex);
            ++streams_ended;
        }
        changed.notify_all();
        return grpc::Status::OK;
    }

    grpc::Status ReportUpdate(grpc::ServerContext*, const v1::UpdateReport* report,
                              v1::Ack* ack) override {
        {
            std::lock_guard lock(mutex);
            updates.push_back(*report);
            *ack = update_answer;
        }
        changed.notify_all();
        return grpc::Status::OK;
    }

    grpc::Status ReportValidation(grpc::ServerContext*, const v1::ValidationReport* report,
                                  v1::Ack* ack) override {
        {
            std::lock_guard lock(mutex);
            validations.push_back(*report);
        }
        ack->set_accepted(true);
        ack->set_code(v1::ACK_CODE_OK);
        changed.notify_all();
        return grpc::Status::OK;
    }

    /// Pushes a message to the connected client; false when none is connected.
    bool send(const v1::ServerMessage& message) {
        std::lock_guard lock(m_write_mutex);
        return m_stream && m_stream->Write(message);
    }

    template <class Predicate>
    bool wait(Predicate ready, std::chrono::seconds timeout = k_deadline) {
        return wait_until(mutex, changed, ready, timeout);
    }

    /// The last state reported for a task, or UNSPECIFIED (call with `mutex` held).
    v1::TaskState last_state(const std::string& task_id) const {
        v1::TaskState state = v1::TASK_STATE_UNSPECIFIED;
        for (const auto& status : statuses) {
            if (status.task_id() == task_id) state = status.state();
        }
        return state;
    }
    const v1::TaskStatus* last_status(const std::string& task_id) const {
        const v1::TaskStatus* found = nullptr;
        for (const auto& status : statuses) {
            if (status.task_id() == task_id) found = &status;
        }
        return found;
    }

  private:
    std::mutex m_write_mutex;
    grpc::ServerReaderWriter<v1::ServerMessage, v1::ClientMessage>* m_stream = nullptr;
};

/// Both services on 127.0.0.1 (port 0 = any free port).
class FakeCombiner {
  public:
    explicit FakeCombiner(const fs::path& store, int port = 0) : transfer(store) {
        grpc::ServerBuilder builder;
        builder.AddListeningPort("127.0.0.1:" + std::to_string(port),
                                 grpc::InsecureServerCredentials(), &m_port);
        builder.RegisterService(&federation);
        builder.RegisterService(&transfer);
        m_server = builder.BuildAndStart();
        REQUIRE(m_server);
        REQUIRE(m_port > 0);
    }
    ~FakeCombiner() { shutdown(); }

    int port() const { return m_port; }
    std::string address() const { return "127.0.0.1:" + std::to_string(m_port); }
    void shutdown() {
        if (!m_server) return;
        // Open Connect streams block in Read; the deadline cancels them.
        m_server->Shutdown(std::chrono::system_clock::now() + 200ms);
        m_server->Wait();
        m_server.reset();
    }

    FakeFederation federation;
    FakeTransfer transfer;

  private:
    int m_port = 0;
    std::unique_ptr<grpc::Server> m_server;
};

/// A stream buffer safe to write from the client's threads while the test reads it.
class LockedLog final : public std::streambuf {
  public:
    std::string text() {
        std::lock_guard lock(m_mutex);
        return m_text;
    }

  protected:
    int overflow(int c) override {
        if (c != EOF) {
            std::lock_guard lock(m_mutex);
            m_text.push_back(static_cast<char>(c));
        }
        return c;
    }
    std::streamsize xsputn(const char* data, std::streamsize size) override {
        std::lock_guard lock(m_mutex);
        m_text.append(data, static_cast<std::size_t>(size));
        return size;
    }

  private:
    std::mutex m_mutex;
    std::string m_text;
};

/// A Client running on its own thread; stopped and joined on destruction.
class RunningClient {
  public:
    explicit RunningClient(fedcli::client::Options options) {
        options.log = &m_stream;
        m_client = std::make_unique<fedcli::client::Client>(std::move(options));
        m_thread = std::thread([this] {
            try {
                m_client->run();
            } catch (...) {
                m_error = std::current_exception();
            }
            {
                std::lock_guard lock(m_mutex);
                m_returned = true;
            }
            m_changed.notify_all();
        });
    }
    ~RunningClient() { stop(); }

    void stop() {
        if (!m_thread.joinable()) return;
        m_client->stop();
        m_thread.join();
        if (m_error) {
            try {
                std::rethrow_exception(m_error);
            } catch (const std::exception& e) {
                FAIL_CHECK("client.run() threw: " << e.what());
            }
        }
    }
    /// Calls stop() without joining; returns whether run() returned within `timeout`.
    bool stop_and_wait(std::chrono::seconds timeout) {
        m_client->stop();
        std::unique_lock lock(m_mutex);
        return m_changed.wait_for(lock, timeout, [this] { return m_returned; });
    }
    std::string log() { return m_log.text(); }

  private:
    LockedLog m_log;
    std::ostream m_stream{&m_log};
    std::unique_ptr<fedcli::client::Client> m_client;
    std::thread m_thread;
    std::exception_ptr m_error;
    std::mutex m_mutex;
    std::condition_variable m_changed;
    bool m_returned = false;
};

fedcli::client::Options client_options(const FakeCombiner& combiner, const fs::path& work_dir) {
    fedcli::client::Options options;
    options.combiner = combiner.address();
    options.name = "test-client";
    options.work_dir = work_dir;
    options.python = fedcli::test::python();
    options.backoff_initial = 50ms;
    options.backoff_max = 400ms;
    options.fedcli_executable = FEDCLI_BINARY;  // unpacks packages
    return options;
}

/// Stores `file` in the fake combiner and offers it as the compute package; its sha256.
std::string offer_package(FakeCombiner& combiner, const fs::path& file) {
    const std::string sha = combiner.transfer.store(file);
    v1::PackageAvailable offer;
    offer.set_sha256(sha);
    offer.set_size(fs::file_size(file));
    combiner.federation.package = offer;
    return sha;
}

/// What a client logged while it failed to install a package it pins.
struct FailedInstall {
    std::string sha;
    std::string log;
    std::vector<std::string> heartbeat_packages;  ///< package_sha256 of every heartbeat
};

/// Packs dir/project, offers it from a fake combiner and runs a client that pins it (its
/// options changed by `adjust`) until `expected` shows in its log.
FailedInstall install_until_logged(const TempDir& dir, const std::string& expected,
                                   const std::function<void(fedcli::client::Options&)>& adjust) {
    fedcli::package::create(dir / "project", dir / "package.tgz");
    FakeCombiner combiner(dir / "server");
    auto& federation = combiner.federation;
    FailedInstall result;
    result.sha = offer_package(combiner, dir / "package.tgz");
    auto options = client_options(combiner, dir / "work");
    options.package_pins = {result.sha};
    adjust(options);
    RunningClient client(options);
    REQUIRE(federation.wait([&] { return client.log().find(expected) != std::string::npos; }));
    client.stop();
    result.log = client.log();
    std::lock_guard lock(federation.mutex);
    for (const auto& heartbeat : federation.heartbeats) {
        result.heartbeat_packages.push_back(heartbeat.package_sha256());
    }
    return result;
}

/// A model file numpy writes: two float32 arrays.
fs::path write_seed(const fs::path& path) {
    fedcli::test::run_python(
        "import sys, numpy as np\n"
        "np.savez(sys.argv[1], np.ones((3, 2), np.float32), np.zeros(2, np.float32))\n",
        {path.string()});
    return path;
}

v1::ServerMessage task_message(const std::string& task_id, v1::TaskKind kind,
                               const std::string& model_id) {
    v1::ServerMessage message;
    v1::Task* task = message.mutable_task();
    task->set_task_id(task_id);
    task->set_round_id(1);
    task->set_session_id("s-1");
    task->set_kind(kind);
    task->set_model_id(model_id);
    task->set_model_sha256(model_id);
    task->set_settings_json(R"({"round": 1, "epochs": 1})");
    return message;
}

std::string waiting_for(FakeFederation& federation) {
    std::lock_guard lock(federation.mutex);
    std::ostringstream text;
    text << federation.hellos.size() << " hellos, " << federation.heartbeats.size()
         << " heartbeats, statuses:";
    for (const auto& status : federation.statuses) {
        text << " " << status.task_id() << "=" << v1::TaskState_Name(status.state()) << "("
             << status.message() << ")";
    }
    return text.str();
}

}  // namespace

// =======================================================================================
// core/proto/rpc

TEST_CASE("check_target accepts HOST:PORT and names the option when it is malformed") {
    using fedcli::proto::check_target;
    CHECK_NOTHROW(check_target("127.0.0.1:12080", "--combiner"));
    CHECK_NOTHROW(check_target("combiner.example.org:1", "--combiner"));
    CHECK_NOTHROW(check_target("[::1]:65535", "--combiner"));
    for (const char* bad : {"localhost", ":80", "host:", "host:0", "host:65536", "host:8x",
                            "::1:80", "a b:80", "[zz]:80"}) {
        INFO(bad);
        CHECK_THROWS_WITH(check_target(bad, "--combiner"),
                          Catch::StartsWith(std::string("--combiner: '") + bad + "'"));
    }
}

TEST_CASE("upload_file sends a file once, then skips it; download_file fetches it back") {
    TempDir dir;
    FakeCombiner combiner(dir / "server");
    auto stub = v1::Transfer::NewStub(fedcli::proto::make_channel(combiner.address()));
    const std::uint64_t size = 3 * k_mib + 17;
    write_random_file(dir / "model.npz", size, 1);
    const std::string sha = sha256_file(dir / "model.npz");

    std::uint64_t last_progress = 0;
    fedcli::proto::TransferOptions options;
    options.progress = [&](std::uint64_t done, std::uint64_t total) {
        CHECK(total == size);
        CHECK(done >= last_progress);
        last_progress = done;
    };
    auto first = fedcli::proto::upload_file(*stub, v1::TRANSFER_KIND_MODEL, dir / "model.npz",
                                            "t-1", options);
    CHECK(first.id == sha);
    CHECK(first.size == size);
    CHECK_FALSE(first.skipped);
    CHECK(last_progress == size);
    CHECK(sha256_file(combiner.transfer.root() / sha) == sha);
    REQUIRE(combiner.transfer.upload_headers.size() == 1);
    CHECK(combiner.transfer.upload_headers[0].task_id() == "t-1");
    CHECK(combiner.transfer.upload_headers[0].resume_offset() == 0);

    auto second = fedcli::proto::upload_file(*stub, v1::TRANSFER_KIND_MODEL, dir / "model.npz");
    CHECK(second.skipped);
    CHECK(combiner.transfer.upload_headers.size() == 1);

    fs::create_directories(dir / "down");
    auto downloaded =
        fedcli::proto::download_file(*stub, v1::TRANSFER_KIND_MODEL, sha, dir / "down" / "m.npz");
    CHECK(downloaded.id == sha);
    CHECK(downloaded.size == size);
    CHECK(sha256_file(dir / "down" / "m.npz") == sha);
    CHECK_FALSE(fs::exists(ChunkReceiver::part_path(dir / "down" / "m.npz")));
}

TEST_CASE("upload_file takes a digest the caller computed; the combiner checks it") {
    TempDir dir;
    FakeCombiner combiner(dir / "server");
    auto stub = v1::Transfer::NewStub(fedcli::proto::make_channel(combiner.address()));
    write_random_file(dir / "model.npz", 2 * k_mib + 9, 5);
    const std::string sha = sha256_file(dir / "model.npz");
    fedcli::proto::TransferOptions options;

    SECTION("the right digest, in capitals, names the upload") {
        std::string upper = sha;
        std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
        options.sha256 = upper;
        auto outcome = fedcli::proto::upload_file(*stub, v1::TRANSFER_KIND_MODEL, dir / "model.npz",
                                                  {}, options);
        CHECK(outcome.id == sha);
        REQUIRE(combiner.transfer.upload_headers.size() == 1);
        CHECK(combiner.transfer.upload_headers[0].sha256() == sha);
        CHECK(sha256_file(combiner.transfer.root() / sha) == sha);
    }
    SECTION("a digest of other bytes (the file changed since) fails, and nothing is stored") {
        const std::string other(64, 'b');
        options.sha256 = other;
        options.attempts = 1;
        CHECK_THROWS_WITH(fedcli::proto::upload_file(*stub, v1::TRANSFER_KIND_MODEL,
                                                     dir / "model.npz", {}, options),
                          Catch::Contains("model.npz") && Catch::Contains("sha256"));
        CHECK_FALSE(fs::exists(combiner.transfer.root() / other));
        CHECK_FALSE(fs::exists(combiner.transfer.root() / sha));
    }
    SECTION("a malformed digest is refused before anything is sent") {
        options.sha256 = "abc";
        CHECK_THROWS_WITH(fedcli::proto::upload_file(*stub, v1::TRANSFER_KIND_MODEL,
                                                     dir / "model.npz", {}, options),
                          Catch::Contains("'abc' is not a sha256"));
        CHECK(combiner.transfer.upload_headers.empty());
    }
}

TEST_CASE("upload_file resumes from what the server kept and retries a broken stream") {
    TempDir dir;
    FakeCombiner combiner(dir / "server");
    auto stub = v1::Transfer::NewStub(fedcli::proto::make_channel(combiner.address()));
    const std::uint64_t size = 4 * k_mib + 3;
    write_random_file(dir / "model.npz", size, 2);
    const std::string sha = sha256_file(dir / "model.npz");
    const std::string bytes = read_file(dir / "model.npz");

    SECTION("an interrupted upload's .part is continued, not resent") {
        const std::uint64_t kept = k_mib + 5;
        write_file(ChunkReceiver::part_path(combiner.transfer.root() / sha), bytes.substr(0, kept));
        auto outcome =
            fedcli::proto::upload_file(*stub, v1::TRANSFER_KIND_MODEL, dir / "model.npz");
        CHECK_FALSE(outcome.skipped);
        REQUIRE(combiner.transfer.upload_headers.size() == 1);
        CHECK(combiner.transfer.upload_headers[0].resume_offset() == kept);
        CHECK(combiner.transfer.upload_bytes == size - kept);
    }
    SECTION("a stream broken after 2 MiB goes on from 2 MiB") {
        combiner.transfer.break_upload_after_bytes = 2 * k_mib;
        auto outcome =
            fedcli::proto::upload_file(*stub, v1::TRANSFER_KIND_MODEL, dir / "model.npz");
        CHECK_FALSE(outcome.skipped);
        REQUIRE(combiner.transfer.upload_headers.size() == 2);
        CHECK(combiner.transfer.upload_headers[1].resume_offset() == 2 * k_mib);
        CHECK(combiner.transfer.upload_bytes == size);
    }
    SECTION("FAILED_PRECONDITION (the server holds another amount) makes it ask again") {
        combiner.transfer.lie_in_first_query = 12345;
        auto outcome =
            fedcli::proto::upload_file(*stub, v1::TRANSFER_KIND_MODEL, dir / "model.npz");
        CHECK(outcome.id == sha);
        REQUIRE(combiner.transfer.upload_headers.size() == 2);
        CHECK(combiner.transfer.upload_headers[0].resume_offset() == 12345);
        CHECK(combiner.transfer.upload_headers[1].resume_offset() == 0);
    }
    CHECK(sha256_file(combiner.transfer.root() / sha) == sha);
}

TEST_CASE("download_file resumes from its .part file; errors name the file and the status") {
    TempDir dir;
    FakeCombiner combiner(dir / "server");
    auto stub = v1::Transfer::NewStub(fedcli::proto::make_channel(combiner.address()));
    write_random_file(dir / "model.npz", 3 * k_mib, 3);
    const std::string sha = combiner.transfer.store(dir / "model.npz");
    fs::create_directories(dir / "down");
    const fs::path destination = dir / "down" / (sha + ".npz");
    write_file(ChunkReceiver::part_path(destination),
               read_file(dir / "model.npz").substr(0, 2 * k_mib + 1));

    auto outcome = fedcli::proto::download_file(*stub, v1::TRANSFER_KIND_MODEL, sha, destination);
    CHECK(outcome.id == sha);
    REQUIRE(combiner.transfer.download_requests.size() == 1);
    CHECK(combiner.transfer.download_requests[0].offset() == 2 * k_mib + 1);
    CHECK(combiner.transfer.download_requests[0].id() == sha);
    CHECK(sha256_file(destination) == sha);

    // Packages are asked for by sha256.
    auto package = fedcli::proto::download_file(*stub, v1::TRANSFER_KIND_PACKAGE, sha,
                                                dir / "down" / "package.tgz");
    CHECK(package.id == sha);
    CHECK(combiner.transfer.download_requests.back().sha256() == sha);
    CHECK(combiner.transfer.download_requests.back().id().empty());

    const std::string missing(64, 'a');
    CHECK_THROWS_WITH(
        fedcli::proto::download_file(*stub, v1::TRANSFER_KIND_MODEL, missing, dir / "down" / "x"),
        Catch::Contains("download of model aaaaaaaa") && Catch::Contains("NOT_FOUND"));
    CHECK_THROWS_WITH(fedcli::proto::upload_file(*stub, v1::TRANSFER_KIND_MODEL, dir / "absent"),
                      Catch::Contains("absent"));
}

TEST_CASE("a transfer to a combiner that is not there fails naming the file and UNAVAILABLE") {
    TempDir dir;
    int port = 0;
    {
        FakeCombiner gone(dir / "server");
        port = gone.port();
    }
    auto stub =
        v1::Transfer::NewStub(fedcli::proto::make_channel("127.0.0.1:" + std::to_string(port)));
    write_random_file(dir / "model.npz", 1000, 4);
    fedcli::proto::TransferOptions options;
    options.attempts = 2;
    CHECK_THROWS_WITH(
        fedcli::proto::upload_file(*stub, v1::TRANSFER_KIND_MODEL, dir / "model.npz", {}, options),
        Catch::Contains("model.npz") && Catch::Contains("UNAVAILABLE"));
}

// =======================================================================================
// client/

TEST_CASE("the client connects, gets an id and keeps it across restarts") {
    TempDir dir;
    FakeCombiner combiner(dir / "server");
    auto& federation = combiner.federation;
    {
        RunningClient client(client_options(combiner, dir / "work"));
        REQUIRE(federation.wait(
            [&] { return !federation.hellos.empty() && !federation.heartbeats.empty(); }));
        client.stop();
        CHECK(client.log().find("connected to " + combiner.address() +
                                " as client 'test-client' (id client-") != std::string::npos);
    }
    CHECK(read_file(dir / "work" / "client_id") == "client-1\n");
    {
        std::lock_guard lock(federation.mutex);
        const v1::Hello& hello = federation.hellos[0];
        CHECK(hello.client_id().empty());
        CHECK(hello.name() == "test-client");
        CHECK(hello.protocol_version() == 1);
        CHECK_FALSE(hello.version().empty());
        std::vector<std::string> capabilities(hello.capabilities().begin(),
                                              hello.capabilities().end());
        CHECK(capabilities ==
              std::vector<std::string>{"train", "validate", "predict", "resume-upload"});
        CHECK(federation.heartbeats[0].sequence() == 1);
        CHECK(federation.heartbeats[0].status() == v1::CLIENT_STATUS_IDLE);
    }

    RunningClient again(client_options(combiner, dir / "work"));
    REQUIRE(federation.wait([&] { return federation.hellos.size() == 2; }));
    std::lock_guard lock(federation.mutex);
    CHECK(federation.hellos[1].client_id() == "client-1");
}

TEST_CASE("the client reconnects when the combiner goes away and comes back") {
    TempDir dir;
    auto first = std::make_unique<FakeCombiner>(dir / "server");
    const int port = first->port();
    RunningClient client(client_options(*first, dir / "work"));
    REQUIRE(first->federation.wait([&] { return !first->federation.hellos.empty(); }));
    first->shutdown();
    first.reset();

    FakeCombiner second(dir / "server", port);
    auto& federation = second.federation;
    REQUIRE(federation.wait(
        [&] { return !federation.hellos.empty() && !federation.heartbeats.empty(); }));
    {
        std::lock_guard lock(federation.mutex);
        CHECK(federation.hellos[0].client_id() == "client-1");
    }
    client.stop();
    const std::string log = client.log();
    CHECK(log.find("disconnected from 127.0.0.1:" + std::to_string(port)) != std::string::npos);
    CHECK(log.find("; retrying in ") != std::string::npos);
}

TEST_CASE("a package from the combiner is downloaded, installed, and started up once") {
    TempDir dir;
    fs::create_directories(dir / "project");
    write_file(dir / "project" / "fedcli.yaml",
               "name: counted\n"
               "entry_points:\n"
               "  startup:\n"
               "    command: python3 startup.py\n"
               "  train:\n"
               "    command: python3 train.py\n");
    write_file(dir / "project" / "startup.py",
               "import os\n"
               "with open(os.environ['STARTUP_COUNTER'], 'a') as f:\n"
               "    f.write('ran\\n')\n");
    write_file(dir / "project" / "train.py", "raise SystemExit(1)\n");
    auto created = fedcli::package::create(dir / "project", dir / "package.tgz");

    FakeCombiner combiner(dir / "server");
    auto& federation = combiner.federation;
    const std::string sha = offer_package(combiner, dir / "package.tgz");
    REQUIRE(sha == created.sha256);

    auto options = client_options(combiner, dir / "work");
    options.package_pins = {sha};  // trusted by its sha256 (signatures: test_signature.cpp)
    options.environment.emplace_back("STARTUP_COUNTER", (dir / "counter.txt").string());
    auto installed = [&](std::size_t from) {
        for (std::size_t i = from; i < federation.heartbeats.size(); ++i) {
            if (federation.heartbeats[i].package_sha256() == sha &&
                federation.heartbeats[i].status() == v1::CLIENT_STATUS_IDLE) {
                return true;
            }
        }
        return false;
    };
    {
        RunningClient client(options);
        REQUIRE(federation.wait([&] { return installed(0); }));
        client.stop();
        const std::string log = client.log();
        CHECK(log.find("package " + sha.substr(0, 8) + " received") != std::string::npos);
        CHECK(log.find("startup done") != std::string::npos);
        CHECK(log.find("package " + sha.substr(0, 8) + " installed") != std::string::npos);
    }
    CHECK(read_file(dir / "counter.txt") == "ran\n");
    CHECK(fs::exists(dir / "work" / "package" / sha / ".fedcli-startup-done"));
    CHECK(fs::exists(dir / "work" / "package" / sha / "startup.py"));
    {
        std::lock_guard lock(federation.mutex);
        bool preparing = false;
        for (const auto& heartbeat : federation.heartbeats) {
            preparing = preparing || heartbeat.status() == v1::CLIENT_STATUS_PREPARING;
        }
        CHECK(preparing);
    }

    // A restarted client finds the package installed: no download, no second startup.
    std::size_t heartbeats_before = 0;
    {
        std::lock_guard lock(federation.mutex);
        heartbeats_before = federation.heartbeats.size();
    }
    RunningClient client(options);
    REQUIRE(federation.wait([&] { return installed(heartbeats_before); }));
    CHECK(read_file(dir / "counter.txt") == "ran\n");
    std::lock_guard lock(combiner.transfer.mutex);
    CHECK(combiner.transfer.download_requests.size() == 1);
}

TEST_CASE("a broken package leaves the client connected, idle and without a package") {
    TempDir dir;
    write_file(dir / "garbage.tgz", "this is not a tar archive");
    FakeCombiner combiner(dir / "server");
    auto& federation = combiner.federation;
    const std::string sha = offer_package(combiner, dir / "garbage.tgz");

    auto options = client_options(combiner, dir / "work");
    options.package_pins = {sha};  // trusted, but broken
    RunningClient client(options);
    // PREPARING while it tries, then IDLE again.
    REQUIRE(federation.wait([&] {
        bool preparing = false;
        for (const auto& heartbeat : federation.heartbeats) {
            if (heartbeat.status() == v1::CLIENT_STATUS_PREPARING) preparing = true;
            if (preparing && heartbeat.status() == v1::CLIENT_STATUS_IDLE) return true;
        }
        return false;
    }));
    // A task sent now is rejected: nothing to run it with.
    federation.send(task_message("t-1", v1::TASK_KIND_TRAIN, std::string(64, 'b')));
    REQUIRE(
        federation.wait([&] { return federation.last_state("t-1") == v1::TASK_STATE_REJECTED; }));
    client.stop();
    // The reason comes from the `fedcli package extract` child that unpacked it.
    const std::string log = client.log();
    INFO(log);
    CHECK(log.find("package " + sha.substr(0, 8) + " not installed: unpacking failed") !=
          std::string::npos);
    CHECK(log.find("garbage.tgz") == std::string::npos);  // the client's own copy is named
    CHECK(log.find(sha + ".tgz") != std::string::npos);
    std::lock_guard lock(federation.mutex);
    for (const auto& heartbeat : federation.heartbeats) CHECK(heartbeat.package_sha256().empty());
    CHECK_FALSE(fs::exists(dir / "work" / "package" / sha));
}

TEST_CASE("the unpacking child applies the client's package limits") {
    TempDir dir;
    fs::create_directories(dir / "project" / "data");
    write_file(dir / "project" / "fedcli.yaml", "entry_points:\n  train:\n    command: true\n");
    for (int i = 0; i < 5; ++i) write_file(dir / "project" / "data" / std::to_string(i), "x");
    const FailedInstall failed =
        install_until_logged(dir, "the archive holds more than 4 entries", [](auto& options) {
            options.package_limits.max_entries = 4;  // the package holds 7
        });
    CHECK(failed.log.find("package " + failed.sha.substr(0, 8) +
                          " not installed: unpacking failed") != std::string::npos);
    CHECK_FALSE(fs::exists(dir / "work" / "package" / failed.sha));
}

TEST_CASE("a package whose python_env file does not parse is not installed, naming the file") {
    TempDir dir;
    fs::create_directories(dir / "project");
    write_file(dir / "project" / "fedcli.yaml",
               "python_env: env.yaml\nentry_points:\n  train:\n    command: true\n");
    write_file(dir / "project" / "env.yaml", "name: e\ndepends: [numpy]\n");
    // The `fedcli project validate` child reads the YAML; its message reaches the log.
    const FailedInstall failed =
        install_until_logged(dir, "env.yaml:2:1: unknown key 'depends'", [](auto&) {});
    INFO(failed.log);
    CHECK(failed.log.find("package " + failed.sha.substr(0, 8) +
                          " not installed: reading the project failed (`fedcli project validate` "
                          "exited with code 1): ") != std::string::npos);
    CHECK(failed.log.find("fedcli.yaml:1: python_env: ") != std::string::npos);
    for (const std::string& package : failed.heartbeat_packages) CHECK(package.empty());
}

TEST_CASE("the client's options survive the JSON hand-over to fedcli-client") {
    fedcli::client::Options options;
    options.combiner = "combiner.example.org:12080";
    options.name = "c1 \"quoted\"";
    options.project = "/srv/project";
    options.work_dir = "/var/lib/fedcli/c1";
    options.python = "/usr/bin/python3";
    options.data_path = "/data";
    options.backoff_initial = 123ms;
    options.backoff_max = 4567ms;
    options.environment = {{"A", "1"}, {"B", "x=y"}};
    options.entry_point_timeout = 90s;
    options.entry_point_limits.memory_bytes = std::uint64_t{3} << 30;
    options.entry_point_limits.open_files = 256;
    options.package_limits.max_entries = 77;
    options.package_limits.max_file_bytes = 12345;
    options.fedcli_executable = "/usr/bin/fedcli";
    options.package_pins = {std::string(64, 'a')};
    fedcli::package::PublicKey key;
    for (std::size_t i = 0; i < key.bytes.size(); ++i)
        key.bytes[i] = static_cast<unsigned char>(i * 9);
    options.trusted_keys = {key};
    options.trust_any_package = true;
    options.echo_output = true;
    options.channel.token = "secret-token";
    options.channel.ca_file = "/etc/fedcli/ca.pem";
    options.channel.cert_file = "c.pem";
    options.channel.key_file = "c.key";
    options.channel.insecure = true;

    const nlohmann::json sent = fedcli::client::options_to_json(options);
    const auto received = fedcli::client::options_from_json(nlohmann::json::parse(sent.dump()));
    CHECK(fedcli::client::options_to_json(received) == sent);
    CHECK(received.name == options.name);
    CHECK(received.project == options.project);
    CHECK(received.backoff_max == 4567ms);
    CHECK(received.environment == options.environment);
    CHECK(received.entry_point_timeout == std::optional<std::chrono::milliseconds>(90s));
    CHECK(received.entry_point_limits.memory_bytes == options.entry_point_limits.memory_bytes);
    CHECK_FALSE(received.entry_point_limits.cpu_seconds);
    CHECK(received.package_limits.max_entries == 77);
    REQUIRE(received.trusted_keys.size() == 1);
    CHECK(received.trusted_keys[0].bytes == key.bytes);
    CHECK(received.channel.token == "secret-token");
    CHECK(received.channel.insecure);

    // Unset optionals stay unset.
    fedcli::client::Options plain;
    const auto round_trip =
        fedcli::client::options_from_json(fedcli::client::options_to_json(plain));
    CHECK_FALSE(round_trip.project);
    CHECK_FALSE(round_trip.python);
    CHECK_FALSE(round_trip.entry_point_timeout);
    CHECK(round_trip.package_limits.max_total_bytes == plain.package_limits.max_total_bytes);
}

TEST_CASE("malformed client options are refused naming the field") {
    const nlohmann::json good = fedcli::client::options_to_json(fedcli::client::Options{});
    auto refused = [](const nlohmann::json& document) {
        try {
            fedcli::client::options_from_json(document);
        } catch (const fedcli::Error& error) {
            return std::string(error.what());
        }
        return std::string("accepted");
    };
    nlohmann::json missing = good;
    missing.erase("combiner");
    CHECK(refused(missing) == "client options: options.combiner: missing");
    nlohmann::json wrong = good;
    wrong["channel"]["insecure"] = "yes";
    CHECK(refused(wrong) == "client options: options.channel.insecure: expected true or false");
    nlohmann::json negative = good;
    negative["package_limits"]["max_entries"] = -1;
    CHECK(refused(negative) ==
          "client options: options.package_limits.max_entries: expected a number >= 0");
    nlohmann::json key = good;
    key["trusted_keys"] = {std::string(64, 'a')};
    CHECK(refused(key).rfind("client options: options.trusted_keys: not a fedcli public key", 0) ==
          0);
    CHECK(refused(nlohmann::json::array()) == "client options: options: expected an object");
    CHECK(refused(good) == "accepted");
}

TEST_CASE("train and validate tasks run the numpy template and report their results") {
    TempDir dir;
    fedcli::templates::instantiate("numpy", dir / "project", "demo",
                                   fedcli::templates::Overwrite::no);
    fedcli::dispatch::RunRequest build;
    build.output = dir / "seed.npz";
    build.python = fedcli::test::python();
    fedcli::dispatch::run_entry_point(fedcli::project::load(dir / "project"), "build", build);

    FakeCombiner combiner(dir / "server");
    auto& federation = combiner.federation;
    const std::string seed = combiner.transfer.store(dir / "seed.npz");
    auto options = client_options(combiner, dir / "work");
    options.project = dir / "project";
    RunningClient client(options);
    REQUIRE(federation.wait([&] { return !federation.hellos.empty(); }));
    {
        std::lock_guard lock(federation.mutex);
        const auto& capabilities = federation.hellos[0].capabilities();
        CHECK(std::find(capabilities.begin(), capabilities.end(), "local-package") !=
              capabilities.end());
    }

    REQUIRE(federation.send(task_message("t-1", v1::TASK_KIND_TRAIN, seed)));
    INFO(waiting_for(federation));
    REQUIRE(federation.wait([&] {
        auto state = federation.last_state("t-1");
        return state == v1::TASK_STATE_SUCCEEDED || state == v1::TASK_STATE_FAILED;
    }));
    {
        std::lock_guard lock(federation.mutex);
        INFO(federation.last_status("t-1")->message());
        REQUIRE(federation.last_state("t-1") == v1::TASK_STATE_SUCCEEDED);
        std::vector<v1::TaskState> states;
        for (const auto& status : federation.statuses) states.push_back(status.state());
        CHECK(states == std::vector<v1::TaskState>{v1::TASK_STATE_RECEIVED, v1::TASK_STATE_RUNNING,
                                                   v1::TASK_STATE_SUCCEEDED});
        REQUIRE(federation.updates.size() == 1);
        const v1::UpdateReport& update = federation.updates[0];
        CHECK(update.client_id() == "client-1");
        CHECK(update.task_id() == "t-1");
        CHECK(update.round_id() == 1);
        CHECK(update.metadata_json().find("\"num_examples\"") != std::string::npos);
        CHECK(fs::exists(combiner.transfer.root() / update.model_id()));
        CHECK(update.model_id() != seed);
    }
    CHECK_FALSE(fs::exists(dir / "work" / "tasks" / "t-1"));
    CHECK(fs::exists(dir / "work" / "models" / (seed + ".npz")));

    REQUIRE(federation.send(task_message("t-2", v1::TASK_KIND_VALIDATE, seed)));
    REQUIRE(federation.wait([&] {
        auto state = federation.last_state("t-2");
        return state == v1::TASK_STATE_SUCCEEDED || state == v1::TASK_STATE_FAILED;
    }));
    {
        std::lock_guard lock(federation.mutex);
        INFO(federation.last_status("t-2")->message());
        REQUIRE(federation.last_state("t-2") == v1::TASK_STATE_SUCCEEDED);
        REQUIRE(federation.validations.size() == 1);
        CHECK(federation.validations[0].model_id() == seed);
        CHECK(federation.validations[0].metrics_json().front() == '{');
        // The seed was downloaded once and reused from the cache.
        std::lock_guard transfer_lock(combiner.transfer.mutex);
        CHECK(combiner.transfer.download_requests.size() == 1);
    }
    client.stop();
    const std::string log = client.log();
    CHECK(log.find("task t-1 finished in ") != std::string::npos);
    CHECK(log.find(" examples, update ") != std::string::npos);
}

TEST_CASE("a failing train is reported FAILED with its exit code and last lines") {
    TempDir dir;
    fs::create_directories(dir / "project");
    write_file(dir / "project" / "fedcli.yaml",
               "name: failing\nentry_points:\n  train:\n    command: python3 train.py\n");
    write_file(dir / "project" / "train.py",
               "import sys\n"
               "for i in range(40):\n"
               "    print('line', i)\n"
               "print('boom: no data', file=sys.stderr)\n"
               "sys.exit(3)\n");
    FakeCombiner combiner(dir / "server");
    auto& federation = combiner.federation;
    const std::string seed = combiner.transfer.store(write_seed(dir / "seed.npz"));
    auto options = client_options(combiner, dir / "work");
    options.project = dir / "project";
    RunningClient client(options);
    REQUIRE(federation.wait([&] { return !federation.hellos.empty(); }));
    REQUIRE(federation.send(task_message("t-9", v1::TASK_KIND_TRAIN, seed)));
    REQUIRE(federation.wait([&] {
        auto state = federation.last_state("t-9");
        return state == v1::TASK_STATE_SUCCEEDED || state == v1::TASK_STATE_FAILED;
    }));
    {
        std::lock_guard lock(federation.mutex);
        const v1::TaskStatus& status = *federation.last_status("t-9");
        CHECK(status.state() == v1::TASK_STATE_FAILED);
        CHECK(status.exit_code() == 3);
        CHECK(status.message() == "exited with code 3: boom: no data");
        REQUIRE(status.tail_size() == 30);
        CHECK(status.tail(29) == "boom: no data");
        CHECK(status.tail(28) == "line 39");
        CHECK(federation.updates.empty());
    }
    CHECK_FALSE(fs::exists(dir / "work" / "tasks" / "t-9"));
    client.stop();
    CHECK(client.log().find("task t-9 failed after ") != std::string::npos);
}

TEST_CASE("an update the combiner refuses is logged with the reason and not retried") {
    TempDir dir;
    fs::create_directories(dir / "project");
    write_file(dir / "project" / "fedcli.yaml",
               "name: copy\nentry_points:\n  train:\n    command: python3 train.py\n");
    write_file(dir / "project" / "train.py",
               "import json, shutil, sys\n"
               "shutil.copy(sys.argv[1], sys.argv[2])\n"
               "json.dump({'num_examples': 7}, open(sys.argv[2] + '-metadata', 'w'))\n");
    FakeCombiner combiner(dir / "server");
    auto& federation = combiner.federation;
    federation.update_answer.set_accepted(false);
    federation.update_answer.set_code(v1::ACK_CODE_STALE_ROUND);
    federation.update_answer.set_reason("round 1 is closed");
    const std::string seed = combiner.transfer.store(write_seed(dir / "seed.npz"));
    auto options = client_options(combiner, dir / "work");
    options.project = dir / "project";
    RunningClient client(options);
    REQUIRE(federation.wait([&] { return !federation.hellos.empty(); }));
    REQUIRE(federation.send(task_message("t-3", v1::TASK_KIND_TRAIN, seed)));
    REQUIRE(federation.wait([&] { return !federation.updates.empty(); }));
    // The client goes back to IDLE once it has given the task up.
    REQUIRE(federation.wait([&] {
        return !federation.heartbeats.empty() &&
               federation.heartbeats.back().status() == v1::CLIENT_STATUS_IDLE &&
               federation.last_state("t-3") == v1::TASK_STATE_RUNNING;
    }));
    client.stop();
    CHECK(client.log().find("update for task t-3 (round 1) refused: round 1 is closed") !=
          std::string::npos);
    std::lock_guard lock(federation.mutex);
    CHECK(federation.updates.size() == 1);
    CHECK(federation.updates[0].metadata_json() == R"({"num_examples":7})");
}

TEST_CASE("stop() and CancelTask end a long-running train promptly") {
    TempDir dir;
    fs::create_directories(dir / "project");
    write_file(dir / "project" / "fedcli.yaml",
               "name: sleepy\nentry_points:\n  train:\n    command: python3 train.py\n");
    write_file(dir / "project" / "train.py",
               "import os, sys, time\n"
               "open(os.environ['PID_FILE'] + '.tmp', 'w').write(str(os.getpid()))\n"
               "os.rename(os.environ['PID_FILE'] + '.tmp', os.environ['PID_FILE'])\n"
               "time.sleep(300)\n");
    FakeCombiner combiner(dir / "server");
    auto& federation = combiner.federation;
    const std::string seed = combiner.transfer.store(write_seed(dir / "seed.npz"));
    auto options = client_options(combiner, dir / "work");
    options.project = dir / "project";
    options.environment.emplace_back("PID_FILE", (dir / "pid").string());

    auto wait_for_pid = [&]() -> int {
        // The entry point announces itself through a file; nothing to be notified by.
        const auto deadline = std::chrono::steady_clock::now() + k_deadline;
        while (!fs::exists(dir / "pid") && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(20ms);
        }
        REQUIRE(fs::exists(dir / "pid"));
        int pid = std::stoi(read_file(dir / "pid"));
        fs::remove(dir / "pid");
        return pid;
    };
    auto gone = [](int pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; };

    RunningClient client(options);
    REQUIRE(federation.wait([&] { return !federation.hellos.empty(); }));

    SECTION("CancelTask") {
        REQUIRE(federation.send(task_message("t-5", v1::TASK_KIND_TRAIN, seed)));
        const int pid = wait_for_pid();
        v1::ServerMessage cancel;
        cancel.mutable_cancel_task()->set_task_id("t-5");
        cancel.mutable_cancel_task()->set_reason("session stopped");
        const auto started = std::chrono::steady_clock::now();
        REQUIRE(federation.send(cancel));
        REQUIRE(federation.wait(
            [&] { return federation.last_state("t-5") == v1::TASK_STATE_CANCELLED; }, 10s));
        CHECK(std::chrono::steady_clock::now() - started < 10s);
        CHECK(gone(pid));
        // The client serves the next task afterwards.
        REQUIRE(federation.send(task_message("t-6", v1::TASK_KIND_TRAIN, seed)));
        const int next = wait_for_pid();
        CHECK(next != pid);
    }
    SECTION("stop()") {
        REQUIRE(federation.send(task_message("t-7", v1::TASK_KIND_TRAIN, seed)));
        const int pid = wait_for_pid();
        const auto started = std::chrono::steady_clock::now();
        REQUIRE(client.stop_and_wait(10s));
        CHECK(std::chrono::steady_clock::now() - started < 10s);
        CHECK(gone(pid));
    }
    client.stop();
}

// =======================================================================================
// Against the real combiner (combiner/), in-process

namespace {

/// Polls `ready` (an RPC question to the combiner) until it holds or the deadline passes:
/// the combiner has no notification a test could wait on.
bool poll_until(const std::function<bool()>& ready, std::chrono::seconds timeout = k_deadline) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!ready()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(50ms);
    }
    return true;
}

}  // namespace

TEST_CASE("with the real combiner a packaged numpy project trains, and the round commits") {
    TempDir dir;
    fedcli::templates::instantiate("numpy", dir / "project", "demo",
                                   fedcli::templates::Overwrite::no);
    fedcli::dispatch::RunRequest build;
    build.output = dir / "seed.npz";
    build.python = fedcli::test::python();
    fedcli::dispatch::run_entry_point(fedcli::project::load(dir / "project"), "build", build);
    fs::remove(dir / "project" / "seed.npz");
    auto package = fedcli::package::create(dir / "project", dir / "package.tgz");

    LockedLog combiner_log;
    std::ostream combiner_stream(&combiner_log);
    fedcli::combiner::Options combiner_options;
    combiner_options.port = 0;
    combiner_options.data_dir = dir / "combiner";
    combiner_options.heartbeat_interval = 200ms;
    combiner_options.log = &combiner_stream;
    fedcli::combiner::Combiner combiner(combiner_options);
    combiner.start();
    const std::string address = "127.0.0.1:" + std::to_string(combiner.port());
    // The operator's calls use the admin token the combiner made; the client gets a client
    // token of its own, as in a real deployment.
    fedcli::proto::ChannelOptions admin;
    admin.token = fedcli::test::read_file(combiner_options.data_dir / "admin.token");
    admin.token.pop_back();  // newline
    auto channel = fedcli::proto::make_channel(address, admin);
    auto transfer = v1::Transfer::NewStub(channel);
    auto control = v1::Control::NewStub(channel);
    std::string client_token;
    {
        grpc::ClientContext context;
        v1::CreateTokenRequest request;
        request.set_role(v1::TOKEN_ROLE_CLIENT);
        v1::CreateTokenResponse response;
        REQUIRE(control->CreateToken(&context, request, &response).ok());
        client_token = response.token();
    }

    const auto seed =
        fedcli::proto::upload_file(*transfer, v1::TRANSFER_KIND_MODEL, dir / "seed.npz");
    const auto uploaded =
        fedcli::proto::upload_file(*transfer, v1::TRANSFER_KIND_PACKAGE, dir / "package.tgz");
    REQUIRE(uploaded.id == package.sha256);
    {
        grpc::ClientContext context;
        v1::SetSeedModelRequest request;
        request.set_model_id(seed.id);
        v1::Ack ack;
        REQUIRE(control->SetSeedModel(&context, request, &ack).ok());
        INFO(ack.reason());
        REQUIRE(ack.accepted());
    }
    {
        grpc::ClientContext context;
        v1::SetPackageRequest request;
        request.set_sha256(package.sha256);
        request.set_name("package.tgz");
        v1::Ack ack;
        REQUIRE(control->SetPackage(&context, request, &ack).ok());
        INFO(ack.reason());
        REQUIRE(ack.accepted());
    }

    fedcli::client::Options options;
    options.combiner = address;
    options.channel.token = client_token;
    options.package_pins = {package.sha256};
    options.name = "c1";
    options.work_dir = dir / "work";
    options.python = fedcli::test::python();
    options.backoff_initial = 50ms;
    options.backoff_max = 400ms;
    options.fedcli_executable = FEDCLI_BINARY;
    RunningClient client(options);

    auto ready = [&] {
        grpc::ClientContext context;
        v1::ListClientsResponse clients;
        if (!control->ListClients(&context, v1::ListClientsRequest(), &clients).ok()) return false;
        return clients.clients_size() == 1 && clients.clients(0).online() &&
               clients.clients(0).status() == v1::CLIENT_STATUS_IDLE &&
               clients.clients(0).package_sha256() == package.sha256;
    };
    if (!poll_until(ready)) {
        FAIL("client not ready; client log:\n"
             << client.log() << "combiner log:\n"
             << combiner_log.text());
    }

    {
        grpc::ClientContext context;
        v1::StartSessionRequest request;
        request.mutable_config()->set_rounds(2);
        request.mutable_config()->set_min_clients(1);
        request.mutable_config()->set_round_timeout_ms(60000);
        request.mutable_config()->set_validate(true);
        v1::StartSessionResponse response;
        REQUIRE(control->StartSession(&context, request, &response).ok());
        INFO(response.ack().reason());
        REQUIRE(response.ack().accepted());
    }
    v1::StatusResponse status;
    const bool ended = poll_until(
        [&] {
            grpc::ClientContext context;
            status.Clear();
            return control->GetStatus(&context, v1::GetStatusRequest(), &status).ok() &&
                   status.session_state() != v1::SESSION_STATE_RUNNING &&
                   status.session_state() != v1::SESSION_STATE_IDLE;
        },
        120s);
    INFO("client log:\n" << client.log() << "combiner log:\n" << combiner_log.text());
    INFO(status.message());
    REQUIRE(ended);
    CHECK(status.session_state() == v1::SESSION_STATE_FINISHED);

    grpc::ClientContext context;
    v1::ListRoundsResponse rounds;
    REQUIRE(control->ListRounds(&context, v1::ListRoundsRequest(), &rounds).ok());
    REQUIRE(rounds.rounds_size() == 2);
    for (const auto& round : rounds.rounds()) {
        CHECK(round.state() == v1::ROUND_STATE_COMMITTED);
        CHECK(round.updates_accepted() == 1);
        REQUIRE(round.updates_size() == 1);
        CHECK(round.updates(0).num_examples() > 0);
        CHECK(round.validations_size() == 1);
    }
    CHECK(rounds.rounds(1).input_model_id() == rounds.rounds(0).output_model_id());
    client.stop();
    combiner.shutdown();
    // The startup of the package ran once, in the extracted package.
    CHECK(fs::exists(dir / "work" / "package" / package.sha256 / ".fedcli-startup-done"));
}
