// Chunked file transfer helpers for the fedcli.v1 Transfer service (docs/protocol.md).
//
// A file moves as a sequence of chunks (default 1 MiB) and is never held whole in memory:
// FileChunker reads the sending side's file chunk by chunk into one reused buffer, and
// ChunkReceiver writes the receiving side's chunks straight to "<destination>.part",
// requiring contiguous offsets and never more bytes than the header declared. finish()
// checks the size and the sha256 announced in the header and only then renames the .part
// file onto the destination (rename(2): readers see either no file or the whole, verified
// one). An interrupted transfer leaves the .part file behind; a later ChunkReceiver with
// Resume::yes reopens it, re-hashes what it holds and continues from bytes_received(). A
// sha256 mismatch removes the .part file, so the retry starts clean.
//
// The helpers know nothing about gRPC streams, so they can be tested alone and reused by
// the combiner, the client daemon and the operator commands.
//
// Errors are fedcli::Error whose message starts with the transfer's description (e.g.
// "upload of model 3fa2... (task t-17)") and says what was wrong.
//
// Thread-safety: a FileChunker or ChunkReceiver is used by one thread at a time. Two
// receivers must not write the same destination at once (the caller serializes transfers
// of one file, e.g. by sha256).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/util/sha256.hpp"

namespace fedcli::proto {

/// Chunk size senders use (1 MiB): large enough to amortize per-message cost, well below
/// gRPC's default 4 MiB message limit.
inline constexpr std::size_t k_default_chunk_size = std::size_t{1} << 20;

/// Reads a file sequentially in chunks, from a start offset, hashing what it reads.
class FileChunker {
  public:
    /// Opens `path` and positions at `offset` (0 ≤ offset ≤ file size). Throws
    /// fedcli::Error naming the file when it cannot be opened or the offset is past the end.
    /// With `hash` false, sha256_hex() is not available (senders that already know the
    /// digest, such as a content-addressed store or an uploader that hashed first, skip a
    /// second pass of SHA-256 over the file).
    explicit FileChunker(const std::filesystem::path& path, std::uint64_t offset = 0,
                         std::size_t chunk_size = k_default_chunk_size, bool hash = true);
    ~FileChunker();
    FileChunker(const FileChunker&) = delete;
    FileChunker& operator=(const FileChunker&) = delete;

    /// File size when it was opened.
    std::uint64_t size() const { return m_size; }
    /// Offset of the next chunk next() returns.
    std::uint64_t offset() const { return m_offset; }
    /// True once every byte up to size() has been returned.
    bool done() const { return m_offset >= m_size; }

    /// Returns the next chunk (at most chunk_size bytes, starting at offset() before the
    /// call), or an empty span when done(). The span points into a buffer reused by the next
    /// call. Throws fedcli::Error when reading fails or the file shrank while being read.
    std::span<const std::byte> next();
    /// The same chunk as a string_view (what protobuf `bytes` setters take).
    std::string_view next_view();

    /// Hex sha256 of the bytes returned so far, i.e. of [start offset, offset()); when
    /// started at 0 and done(), the sha256 of the whole file. Call once, at the end.
    std::string sha256_hex() { return m_sha256.hex_digest(); }
    bool hashing() const { return m_hash; }

  private:
    std::filesystem::path m_path;
    int m_fd = -1;
    std::uint64_t m_size = 0;
    std::uint64_t m_offset = 0;
    std::vector<std::byte> m_buffer;
    bool m_hash = true;
    util::Sha256 m_sha256;
};

/// Whether a receiver continues an existing .part file or starts over.
enum class Resume { yes, no };
/// Whether finish() flushes the file and its directory to stable storage before returning.
enum class Fsync { yes, no };

/// Receives chunks of a file of declared size and sha256 into `<destination>.part`.
class ChunkReceiver {
  public:
    /// Prepares to receive `declared_size` bytes whose sha256 is `expected_sha256` (64 hex
    /// digits, either case) into `destination`. With Resume::yes an existing .part file is
    /// kept and re-hashed, and bytes_received() starts at its size (a .part larger than
    /// declared_size is not ours and is discarded); with Resume::no it is truncated.
    /// `description` names the transfer in every error message. The destination's folder
    /// must exist. Throws fedcli::Error on a malformed sha256 or when the .part file cannot
    /// be opened or read.
    ChunkReceiver(std::filesystem::path destination, std::uint64_t declared_size,
                  std::string expected_sha256, std::string description, Resume resume = Resume::yes,
                  Fsync fsync = Fsync::no);
    /// Closes the .part file and leaves it in place (an unfinished transfer stays
    /// resumable); call abort() to remove it instead.
    ~ChunkReceiver();
    ChunkReceiver(const ChunkReceiver&) = delete;
    ChunkReceiver& operator=(const ChunkReceiver&) = delete;

    /// The .part file of a destination.
    static std::filesystem::path part_path(const std::filesystem::path& destination);
    /// Size of a destination's .part file (bytes a resumed transfer would keep), 0 if none.
    static std::uint64_t partial_size(const std::filesystem::path& destination);

    const std::filesystem::path& destination() const { return m_destination; }
    std::uint64_t declared_size() const { return m_declared_size; }
    /// Bytes written so far: the offset the next chunk must have.
    std::uint64_t bytes_received() const { return m_received; }
    /// True after a successful finish().
    bool finished() const { return m_finished; }

    /// Appends a chunk. Throws fedcli::Error (and writes nothing) when `offset` is not
    /// bytes_received() or the chunk would take the file past declared_size(), or when
    /// writing fails.
    void write(std::uint64_t offset, std::span<const std::byte> data);
    void write(std::uint64_t offset, std::string_view data);

    /// Completes the transfer: checks that declared_size() bytes arrived (if not, throws and
    /// keeps the .part file for a resume) and that their sha256 is the expected one (if
    /// not, removes the .part file and throws), then renames the .part file onto the
    /// destination, replacing any file there. Returns the hex sha256.
    std::string finish();
    /// Gives the transfer up: closes and removes the .part file. Never throws.
    void abort() noexcept;

  private:
    void close_file() noexcept;
    [[noreturn]] void fail(const std::string& what) const;

    std::filesystem::path m_destination;
    std::filesystem::path m_part;
    std::uint64_t m_declared_size;
    std::string m_expected_sha256;
    std::string m_description;
    Fsync m_fsync;
    int m_fd = -1;
    std::uint64_t m_received = 0;
    bool m_finished = false;
    util::Sha256 m_sha256;
};

}  // namespace fedcli::proto
