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
// With Pipeline::yes a ChunkReceiver pipelines: write() checks a chunk and queues it, and a
// thread of the receiver's own appends it to the .part file and hashes it, so the caller
// goes back to the network while the previous chunks are written and hashed (SHA-256 and
// the page-cache copy are most of a receiver's CPU time). The queue holds at most
// k_pipeline_bytes (and one chunk more while it is empty), so memory stays bounded
// whatever the file's size; a full queue makes write() wait, which stops reading from the
// network and lets flow control hold the sender back. write() copies the chunk into one of
// the receiver's own buffers, which are reused chunk after chunk: on the VMs fedcli was
// measured on, touching freshly allocated memory costs more than the copy.
//
// Thread-safety: a FileChunker or ChunkReceiver is used by one thread at a time (the
// receiver's own writer thread is internal). Two receivers must not write the same
// destination at once (the caller serializes transfers of one file, e.g. by sha256).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/util/sha256.hpp"

namespace fedcli::proto {

/// Chunk size senders use (1 MiB): large enough to amortize per-message cost, well below
/// gRPC's default 4 MiB message limit.
inline constexpr std::size_t k_default_chunk_size = std::size_t{1} << 20;

/// Bytes a ChunkReceiver queues for its writer thread at most (4 chunks of 1 MiB).
inline constexpr std::size_t k_pipeline_bytes = std::size_t{4} << 20;

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
    /// Reads the next chunk straight into `buffer`, resized to the chunk with its capacity
    /// reused (e.g. the `bytes` field of the message about to be sent: no copy, and no
    /// fresh memory per chunk), and returns its size; 0 when done().
    std::size_t next_into(std::string& buffer);

    /// Hex sha256 of the bytes returned so far, i.e. of [start offset, offset()); when
    /// started at 0 and done(), the sha256 of the whole file. Call once, at the end.
    std::string sha256_hex() { return m_sha256.hex_digest(); }
    bool hashing() const { return m_hash; }

  private:
    /// Reads the next chunk into `data` (room for chunk_size bytes), hashes it, advances.
    std::size_t read_chunk(std::byte* data);

    std::filesystem::path m_path;
    int m_fd = -1;
    std::size_t m_chunk_size = 0;
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
/// Whether a receiver writes and hashes on a thread of its own (up to k_pipeline_bytes
/// queued; with 1 MiB chunks about 6 MiB of buffers per transfer) or in write().
/// fedcli's client downloads pipeline; the combiner, which may receive many uploads at
/// once, does not.
enum class Pipeline { yes, no };

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
                  Fsync fsync = Fsync::no, Pipeline pipeline = Pipeline::no);
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
    /// Bytes accepted so far: the offset the next chunk must have. They reach the .part
    /// file shortly after (flush() waits for that).
    std::uint64_t bytes_received() const { return m_received; }
    /// True after a successful finish().
    bool finished() const { return m_finished; }

    /// Appends a chunk (with Pipeline::yes: queued for the writer thread, the bytes copied
    /// into a reused buffer). Throws fedcli::Error (and writes nothing) when `offset` is not
    /// bytes_received() or the chunk would take the file past declared_size(), or when
    /// writing an earlier chunk failed; before it throws, every chunk accepted earlier is
    /// on disk.
    void write(std::uint64_t offset, std::span<const std::byte> data);
    void write(std::uint64_t offset, std::string_view data);
    /// Waits until every accepted chunk is written and hashed. Throws fedcli::Error when
    /// writing one failed.
    void flush();

    /// Completes the transfer: checks that declared_size() bytes arrived (if not, throws and
    /// keeps the .part file for a resume) and that their sha256 is the expected one (if
    /// not, removes the .part file and throws), then renames the .part file onto the
    /// destination, replacing any file there. Returns the hex sha256.
    std::string finish();
    /// Gives the transfer up: closes and removes the .part file. Never throws.
    void abort() noexcept;

  private:
    struct Pending {
        std::uint64_t offset = 0;
        std::string data;
    };

    void check_chunk(std::uint64_t offset, std::size_t size);
    /// Appends `data` to the .part file and hashes it; returns the error ("" when none).
    /// Runs on the writer thread when pipelined, else on the caller's.
    std::string write_part(std::uint64_t offset, std::span<const std::byte> data);
    void enqueue(std::uint64_t offset, std::string&& data);
    void run_writer();
    /// Waits for the queue to empty; returns the writer's error ("" when none).
    std::string drain();
    /// Ends the writer thread; with `discard`, chunks still queued are dropped.
    void stop_writer(bool discard) noexcept;
    void close_file() noexcept;
    [[noreturn]] void fail(const std::string& what) const;

    std::filesystem::path m_destination;
    std::filesystem::path m_part;
    std::uint64_t m_declared_size;
    std::string m_expected_sha256;
    std::string m_description;
    Fsync m_fsync;
    Pipeline m_pipeline;
    int m_fd = -1;
    std::uint64_t m_received = 0;
    bool m_finished = false;
    util::Sha256 m_sha256;  ///< the writer thread's while it runs (read after drain())

    // Writer thread and its queue (m_mutex guards everything below it).
    std::thread m_writer;
    std::mutex m_mutex;
    std::condition_variable m_work;  ///< the writer waits for chunks or stop
    std::condition_variable m_room;  ///< write(), flush() wait for the writer
    std::deque<Pending> m_queue;
    std::vector<std::string> m_spare;  ///< written buffers kept for reuse
    std::size_t m_queued_bytes = 0;    ///< in m_queue and being written
    bool m_writing = false;
    bool m_stop = false;
    bool m_discard = false;
    std::string m_write_error;
};

}  // namespace fedcli::proto
