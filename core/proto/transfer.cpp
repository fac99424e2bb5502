#include "core/proto/transfer.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>
#include <vector>

#include "core/error.hpp"

namespace fedcli::proto {

namespace {

/// Buffers a receiver keeps for reuse: the queue's k_pipeline_bytes in 1 MiB chunks, plus
/// the one being written.
constexpr std::size_t k_spare_buffers = k_pipeline_bytes / k_default_chunk_size + 1;

std::string errno_text(int error) {
    return std::strerror(error);
}

/// Reads up to `size` bytes, retrying on EINTR and short reads; returns bytes read (less
/// than size only at end of file).
std::size_t read_fully(int fd, std::byte* data, std::size_t size) {
    std::size_t done = 0;
    while (done < size) {
        ssize_t n = ::read(fd, data + done, size - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw std::system_error(errno, std::generic_category());
        }
        if (n == 0) break;
        done += static_cast<std::size_t>(n);
    }
    return done;
}

void write_fully(int fd, const std::byte* data, std::size_t size) {
    std::size_t done = 0;
    while (done < size) {
        ssize_t n = ::write(fd, data + done, size - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw std::system_error(errno, std::generic_category());
        }
        done += static_cast<std::size_t>(n);
    }
}

std::string normalized_sha256(std::string sha256, const std::string& description) {
    std::transform(sha256.begin(), sha256.end(), sha256.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    bool hex = sha256.size() == 64 && std::all_of(sha256.begin(), sha256.end(), [](char c) {
                   return std::isxdigit(static_cast<unsigned char>(c)) != 0;
               });
    if (!hex) {
        throw Error(description + ": expected sha256 must be 64 hex digits, got '" + sha256 + "'");
    }
    return sha256;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// FileChunker

FileChunker::FileChunker(const std::filesystem::path& path, std::uint64_t offset,
                         std::size_t chunk_size, bool hash)
    : m_path(path), m_offset(offset), m_hash(hash) {
    if (chunk_size == 0) throw Error(path.string() + ": chunk size must be positive");
    m_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (m_fd < 0) throw Error(path.string() + ": cannot open for reading: " + errno_text(errno));
    struct stat info {};
    if (::fstat(m_fd, &info) != 0) {
        int error = errno;
        ::close(m_fd);
        throw Error(path.string() + ": cannot stat: " + errno_text(error));
    }
    m_size = static_cast<std::uint64_t>(info.st_size);
    if (offset > m_size) {
        ::close(m_fd);
        throw Error(path.string() + ": start offset " + std::to_string(offset) +
                    " is past the end of the file (" + std::to_string(m_size) + " bytes)");
    }
    if (::lseek(m_fd, static_cast<off_t>(offset), SEEK_SET) < 0) {
        int error = errno;
        ::close(m_fd);
        throw Error(path.string() + ": cannot seek to " + std::to_string(offset) + ": " +
                    errno_text(error));
    }
    // Smaller for a small file; the buffer next() uses is allocated on its first call
    // (next_into() callers bring their own).
    m_chunk_size = static_cast<std::size_t>(
        std::min<std::uint64_t>(chunk_size, std::max<std::uint64_t>(m_size - offset, 1)));
}

FileChunker::~FileChunker() {
    if (m_fd >= 0) ::close(m_fd);
}

std::span<const std::byte> FileChunker::next() {
    if (done()) return {};
    if (m_buffer.size() < m_chunk_size) m_buffer.resize(m_chunk_size);
    const std::size_t got = read_chunk(m_buffer.data());
    return {m_buffer.data(), got};
}

std::size_t FileChunker::next_into(std::string& buffer) {
    if (done()) {
        buffer.clear();
        return 0;
    }
    buffer.resize(
        static_cast<std::size_t>(std::min<std::uint64_t>(m_chunk_size, m_size - m_offset)));
    return read_chunk(reinterpret_cast<std::byte*>(buffer.data()));
}

std::size_t FileChunker::read_chunk(std::byte* data) {
    const std::size_t want =
        static_cast<std::size_t>(std::min<std::uint64_t>(m_chunk_size, m_size - m_offset));
    std::size_t got = 0;
    try {
        got = read_fully(m_fd, data, want);
    } catch (const std::system_error& e) {
        throw Error(m_path.string() + ": read failed at offset " + std::to_string(m_offset) + ": " +
                    errno_text(e.code().value()));
    }
    if (got < want) {
        throw Error(m_path.string() + ": file shrank while being sent: ended at offset " +
                    std::to_string(m_offset + got) + ", expected " + std::to_string(m_size) +
                    " bytes");
    }
    m_offset += got;
    if (m_hash) m_sha256.update(data, got);
    return got;
}

std::string_view FileChunker::next_view() {
    auto chunk = next();
    return {reinterpret_cast<const char*>(chunk.data()), chunk.size()};
}

// ---------------------------------------------------------------------------------------
// ChunkReceiver

std::filesystem::path ChunkReceiver::part_path(const std::filesystem::path& destination) {
    std::filesystem::path part = destination;
    part += ".part";
    return part;
}

std::uint64_t ChunkReceiver::partial_size(const std::filesystem::path& destination) {
    std::error_code error;
    auto size = std::filesystem::file_size(part_path(destination), error);
    return error ? 0 : static_cast<std::uint64_t>(size);
}

ChunkReceiver::ChunkReceiver(std::filesystem::path destination, std::uint64_t declared_size,
                             std::string expected_sha256, std::string description, Resume resume,
                             Fsync fsync, Pipeline pipeline)
    : m_destination(std::move(destination)),
      m_part(part_path(m_destination)),
      m_declared_size(declared_size),
      m_expected_sha256(normalized_sha256(std::move(expected_sha256), description)),
      m_description(std::move(description)),
      m_fsync(fsync),
      m_pipeline(pipeline) {
    if (resume == Resume::yes && partial_size(m_destination) > m_declared_size) {
        resume = Resume::no;  // a longer .part belongs to another file: start over
    }
    int flags = O_RDWR | O_CREAT | O_CLOEXEC | (resume == Resume::no ? O_TRUNC : 0);
    m_fd = ::open(m_part.c_str(), flags, 0644);
    if (m_fd < 0) fail("cannot open " + m_part.string() + ": " + errno_text(errno));
    if (resume == Resume::yes) {
        // Re-hash what an earlier attempt kept, leaving the file position at its end.
        std::vector<std::byte> buffer(k_default_chunk_size);
        try {
            while (std::size_t got = read_fully(m_fd, buffer.data(), buffer.size())) {
                m_sha256.update(buffer.data(), got);
                m_received += got;
                if (got < buffer.size()) break;
            }
        } catch (const std::system_error& e) {
            close_file();
            fail("cannot read " + m_part.string() + " to resume: " + errno_text(e.code().value()));
        }
    }
}

ChunkReceiver::~ChunkReceiver() {
    stop_writer(false);  // what was accepted reaches the .part file, for a resume
    close_file();
}

void ChunkReceiver::close_file() noexcept {
    if (m_fd >= 0) {
        ::close(m_fd);
        m_fd = -1;
    }
}

void ChunkReceiver::fail(const std::string& what) const {
    throw Error(m_description + ": " + what);
}

void ChunkReceiver::check_chunk(std::uint64_t offset, std::size_t size) {
    if (m_fd < 0) fail("chunk at offset " + std::to_string(offset) + " after the transfer ended");
    // A refused chunk leaves the .part file holding exactly what was accepted before it.
    auto refuse = [&](const std::string& what) {
        const std::string error = drain();
        fail(error.empty() ? what : error);
    };
    if (offset != m_received) {
        refuse("out-of-order chunk: expected offset " + std::to_string(m_received) + ", got " +
               std::to_string(offset));
    }
    if (size > m_declared_size - m_received) {
        refuse("more data than declared: chunk of " + std::to_string(size) + " bytes at offset " +
               std::to_string(offset) + " would exceed the declared size of " +
               std::to_string(m_declared_size) + " bytes");
    }
}

std::string ChunkReceiver::write_part(std::uint64_t offset, std::span<const std::byte> data) {
    try {
        write_fully(m_fd, data.data(), data.size());
    } catch (const std::system_error& e) {
        return "cannot write " + m_part.string() + " at offset " + std::to_string(offset) + ": " +
               errno_text(e.code().value());
    }
    m_sha256.update(data.data(), data.size());
    return {};
}

void ChunkReceiver::write(std::uint64_t offset, std::span<const std::byte> data) {
    check_chunk(offset, data.size());
    if (data.empty()) return;
    if (m_pipeline == Pipeline::no) {
        const std::string error = write_part(offset, data);
        if (!error.empty()) fail(error);
        m_received += data.size();
        return;
    }
    std::string buffer;
    {
        std::lock_guard lock(m_mutex);
        if (!m_spare.empty()) {
            buffer = std::move(m_spare.back());
            m_spare.pop_back();
        }
    }
    buffer.assign(reinterpret_cast<const char*>(data.data()), data.size());
    enqueue(offset, std::move(buffer));
}

void ChunkReceiver::write(std::uint64_t offset, std::string_view data) {
    write(offset,
          std::span<const std::byte>(reinterpret_cast<const std::byte*>(data.data()), data.size()));
}

void ChunkReceiver::enqueue(std::uint64_t offset, std::string&& data) {
    const std::size_t size = data.size();
    std::unique_lock lock(m_mutex);
    if (!m_writer.joinable()) m_writer = std::thread([this] { run_writer(); });
    // Bounded: wait while the queue is full (one chunk always fits into an empty queue).
    m_room.wait(lock, [&] {
        return m_queued_bytes == 0 || m_queued_bytes + size <= k_pipeline_bytes ||
               !m_write_error.empty();
    });
    if (!m_write_error.empty()) {
        lock.unlock();
        fail(drain());
    }
    m_queue.push_back(Pending{offset, std::move(data)});
    m_queued_bytes += size;
    m_received += size;
    lock.unlock();
    m_work.notify_one();
}

void ChunkReceiver::run_writer() {
    std::unique_lock lock(m_mutex);
    while (true) {
        m_work.wait(lock, [&] { return !m_queue.empty() || m_stop; });
        if (m_queue.empty()) return;
        Pending chunk = std::move(m_queue.front());
        m_queue.pop_front();
        const bool skip = m_discard || !m_write_error.empty();
        m_writing = true;
        lock.unlock();
        std::string error;
        if (!skip) {
            error = write_part(chunk.offset,
                               std::span(reinterpret_cast<const std::byte*>(chunk.data.data()),
                                         chunk.data.size()));
        }
        const std::size_t size = chunk.data.size();
        lock.lock();
        m_writing = false;
        m_queued_bytes -= size;
        if (!error.empty() && m_write_error.empty()) m_write_error = std::move(error);
        // Keep the buffers for write() to copy into: allocating fresh ones would touch new
        // memory for every chunk (page faults cost more than the copy). Their number stays
        // bounded by the queue's.
        if (m_spare.size() < k_spare_buffers) {
            chunk.data.clear();
            m_spare.push_back(std::move(chunk.data));
        }
        m_room.notify_one();  // only the receiver's own thread ever waits for room
    }
}

std::string ChunkReceiver::drain() {
    std::unique_lock lock(m_mutex);
    m_room.wait(lock, [&] { return m_queue.empty() && !m_writing; });
    return m_write_error;
}

void ChunkReceiver::flush() {
    const std::string error = drain();
    if (!error.empty()) fail(error);
}

void ChunkReceiver::stop_writer(bool discard) noexcept {
    {
        std::lock_guard lock(m_mutex);
        m_stop = true;
        m_discard = m_discard || discard;
    }
    m_work.notify_one();
    if (m_writer.joinable()) m_writer.join();
}

std::string ChunkReceiver::finish() {
    if (m_finished) return m_expected_sha256;
    if (m_fd < 0) fail("finish() after the transfer was aborted");
    flush();
    if (m_received != m_declared_size) {
        fail("incomplete: received " + std::to_string(m_received) + " of " +
             std::to_string(m_declared_size) + " declared bytes (partial file kept to resume)");
    }
    std::string actual = m_sha256.hex_digest();
    if (actual != m_expected_sha256) {
        abort();
        fail("sha256 mismatch: expected " + m_expected_sha256 + ", received data hashes to " +
             actual + " (partial file removed)");
    }
    if (m_fsync == Fsync::yes && ::fsync(m_fd) != 0) {
        fail("cannot fsync " + m_part.string() + ": " + errno_text(errno));
    }
    close_file();
    std::error_code error;
    std::filesystem::rename(m_part, m_destination, error);
    if (error) {
        fail("cannot rename " + m_part.string() + " to " + m_destination.string() + ": " +
             error.message());
    }
    if (m_fsync == Fsync::yes) {
        auto folder = m_destination.parent_path();
        int dir_fd =
            ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd >= 0) {
            ::fsync(dir_fd);
            ::close(dir_fd);
        }
    }
    m_finished = true;
    return actual;
}

void ChunkReceiver::abort() noexcept {
    stop_writer(true);
    close_file();
    if (!m_finished) {
        std::error_code ignored;
        std::filesystem::remove(m_part, ignored);
    }
}

}  // namespace fedcli::proto
