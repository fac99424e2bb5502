// core/proto: chunked transfer helpers, alone and behind a real in-process gRPC Transfer
// service.
#include <grpcpp/grpcpp.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/proto/fedcli.grpc.pb.h"
#include "core/proto/rpc.hpp"
#include "core/proto/transfer.hpp"
#include "core/util/sha256.hpp"
#include "tests/unit/support.hpp"

namespace fs = std::filesystem;
using fedcli::proto::ChunkReceiver;
using fedcli::proto::FileChunker;
using fedcli::proto::Fsync;
using fedcli::proto::Pipeline;
using fedcli::proto::Resume;
using fedcli::util::sha256_file;

namespace {

constexpr std::uint64_t k_mib = 1 << 20;

/// Writes `size` pseudo-random bytes (fixed seed) to `path`.
void write_random_file(const fs::path& path, std::uint64_t size, unsigned seed = 7) {
    std::mt19937_64 generator(seed);
    std::string data(size, '\0');
    for (auto& c : data) c = static_cast<char>(generator() & 0xff);
    fedcli::test::write_file(path, data);
}

/// Feeds chunks from `chunker` (from its current offset) into `receiver`, stopping after
/// `max_chunks` chunks when given.
void pump(FileChunker& chunker, ChunkReceiver& receiver,
          std::optional<int> max_chunks = std::nullopt) {
    for (int sent = 0; !chunker.done() && (!max_chunks || sent < *max_chunks); ++sent) {
        std::uint64_t offset = chunker.offset();
        receiver.write(offset, chunker.next());
    }
}

}  // namespace

TEST_CASE("chunker and receiver round-trip a file of odd size") {
    fedcli::test::TempDir dir;
    const std::uint64_t size = 5 * k_mib + 12345;
    write_random_file(dir / "source.bin", size);
    const std::string sha = sha256_file(dir / "source.bin");

    FileChunker chunker(dir / "source.bin");
    CHECK(chunker.size() == size);
    ChunkReceiver receiver(dir / "copy.bin", size, sha, "test transfer", Resume::no, Fsync::yes);
    int chunks = 0;
    while (!chunker.done()) {
        std::uint64_t offset = chunker.offset();
        auto chunk = chunker.next();
        CHECK(chunk.size() <= fedcli::proto::k_default_chunk_size);
        receiver.write(offset, chunk);
        ++chunks;
    }
    CHECK(chunks == 6);
    CHECK(chunker.next().empty());
    CHECK(chunker.sha256_hex() == sha);
    CHECK(fs::exists(ChunkReceiver::part_path(dir / "copy.bin")));
    CHECK_FALSE(fs::exists(dir / "copy.bin"));
    CHECK(receiver.finish() == sha);
    CHECK(receiver.finished());
    CHECK_FALSE(fs::exists(ChunkReceiver::part_path(dir / "copy.bin")));
    CHECK(sha256_file(dir / "copy.bin") == sha);
}

TEST_CASE("next_into reads chunks into the caller's reused buffer, from an offset") {
    fedcli::test::TempDir dir;
    const std::uint64_t size = 2 * k_mib + 5;
    write_random_file(dir / "source.bin", size, 3);
    const std::string whole = fedcli::test::read_file(dir / "source.bin");

    FileChunker chunker(dir / "source.bin", 7, k_mib);
    std::string buffer;
    std::string copy;
    std::vector<std::size_t> sizes;
    const char* reused = nullptr;
    while (!chunker.done()) {
        const std::uint64_t offset = chunker.offset();
        const std::size_t got = chunker.next_into(buffer);
        CHECK(buffer.size() == got);
        CHECK(buffer == whole.substr(offset, got));
        if (sizes.empty()) reused = buffer.data();
        if (sizes.size() == 1) CHECK(buffer.data() == reused);  // shorter: same allocation
        sizes.push_back(got);
        copy += buffer;
    }
    CHECK(sizes == std::vector<std::size_t>{k_mib, size - 7 - k_mib});
    CHECK(copy == whole.substr(7));
    CHECK(chunker.sha256_hex() ==
          fedcli::util::sha256_hex(std::as_bytes(std::span(whole.data() + 7, whole.size() - 7))));
    CHECK(chunker.next_into(buffer) == 0);
    CHECK(buffer.empty());
}

TEST_CASE("a pipelined receiver writes and hashes every chunk on its own thread") {
    fedcli::test::TempDir dir;
    const std::uint64_t size = 9 * k_mib + 4321;  // more than the queue holds
    write_random_file(dir / "source.bin", size, 5);
    const std::string sha = sha256_file(dir / "source.bin");
    {
        FileChunker chunker(dir / "source.bin");
        ChunkReceiver receiver(dir / "copy.bin", size, sha, "pipelined", Resume::no, Fsync::no,
                               Pipeline::yes);
        pump(chunker, receiver);
        CHECK(receiver.bytes_received() == size);
        CHECK(receiver.finish() == sha);
    }
    CHECK(sha256_file(dir / "copy.bin") == sha);

    // A refused chunk, and the end of the receiver, leave exactly the accepted bytes on disk.
    {
        FileChunker chunker(dir / "source.bin", 0, 300'000);
        ChunkReceiver receiver(dir / "again.bin", size, sha, "pipelined", Resume::no, Fsync::no,
                               Pipeline::yes);
        pump(chunker, receiver, 3);
        CHECK_THROWS_WITH(receiver.write(5, chunker.next()),
                          Catch::Contains("pipelined: out-of-order chunk: expected offset 900000"));
        CHECK(ChunkReceiver::partial_size(dir / "again.bin") == 900'000);
        receiver.write(900'000, std::string_view("x"));  // queued, written by the destructor
    }
    CHECK(ChunkReceiver::partial_size(dir / "again.bin") == 900'001);

    // abort() drops what is queued and removes the .part file.
    FileChunker chunker(dir / "source.bin");
    ChunkReceiver receiver(dir / "third.bin", size, sha, "pipelined", Resume::no, Fsync::no,
                           Pipeline::yes);
    pump(chunker, receiver, 4);
    receiver.abort();
    CHECK_FALSE(fs::exists(ChunkReceiver::part_path(dir / "third.bin")));
}

TEST_CASE("an empty file round-trips") {
    fedcli::test::TempDir dir;
    fedcli::test::write_file(dir / "empty", "");
    const std::string empty_sha = sha256_file(dir / "empty");
    FileChunker empty(dir / "empty");
    CHECK(empty.done());
    CHECK(empty.next().empty());
    ChunkReceiver receiver(dir / "empty.copy", 0, empty_sha, "empty");
    CHECK(receiver.finish() == empty_sha);
    CHECK(fs::file_size(dir / "empty.copy") == 0);
}

TEST_CASE("an interrupted transfer resumes from what the .part file holds") {
    fedcli::test::TempDir dir;
    const std::uint64_t size = 3 * k_mib + 777;
    write_random_file(dir / "source.bin", size, 11);
    const std::string sha = sha256_file(dir / "source.bin");
    // An arbitrary offset that is not a chunk boundary: chunks of 100000 bytes, 17 sent.
    const std::size_t chunk_size = 100000;
    {
        FileChunker chunker(dir / "source.bin", 0, chunk_size);
        ChunkReceiver receiver(dir / "copy.bin", size, sha, "first attempt");
        pump(chunker, receiver, 17);
        CHECK(receiver.bytes_received() == 17 * chunk_size);
        // Finishing early is refused and keeps the partial file for a resume.
        CHECK_THROWS_WITH(receiver.finish(), Catch::Contains("incomplete: received 1700000"));
    }  // connection lost: the receiver goes away without finish()
    CHECK(ChunkReceiver::partial_size(dir / "copy.bin") == 17 * chunk_size);

    ChunkReceiver resumed(dir / "copy.bin", size, sha, "second attempt", Resume::yes);
    REQUIRE(resumed.bytes_received() == 17 * chunk_size);
    FileChunker rest(dir / "source.bin", resumed.bytes_received());  // default 1 MiB chunks
    pump(rest, resumed);
    CHECK(resumed.finish() == sha);
    CHECK(sha256_file(dir / "copy.bin") == sha);

    SECTION("Resume::no starts over") {
        fedcli::test::write_file(ChunkReceiver::part_path(dir / "again.bin"), "stale bytes");
        ChunkReceiver fresh(dir / "again.bin", size, sha, "fresh", Resume::no);
        CHECK(fresh.bytes_received() == 0);
    }
    SECTION("a .part longer than the declared size is discarded") {
        fedcli::test::write_file(ChunkReceiver::part_path(dir / "small.bin"), "0123456789");
        ChunkReceiver small(dir / "small.bin", 4, sha, "small", Resume::yes);
        CHECK(small.bytes_received() == 0);
    }
}

TEST_CASE("a sha256 mismatch is refused and the partial file removed") {
    fedcli::test::TempDir dir;
    write_random_file(dir / "source.bin", 2 * k_mib + 3);
    const std::string wrong_sha(64, 'a');
    FileChunker chunker(dir / "source.bin");
    ChunkReceiver receiver(dir / "copy.bin", chunker.size(), wrong_sha, "upload of model aaaa");
    pump(chunker, receiver);
    CHECK_THROWS_WITH(receiver.finish(),
                      Catch::StartsWith("upload of model aaaa: sha256 mismatch: expected aaaa") &&
                          Catch::Contains(sha256_file(dir / "source.bin")));
    CHECK_FALSE(fs::exists(ChunkReceiver::part_path(dir / "copy.bin")));
    CHECK_FALSE(fs::exists(dir / "copy.bin"));

    CHECK_THROWS_WITH(ChunkReceiver(dir / "x", 1, "not-a-sha", "bad header"),
                      Catch::Contains("bad header: expected sha256 must be 64 hex digits"));
}

TEST_CASE("more data than declared is refused") {
    fedcli::test::TempDir dir;
    write_random_file(dir / "source.bin", 1000);
    const std::string sha = sha256_file(dir / "source.bin");
    FileChunker chunker(dir / "source.bin", 0, 600);
    ChunkReceiver receiver(dir / "copy.bin", 999, sha, "download of package 1234");
    receiver.write(0, chunker.next());
    CHECK_THROWS_WITH(receiver.write(600, chunker.next()),
                      Catch::Contains("download of package 1234: more data than declared: chunk "
                                      "of 400 bytes at offset 600 would exceed the declared "
                                      "size of 999 bytes"));
    CHECK(receiver.bytes_received() == 600);  // the refused chunk was not written
    CHECK(ChunkReceiver::partial_size(dir / "copy.bin") == 600);
}

TEST_CASE("chunks out of order are refused") {
    fedcli::test::TempDir dir;
    write_random_file(dir / "source.bin", 1000);
    const std::string sha = sha256_file(dir / "source.bin");
    ChunkReceiver receiver(dir / "copy.bin", 1000, sha, "upload t-1");
    receiver.write(0, std::string_view("0123456789"));
    CHECK_THROWS_WITH(
        receiver.write(20, std::string_view("x")),
        Catch::Contains("upload t-1: out-of-order chunk: expected offset 10, got 20"));
    CHECK_THROWS_WITH(receiver.write(0, std::string_view("x")),
                      Catch::Contains("expected offset 10, got 0"));
    CHECK(receiver.bytes_received() == 10);

    CHECK_THROWS_WITH(FileChunker(dir / "source.bin", 1001),
                      Catch::Contains("start offset 1001 is past the end"));
    CHECK_THROWS_WITH(FileChunker(dir / "missing.bin"),
                      Catch::Contains("missing.bin: cannot open"));
}

// ---------------------------------------------------------------------------------------
// A minimal Transfer service over the helpers: files stored under `root` by sha256.

namespace {

namespace v1 = fedcli::v1;

class TestTransferService final : public v1::Transfer::Service {
  public:
    explicit TestTransferService(fs::path root) : m_root(std::move(root)) {}

    grpc::Status Upload(grpc::ServerContext*, grpc::ServerReader<v1::UploadChunk>* reader,
                        v1::UploadResult* result) override {
        v1::UploadChunk chunk;
        if (!reader->Read(&chunk) || !chunk.has_header()) {
            return {grpc::StatusCode::INVALID_ARGUMENT, "first upload chunk must be a header"};
        }
        const v1::UploadHeader header = chunk.header();
        try {
            ChunkReceiver receiver(m_root / header.sha256(), header.size(), header.sha256(),
                                   "upload of " + header.sha256());
            if (receiver.bytes_received() != header.resume_offset()) {
                return {grpc::StatusCode::FAILED_PRECONDITION,
                        "resume offset " + std::to_string(header.resume_offset()) +
                            " but server holds " + std::to_string(receiver.bytes_received())};
            }
            while (reader->Read(&chunk)) {
                if (!chunk.has_data()) {
                    return {grpc::StatusCode::INVALID_ARGUMENT, "second header in upload"};
                }
                receiver.write(chunk.data().offset(), chunk.data().data());
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
        const fs::path path = m_root / request->sha256();
        if (request->sha256().empty() || !fs::exists(path)) {
            return {grpc::StatusCode::NOT_FOUND, "no file " + request->sha256()};
        }
        return fedcli::proto::serve_download(nullptr, *writer, path, request->sha256(),
                                             request->offset(), "download");
    }

    grpc::Status QueryUpload(grpc::ServerContext*, const v1::UploadQuery* query,
                             v1::UploadState* state) override {
        state->set_complete(fs::exists(m_root / query->sha256()));
        state->set_bytes_received(ChunkReceiver::partial_size(m_root / query->sha256()));
        return grpc::Status::OK;
    }

  private:
    fs::path m_root;
};

}  // namespace

TEST_CASE("a 3 MiB file goes up and down through a real gRPC Transfer service") {
    fedcli::test::TempDir dir;
    fs::create_directories(dir / "server");
    fs::create_directories(dir / "client");
    const std::uint64_t size = 3 * k_mib + 17;
    write_random_file(dir / "client" / "model.npz", size, 3);
    const std::string sha = sha256_file(dir / "client" / "model.npz");

    TestTransferService service(dir / "server");
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    REQUIRE(server);
    REQUIRE(port > 0);

    auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                       grpc::InsecureChannelCredentials());
    auto stub = v1::Transfer::NewStub(channel);

    // Upload: header, then 1 MiB data chunks.
    {
        grpc::ClientContext context;
        v1::UploadResult result;
        auto writer = stub->Upload(&context, &result);
        v1::UploadChunk chunk;
        auto* header = chunk.mutable_header();
        header->set_kind(v1::TRANSFER_KIND_MODEL);
        header->set_size(size);
        header->set_sha256(sha);
        header->set_task_id("t-1");
        REQUIRE(writer->Write(chunk));
        FileChunker chunker(dir / "client" / "model.npz");
        while (!chunker.done()) {
            auto* data = chunk.mutable_data();
            data->set_offset(chunker.offset());
            auto view = chunker.next_view();
            data->set_data(view.data(), view.size());
            REQUIRE(writer->Write(chunk));
        }
        writer->WritesDone();
        grpc::Status status = writer->Finish();
        INFO(status.error_message());
        REQUIRE(status.ok());
        CHECK(result.sha256() == sha);
        CHECK(result.size() == size);
        CHECK(sha256_file(dir / "server" / sha) == sha);
    }

    // The server now reports the upload complete (nothing to resume).
    {
        grpc::ClientContext context;
        v1::UploadQuery query;
        query.set_kind(v1::TRANSFER_KIND_MODEL);
        query.set_sha256(sha);
        v1::UploadState state;
        REQUIRE(stub->QueryUpload(&context, query, &state).ok());
        CHECK(state.complete());
        CHECK(state.bytes_received() == 0);
    }

    // Download: header with size and sha256, then data chunks written as they arrive.
    {
        grpc::ClientContext context;
        v1::DownloadRequest request;
        request.set_kind(v1::TRANSFER_KIND_MODEL);
        request.set_sha256(sha);
        auto reader = stub->Download(&context, request);
        v1::DownloadChunk chunk;
        REQUIRE(reader->Read(&chunk));
        REQUIRE(chunk.has_header());
        CHECK(chunk.header().size() == size);
        ChunkReceiver receiver(dir / "client" / "downloaded.npz", chunk.header().size(),
                               chunk.header().sha256(), "download of " + sha);
        int chunks = 0;
        while (reader->Read(&chunk)) {
            REQUIRE(chunk.has_data());
            receiver.write(chunk.data().offset(), chunk.data().data());
            ++chunks;
        }
        grpc::Status status = reader->Finish();
        INFO(status.error_message());
        REQUIRE(status.ok());
        CHECK(chunks == 4);
        CHECK(receiver.finish() == sha);
        CHECK(sha256_file(dir / "client" / "downloaded.npz") == sha);
    }

    // A corrupted upload is refused with the receiver's reason, and nothing is stored.
    {
        grpc::ClientContext context;
        v1::UploadResult result;
        auto writer = stub->Upload(&context, &result);
        v1::UploadChunk chunk;
        const std::string wrong_sha(64, 'b');
        chunk.mutable_header()->set_size(4);
        chunk.mutable_header()->set_sha256(wrong_sha);
        REQUIRE(writer->Write(chunk));
        chunk.mutable_data()->set_offset(0);
        chunk.mutable_data()->set_data("abcd");
        writer->Write(chunk);
        writer->WritesDone();
        grpc::Status status = writer->Finish();
        CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
        CHECK_THAT(status.error_message(), Catch::Contains("sha256 mismatch"));
        CHECK_FALSE(fs::exists(dir / "server" / wrong_sha));
        CHECK_FALSE(fs::exists(ChunkReceiver::part_path(dir / "server" / wrong_sha)));
    }

    server->Shutdown();
}
