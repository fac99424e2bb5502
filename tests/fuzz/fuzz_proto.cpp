// libFuzzer target for the fedcli.v1 messages and the protocol helpers in core
// (core/proto/transfer.hpp, core/util).
//
// An input is a sequence of records, each a 2-byte little-endian length and that many bytes.
// Every record is parsed as each message a peer can send (ClientMessage, ServerMessage,
// UploadChunk, DownloadChunk, UpdateReport, ValidationReport, UploadQuery, DownloadRequest,
// StartSessionRequest), and a message that parses must serialize, parse again and serialize
// to the same bytes. The JSON payloads the combiner stores (UpdateReport.metadata_json,
// ValidationReport.metrics_json, Task.settings_json) go through util::check_json_size and
// then nlohmann::json, as the combiner does. Then the records drive an upload the way the
// combiner's Transfer.Upload does: the first must be an UploadChunk with a header (kind,
// 64-hex sha256 checked with util::is_sha256; the all-zero digest stands for "the sha256 of
// the data that follows", so the success path is reachable), the rest data chunks fed to a
// proto::ChunkReceiver in a sandbox folder, then finish(). fedcli::Error is the only
// acceptable failure; crashes, sanitizer reports, leaks, hangs, any other exception and
// broken invariants (std::abort) are findings.
//
// Build and run with scripts/fuzz (clang, -DFEDCLI_FUZZ=ON).
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/stubs/logging.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "core/error.hpp"
#include "core/proto/fedcli.pb.h"
#include "core/proto/transfer.hpp"
#include "core/util/ids.hpp"
#include "core/util/limits.hpp"
#include "core/util/sha256.hpp"
#include "tests/fuzz/fuzz_support.hpp"

namespace {

namespace fs = std::filesystem;
namespace v1 = fedcli::v1;
namespace proto = fedcli::proto;
namespace util = fedcli::util;

constexpr std::uint64_t k_max_upload_bytes = 1 << 20;

[[noreturn]] void finding(const std::string& what) {
    fedcli::fuzz::finding("fuzz_proto", what);
}

const fs::path& sandbox() {
    return fedcli::fuzz::sandbox("fedcli-fuzz-proto");
}

std::vector<std::string_view> split_records(std::string_view input) {
    std::vector<std::string_view> records;
    while (input.size() >= 2 && records.size() < 64) {
        std::size_t length = static_cast<unsigned char>(input[0]) |
                             (static_cast<std::size_t>(static_cast<unsigned char>(input[1])) << 8);
        input.remove_prefix(2);
        length = std::min(length, input.size());
        records.push_back(input.substr(0, length));
        input.remove_prefix(length);
    }
    return records;
}

void check_json(const std::string& text, std::string_view what) {
    try {
        util::check_json_size(text, util::k_default_max_json_bytes, what);
        auto parsed = nlohmann::json::parse(text, nullptr, false);
        if (!parsed.is_discarded()) (void)parsed.dump();
    } catch (const fedcli::Error&) {
    }
}

/// Deterministic serialization (map entries sorted), so two serializations compare.
std::string serialize(const google::protobuf::MessageLite& message) {
    std::string bytes;
    {
        google::protobuf::io::StringOutputStream stream(&bytes);
        google::protobuf::io::CodedOutputStream coded(&stream);
        coded.SetSerializationDeterministic(true);
        if (!message.SerializeToCodedStream(&coded)) finding("cannot serialize a parsed message");
    }
    return bytes;
}

/// Parses `record` as Message; checks the serialization round trip; returns whether it parsed.
template <class Message>
bool parse(std::string_view record, Message& message) {
    if (!message.ParseFromArray(record.data(), static_cast<int>(record.size()))) return false;
    std::string once = serialize(message);
    Message again;
    if (!again.ParseFromString(once)) finding("cannot parse a serialized message");
    std::string twice = serialize(again);
    if (twice != once) {
        finding(message.GetTypeName() + " serialization is not stable");
    }
    return true;
}

void parse_all(std::string_view record) {
    v1::ClientMessage client;
    parse(record, client);
    v1::ServerMessage server;
    if (parse(record, server) && server.has_task()) {
        check_json(server.task().settings_json(), "task settings");
    }
    v1::UploadChunk upload;
    parse(record, upload);
    v1::DownloadChunk download;
    parse(record, download);
    v1::UpdateReport update;
    if (parse(record, update)) {
        check_json(update.metadata_json(), "update metadata");
        (void)util::is_sha256(update.model_id());
    }
    v1::ValidationReport validation;
    if (parse(record, validation)) check_json(validation.metrics_json(), "validation metrics");
    v1::UploadQuery query;
    if (parse(record, query)) (void)util::is_sha256(query.sha256());
    v1::DownloadRequest request;
    parse(record, request);
    v1::StartSessionRequest session;
    parse(record, session);
}

/// The combiner's upload handling, minus gRPC and the store.
void upload(const std::vector<std::string_view>& records) {
    if (records.empty()) return;
    v1::UploadChunk first;
    if (!first.ParseFromArray(records[0].data(), static_cast<int>(records[0].size())) ||
        !first.has_header()) {
        return;
    }
    const v1::UploadHeader& header = first.header();
    if (header.kind() != v1::TRANSFER_KIND_MODEL && header.kind() != v1::TRANSFER_KIND_PACKAGE) {
        return;
    }
    if (!util::is_sha256(header.sha256()) || header.size() > k_max_upload_bytes) return;

    std::vector<v1::DataChunk> chunks;
    util::Sha256 digest;
    for (std::size_t i = 1; i < records.size(); ++i) {
        v1::UploadChunk chunk;
        if (!chunk.ParseFromArray(records[i].data(), static_cast<int>(records[i].size())) ||
            !chunk.has_data()) {
            return;  // the combiner refuses a second header or an unparsable message
        }
        const std::string& bytes = chunk.data().data();
        digest.update(std::span<const std::byte>(reinterpret_cast<const std::byte*>(bytes.data()),
                                                 bytes.size()));
        chunks.push_back(chunk.data());
    }
    std::string sha256 = header.sha256();
    if (sha256 == std::string(64, '0')) sha256 = digest.hex_digest();

    const fs::path destination = sandbox() / "upload.bin";
    std::error_code error;
    fs::remove(destination, error);
    try {
        proto::ChunkReceiver receiver(
            destination, header.size(), sha256, "fuzz upload",
            header.resume_offset() > 0 ? proto::Resume::yes : proto::Resume::no);
        for (const auto& chunk : chunks) {
            std::uint64_t before = receiver.bytes_received();
            receiver.write(chunk.offset(), chunk.data());
            if (receiver.bytes_received() != before + chunk.data().size()) {
                finding("bytes_received does not follow the chunks written");
            }
            if (receiver.bytes_received() > header.size()) finding("more bytes than declared");
        }
        std::string got = receiver.finish();
        if (util::lowercase(got) != util::lowercase(sha256))
            finding("finish() accepted a wrong sha256");
        if (fs::file_size(destination) != header.size()) finding("finish() accepted a wrong size");
    } catch (const fedcli::Error&) {
    }
    // A .part file may stay behind for a resume; a later input then resumes from it.
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // Invalid UTF-8 in string fields is a parse failure, which protobuf also logs; at
    // thousands of inputs a second the log would cost more than the parsing.
    google::protobuf::SetLogHandler(nullptr);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view input(reinterpret_cast<const char*>(data), size);
    auto records = split_records(input);
    for (auto record : records) parse_all(record);
    upload(records);
    return 0;
}
