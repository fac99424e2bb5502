#include "core/package/package.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <locale.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <system_error>
#include <unordered_map>
#include <utility>

#include "core/error.hpp"
#include "core/util/limits.hpp"
#include "core/util/sha256.hpp"

namespace fedcli::package {
namespace fs = std::filesystem;

namespace {

constexpr std::size_t k_block_size = std::size_t{1} << 20;
/// PATH_MAX: longer entry names cannot be opened by path anyway, and walking their
/// components one descriptor at a time would only cost time.
constexpr std::size_t k_max_path_bytes = 4096;

std::string quote(std::string_view text) {
    return "'" + std::string(text) + "'";
}

std::string errno_text(int error) {
    return std::strerror(error);
}

/// "4096 bytes (4 KiB)": exact for tests and scripts, readable for people.
std::string bytes_text(std::uint64_t bytes) {
    std::string text = std::to_string(bytes) + " bytes";
    if (bytes >= 1024) text += " (" + util::format_byte_size(bytes) + ")";
    return text;
}

/// Extra tar bytes allowed per entry beyond its file data (header, pax records, padding).
constexpr std::uint64_t k_tar_overhead_per_entry = 16 * 1024;
/// Extra tar bytes allowed per archive (end-of-archive blocks, block padding).
constexpr std::uint64_t k_tar_overhead_per_archive = std::uint64_t{1} << 20;

/// An owned file descriptor.
class Descriptor {
  public:
    Descriptor() = default;
    explicit Descriptor(int fd) : m_fd(fd) {}
    ~Descriptor() { reset(); }
    Descriptor(Descriptor&& other) noexcept : m_fd(std::exchange(other.m_fd, -1)) {}
    Descriptor& operator=(Descriptor&& other) noexcept {
        if (this != &other) {
            reset();
            m_fd = std::exchange(other.m_fd, -1);
        }
        return *this;
    }
    Descriptor(const Descriptor&) = delete;
    Descriptor& operator=(const Descriptor&) = delete;

    int get() const { return m_fd; }
    bool valid() const { return m_fd >= 0; }
    void reset() {
        if (m_fd >= 0) ::close(m_fd);
        m_fd = -1;
    }
    /// Closes and reports the error close() gave (the last chance to see a failed write).
    int close() {
        int result = m_fd >= 0 ? ::close(m_fd) : 0;
        m_fd = -1;
        return result;
    }

  private:
    int m_fd = -1;
};

struct ArchiveReadDeleter {
    void operator()(archive* handle) const { archive_read_free(handle); }
};
struct ArchiveWriteDeleter {
    void operator()(archive* handle) const { archive_write_free(handle); }
};
struct EntryDeleter {
    void operator()(archive_entry* entry) const { archive_entry_free(entry); }
};
using ReadArchive = std::unique_ptr<archive, ArchiveReadDeleter>;
using WriteArchive = std::unique_ptr<archive, ArchiveWriteDeleter>;
using Entry = std::unique_ptr<archive_entry, EntryDeleter>;

/// While alive, the calling thread's character type is C.UTF-8 (uselocale is per thread and
/// leaves the process locale alone). libarchive converts names between the archive's UTF-8
/// and the current locale; pinning it makes the bytes written and extracted independent of
/// the caller's locale: names are the file system's bytes, UTF-8 in pax records.
class Utf8Locale {
  public:
    Utf8Locale() : m_locale(::newlocale(LC_CTYPE_MASK, "C.UTF-8", locale_t{})) {
        if (m_locale) m_previous = ::uselocale(m_locale);
    }
    ~Utf8Locale() {
        if (!m_locale) return;
        ::uselocale(m_previous);
        ::freelocale(m_locale);
    }
    Utf8Locale(const Utf8Locale&) = delete;
    Utf8Locale& operator=(const Utf8Locale&) = delete;

    /// False on a system without a C.UTF-8 locale.
    bool active() const { return m_locale != locale_t{}; }

  private:
    locale_t m_locale{};
    locale_t m_previous{};
};

std::string archive_message(archive* handle) {
    const char* message = archive_error_string(handle);
    return message && *message ? message : "unknown libarchive error";
}

/// A name for a new sibling of `target` that does not exist yet: ".<name>.<tag>-<random>".
fs::path sibling_name(const fs::path& target, std::string_view tag) {
    static thread_local std::mt19937_64 generator{std::random_device{}()};
    static constexpr char k_digits[] = "0123456789abcdef";
    std::string suffix;
    auto bits = generator();
    for (int i = 0; i < 12; ++i, bits >>= 4) suffix.push_back(k_digits[bits & 15]);
    return target.parent_path() /
           ("." + target.filename().string() + "." + std::string(tag) + "-" + suffix);
}

void write_all(int fd, const void* data, std::size_t size, const std::string& what) {
    const char* bytes = static_cast<const char*>(data);
    while (size > 0) {
        ssize_t written = ::write(fd, bytes, size);
        if (written < 0) {
            if (errno == EINTR) continue;
            throw Error(what + ": cannot write: " + errno_text(errno));
        }
        bytes += written;
        size -= static_cast<std::size_t>(written);
    }
}

/// Splits a '/'-separated relative path into components, dropping empty ones and ".".
std::vector<std::string_view> split_path(std::string_view path) {
    std::vector<std::string_view> parts;
    while (!path.empty()) {
        auto slash = path.find('/');
        auto part = path.substr(0, slash);
        path.remove_prefix(slash == std::string_view::npos ? path.size() : slash + 1);
        if (!part.empty() && part != ".") parts.push_back(part);
    }
    return parts;
}

std::string join_path(const std::vector<std::string_view>& parts, std::size_t count) {
    std::string joined;
    for (std::size_t i = 0; i < count; ++i) {
        if (i) joined.push_back('/');
        joined.append(parts[i]);
    }
    return joined;
}

/// Whether a symlink at `link_relative` (components from the root) with a relative target
/// stays inside the root when resolved lexically. Absolute targets never do.
bool symlink_stays_inside(const std::vector<std::string_view>& link_parts,
                          std::string_view target) {
    if (target.empty() || target.front() == '/') return false;
    std::size_t depth = link_parts.empty() ? 0 : link_parts.size() - 1;
    for (auto part : split_path(target)) {
        if (part == "..") {
            if (depth == 0) return false;
            --depth;
        } else {
            ++depth;
        }
    }
    return true;
}

bool is_within(const fs::path& base, const fs::path& path) {
    auto relative = path.lexically_relative(base);
    return !relative.empty() && *relative.begin() != "..";
}

EntryType type_of(archive_entry* entry) {
    if (archive_entry_hardlink(entry)) return EntryType::hardlink;
    switch (archive_entry_filetype(entry)) {
        case AE_IFREG:
            return EntryType::file;
        case AE_IFDIR:
            return EntryType::directory;
        case AE_IFLNK:
            return EntryType::symlink;
        case AE_IFCHR:
            return EntryType::character_device;
        case AE_IFBLK:
            return EntryType::block_device;
        case AE_IFIFO:
            return EntryType::fifo;
        case AE_IFSOCK:
            return EntryType::socket;
        default:
            return EntryType::unknown;
    }
}

/// The entry's name as stored: the locale-converted form when there is one, else the raw
/// UTF-8 form, so that names never vanish under the "C" locale.
std::string entry_path(archive_entry* entry) {
    if (const char* name = archive_entry_pathname(entry)) return name;
    if (const char* name = archive_entry_pathname_utf8(entry)) return name;
    return {};
}

std::string entry_link(archive_entry* entry) {
    if (const char* target = archive_entry_hardlink(entry)) return target;
    if (const char* target = archive_entry_hardlink_utf8(entry)) return target;
    if (const char* target = archive_entry_symlink(entry)) return target;
    if (const char* target = archive_entry_symlink_utf8(entry)) return target;
    return {};
}

// ---------------------------------------------------------------------------------------
// Reading archives

/// The tar stream of a package file: the file itself, or its gzip members inflated by zlib.
/// libarchive's own gzip reader skips the CRC-32 and length in the gzip trailer, so a bit
/// flipped inside stored data would go unnoticed; zlib checks both.
class TarStream {
  public:
    TarStream(const fs::path& path, const std::string& name, const Limits& limits)
        : m_name(name), m_max_tar_bytes(limits.max_tar_bytes()) {
        m_fd = Descriptor(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!m_fd.valid()) throw Error(m_name + ": cannot open: " + errno_text(errno));
        struct stat info {};
        if (::fstat(m_fd.get(), &info) != 0) throw Error(m_name + ": " + errno_text(errno));
        if (!S_ISREG(info.st_mode)) throw Error(m_name + ": not a regular file");
        if (info.st_size == 0) throw Error(m_name + ": empty file, not a package");
        if (static_cast<std::uint64_t>(info.st_size) > limits.max_package_bytes) {
            throw Error(m_name + ": the package file is " +
                        bytes_text(static_cast<std::uint64_t>(info.st_size)) +
                        ", above the limit of " + bytes_text(limits.max_package_bytes) +
                        " for a package");
        }
        m_input.resize(k_block_size);
        m_output.resize(k_block_size);
        fill();
        m_gzip = m_available >= 2 && m_input[m_offset] == 0x1f && m_input[m_offset + 1] == 0x8b;
        if (m_gzip && inflateInit2(&m_zlib, 16 + MAX_WBITS) != Z_OK) {
            throw Error(m_name + ": cannot initialise zlib");
        }
        m_zlib_ready = m_gzip;
    }
    ~TarStream() {
        if (m_zlib_ready) inflateEnd(&m_zlib);
    }
    TarStream(const TarStream&) = delete;
    TarStream& operator=(const TarStream&) = delete;

    /// The next block of tar bytes (empty at the end). Throws fedcli::Error, also when
    /// the tar data grows beyond what the limits allow.
    std::span<const unsigned char> read() {
        auto block = next_block();
        m_tar_bytes += block.size();
        if (m_tar_bytes > m_max_tar_bytes) {
            throw Error(m_name + ": unpacks to more than " + bytes_text(m_max_tar_bytes) +
                        " of tar data, more than the package limits allow");
        }
        return block;
    }

    /// Reads and checks whatever follows the end of the tar data (the rest of the gzip
    /// stream with its checksums), so that corruption anywhere in the file is reported.
    void finish() {
        while (!read().empty()) {
        }
    }

  private:
    std::span<const unsigned char> next_block() {
        if (!m_gzip) {
            if (m_available == 0) fill();
            std::span<const unsigned char> block(m_input.data() + m_offset, m_available);
            m_offset += m_available;
            m_available = 0;
            return block;
        }
        while (!m_finished) {
            if (m_between_members) {
                start_next_member();
                continue;
            }
            if (m_available == 0) {
                fill();
                if (m_available == 0) throw Error(m_name + ": truncated gzip data");
            }
            m_zlib.next_in = m_input.data() + m_offset;
            m_zlib.avail_in = static_cast<uInt>(m_available);
            m_zlib.next_out = m_output.data();
            m_zlib.avail_out = static_cast<uInt>(m_output.size());
            int status = inflate(&m_zlib, Z_NO_FLUSH);
            std::size_t consumed = m_available - m_zlib.avail_in;
            m_offset += consumed;
            m_available -= consumed;
            std::size_t produced = m_output.size() - m_zlib.avail_out;
            if (status == Z_STREAM_END) {
                m_between_members = true;
            } else if (status != Z_OK && !(status == Z_BUF_ERROR && produced == 0)) {
                throw Error(m_name + ": corrupt gzip data: " +
                            (m_zlib.msg ? m_zlib.msg : "zlib error " + std::to_string(status)));
            }
            if (produced > 0) return {m_output.data(), produced};
        }
        return {};
    }

    void fill() {
        if (m_available > 0 && m_offset > 0) {
            std::memmove(m_input.data(), m_input.data() + m_offset, m_available);
        }
        m_offset = 0;
        while (m_available < m_input.size()) {
            ssize_t n =
                ::read(m_fd.get(), m_input.data() + m_available, m_input.size() - m_available);
            if (n < 0) {
                if (errno == EINTR) continue;
                throw Error(m_name + ": cannot read: " + errno_text(errno));
            }
            if (n == 0) break;
            m_available += static_cast<std::size_t>(n);
            if (m_available >= 2) break;
        }
    }

    /// After a gzip member: another member, zero padding up to the end, or the end.
    void start_next_member() {
        if (m_available < 2) fill();
        if (m_available == 0) {
            m_finished = true;
            return;
        }
        if (m_available >= 2 && m_input[m_offset] == 0x1f && m_input[m_offset + 1] == 0x8b) {
            inflateReset(&m_zlib);
            m_between_members = false;
            return;
        }
        for (;;) {
            for (std::size_t i = 0; i < m_available; ++i) {
                if (m_input[m_offset + i] != 0) {
                    throw Error(m_name + ": unexpected data after the end of the gzip stream");
                }
            }
            m_available = 0;
            fill();
            if (m_available == 0) break;
        }
        m_finished = true;
    }

    std::string m_name;
    std::uint64_t m_max_tar_bytes = 0;
    std::uint64_t m_tar_bytes = 0;  ///< produced so far
    Descriptor m_fd;
    std::vector<unsigned char> m_input;
    std::vector<unsigned char> m_output;
    std::size_t m_offset = 0;     ///< first unread byte of m_input
    std::size_t m_available = 0;  ///< unread bytes from m_offset on
    bool m_gzip = false;
    z_stream m_zlib{};
    bool m_zlib_ready = false;
    bool m_between_members = false;
    bool m_finished = false;
};

/// Reads the headers of a tar or tar.gz archive one at a time.
class ArchiveReader {
  public:
    ArchiveReader(const fs::path& path, const Limits& limits)
        : m_name(path.string()), m_stream(path, m_name, limits) {
        m_archive.reset(archive_read_new());
        if (!m_archive) throw Error(m_name + ": cannot allocate an archive reader");
        archive_read_support_filter_none(m_archive.get());
        archive_read_support_format_tar(m_archive.get());
        if (archive_read_open(m_archive.get(), this, nullptr, &ArchiveReader::read_callback,
                              nullptr) != ARCHIVE_OK) {
            throw Error(m_name + ": " + message());
        }
    }

    archive* handle() const { return m_archive.get(); }
    const std::string& name() const { return m_name; }

    /// What went wrong last: the stream's own error when it failed, else libarchive's.
    std::string message() const {
        return m_stream_error.empty() ? archive_message(m_archive.get()) : m_stream_error;
    }

    /// The next entry, or nullptr at the end (after checking the rest of the file). The
    /// entry stays valid until the next call.
    archive_entry* next(const std::string& previous_entry) {
        archive_entry* entry = nullptr;
        int status = archive_read_next_header(m_archive.get(), &entry);
        if (status == ARCHIVE_EOF) {
            m_stream.finish();
            return nullptr;
        }
        if (status < ARCHIVE_WARN) {
            std::string where = previous_entry.empty()
                                    ? std::string("cannot read the first entry")
                                    : "cannot read the entry after " + quote(previous_entry);
            throw Error(m_name + ": " + where + ": " + message());
        }
        return entry;
    }

  private:
    static la_ssize_t read_callback(archive* handle, void* data, const void** buffer) {
        auto* self = static_cast<ArchiveReader*>(data);
        try {
            auto block = self->m_stream.read();
            *buffer = block.data();
            return static_cast<la_ssize_t>(block.size());
        } catch (const std::exception& error) {
            // The message already names the archive; strip that for the entry context.
            std::string text = error.what();
            if (text.rfind(self->m_name + ": ", 0) == 0) text.erase(0, self->m_name.size() + 2);
            self->m_stream_error = text;
            archive_set_error(handle, EIO, "%s", text.c_str());
            return -1;
        }
    }

    Utf8Locale m_locale;  ///< declared first: in force until the archive is freed
    std::string m_name;
    TarStream m_stream;
    std::string m_stream_error;
    ReadArchive m_archive;  ///< declared last: freed before the stream it reads from
};

EntryInfo describe(archive_entry* entry) {
    EntryInfo info;
    info.path = entry_path(entry);
    info.type = type_of(entry);
    info.size = info.type == EntryType::file && archive_entry_size_is_set(entry)
                    ? static_cast<std::uint64_t>(std::max<la_int64_t>(0, archive_entry_size(entry)))
                    : 0;
    info.mode = archive_entry_perm(entry) & 07777;
    if (info.type == EntryType::hardlink || info.type == EntryType::symlink) {
        info.link_target = entry_link(entry);
    }
    return info;
}

// ---------------------------------------------------------------------------------------
// Creating

struct Source {
    std::string relative;  ///< '/'-separated path inside the project
    fs::path absolute;
    EntryType type = EntryType::file;
    std::string link_target;
};

class ProjectWalker {
  public:
    ProjectWalker(const fs::path& root, IgnoreRules rules, fs::path output,
                  std::optional<std::pair<dev_t, ino_t>> output_identity)
        : m_root(root),
          m_rules(std::move(rules)),
          m_output(std::move(output)),
          m_output_identity(output_identity) {}

    std::vector<Source> walk() {
        std::vector<Source> sources;
        walk_folder(m_root, "", sources);
        // Bytewise order of the names as stored, where folders end in '/': a folder comes
        // right before its contents ("a.txt" < "a/" < "a/b").
        auto stored_name = [](const Source& source) {
            return source.type == EntryType::directory ? source.relative + "/" : source.relative;
        };
        std::sort(sources.begin(), sources.end(), [&](const Source& a, const Source& b) {
            return stored_name(a) < stored_name(b);
        });
        return sources;
    }

  private:
    void walk_folder(const fs::path& folder, const std::string& prefix,
                     std::vector<Source>& sources) {
        std::error_code error;
        fs::directory_iterator it(folder, error);
        if (error) throw Error(folder.string() + ": cannot list folder: " + error.message());
        for (; it != fs::directory_iterator(); it.increment(error)) {
            const fs::path& path = it->path();
            std::string name = path.filename().string();
            std::string relative = prefix.empty() ? name : prefix + "/" + name;
            auto status = it->symlink_status(error);
            if (error) throw Error(path.string() + ": " + error.message());
            bool is_directory = status.type() == fs::file_type::directory;
            if (m_rules.excludes(relative, is_directory)) continue;
            if (is_output(path)) continue;

            Source source{relative, path, EntryType::file, {}};
            switch (status.type()) {
                case fs::file_type::regular:
                    break;
                case fs::file_type::directory:
                    source.type = EntryType::directory;
                    break;
                case fs::file_type::symlink:
                    source.type = EntryType::symlink;
                    source.link_target = checked_symlink_target(path, relative);
                    break;
                default:
                    throw Error(path.string() +
                                ": packages hold only files, folders and symlinks, and this is "
                                "a special file (add it to .ignore to leave it out)");
            }
            sources.push_back(source);
            if (source.type == EntryType::directory) walk_folder(path, relative, sources);
        }
        if (error) throw Error(folder.string() + ": cannot list folder: " + error.message());
    }

    bool is_output(const fs::path& path) const {
        if (path == m_output) return true;
        if (!m_output_identity) return false;
        struct stat info {};
        return ::lstat(path.c_str(), &info) == 0 && info.st_dev == m_output_identity->first &&
               info.st_ino == m_output_identity->second;
    }

    std::string checked_symlink_target(const fs::path& path, const std::string& relative) const {
        std::error_code error;
        std::string target = fs::read_symlink(path, error).string();
        if (error) throw Error(path.string() + ": cannot read symlink: " + error.message());
        bool inside = symlink_stays_inside(split_path(relative), target);
        if (inside) {
            auto resolved = fs::weakly_canonical(path.parent_path() / target, error);
            inside = !error && is_within(m_root, resolved);
        }
        if (!inside) {
            throw Error(path.string() + ": symlink to " + quote(target) +
                        " leads outside the project; packages keep only symlinks that stay "
                        "inside (add it to .ignore to leave it out)");
        }
        return target;
    }

    fs::path m_root;  ///< canonical
    IgnoreRules m_rules;
    fs::path m_output;  ///< canonical parent + file name
    std::optional<std::pair<dev_t, ino_t>> m_output_identity;
};

/// Where archive_write sends its output: a file descriptor, hashing on the way.
struct Sink {
    int fd = -1;
    util::Sha256 digest;
    std::uint64_t size = 0;
};

la_ssize_t sink_write(archive* handle, void* data, const void* buffer, size_t length) {
    auto* sink = static_cast<Sink*>(data);
    const char* bytes = static_cast<const char*>(buffer);
    std::size_t left = length;
    while (left > 0) {
        ssize_t written = ::write(sink->fd, bytes, left);
        if (written < 0) {
            if (errno == EINTR) continue;
            archive_set_error(handle, errno, "cannot write: %s", std::strerror(errno));
            return -1;
        }
        bytes += written;
        left -= static_cast<std::size_t>(written);
    }
    sink->digest.update(buffer, length);
    sink->size += length;
    return static_cast<la_ssize_t>(length);
}

class PackageWriter {
  public:
    PackageWriter(const std::string& name, Sink& sink, const CreateOptions& options)
        : m_name(name), m_options(options) {
        m_archive.reset(archive_write_new());
        if (!m_archive) throw Error(m_name + ": cannot allocate an archive writer");
        auto* handle = m_archive.get();
        // Without a UTF-8 locale to pin, hdrcharset=BINARY keeps names unconverted (at the
        // price of a pax record on every entry), so the output still ignores the locale.
        std::string write_options =
            "gzip:!timestamp,gzip:compression-level=" + std::to_string(options.compression_level);
        if (!m_locale.active()) write_options += ",pax:hdrcharset=BINARY";
        if (archive_write_add_filter_gzip(handle) != ARCHIVE_OK ||
            archive_write_set_format_pax_restricted(handle) != ARCHIVE_OK ||
            archive_write_set_options(handle, write_options.c_str()) != ARCHIVE_OK ||
            archive_write_set_bytes_per_block(handle, static_cast<int>(k_block_size)) !=
                ARCHIVE_OK ||
            archive_write_set_bytes_in_last_block(handle, 1) != ARCHIVE_OK ||
            archive_write_open2(handle, &sink, nullptr, sink_write, nullptr, nullptr) !=
                ARCHIVE_OK) {
            throw Error(m_name + ": cannot start writing: " + archive_message(handle));
        }
        m_buffer.resize(k_block_size);
    }

    void add(const Source& source, CreateResult& result) {
        Entry entry(archive_entry_new2(m_archive.get()));
        if (!entry) throw Error(m_name + ": cannot allocate an archive entry");
        // libarchive appends the '/' to folder names itself.
        archive_entry_set_pathname(entry.get(), source.relative.c_str());
        archive_entry_set_mtime(entry.get(), m_options.mtime, 0);
        archive_entry_set_uid(entry.get(), 0);
        archive_entry_set_gid(entry.get(), 0);

        Descriptor file;
        std::uint64_t size = 0;
        switch (source.type) {
            case EntryType::directory:
                archive_entry_set_filetype(entry.get(), AE_IFDIR);
                archive_entry_set_perm(entry.get(), 0755);
                archive_entry_set_size(entry.get(), 0);
                ++result.directory_count;
                break;
            case EntryType::symlink:
                archive_entry_set_filetype(entry.get(), AE_IFLNK);
                archive_entry_set_perm(entry.get(), 0777);
                archive_entry_set_size(entry.get(), 0);
                archive_entry_set_symlink(entry.get(), source.link_target.c_str());
                ++result.symlink_count;
                break;
            default: {
                file =
                    Descriptor(::open(source.absolute.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
                if (!file.valid()) {
                    throw Error(source.absolute.string() + ": cannot open: " + errno_text(errno));
                }
                struct stat info {};
                if (::fstat(file.get(), &info) != 0 || !S_ISREG(info.st_mode)) {
                    throw Error(source.absolute.string() + ": changed while being packaged");
                }
                size = static_cast<std::uint64_t>(info.st_size);
                archive_entry_set_filetype(entry.get(), AE_IFREG);
                archive_entry_set_perm(entry.get(), (info.st_mode & S_IXUSR) ? 0755 : 0644);
                archive_entry_set_size(entry.get(), static_cast<la_int64_t>(size));
                ++result.file_count;
                result.content_bytes += size;
                break;
            }
        }
        if (archive_write_header(m_archive.get(), entry.get()) < ARCHIVE_WARN) {
            throw Error(m_name + ": entry " + quote(source.relative) +
                        ": cannot write header: " + archive_message(m_archive.get()));
        }
        if (file.valid()) copy(file.get(), size, source);
    }

    void finish() {
        if (archive_write_close(m_archive.get()) != ARCHIVE_OK) {
            throw Error(m_name + ": cannot finish writing: " + archive_message(m_archive.get()));
        }
    }

  private:
    void copy(int fd, std::uint64_t size, const Source& source) {
        std::uint64_t copied = 0;
        for (;;) {
            ssize_t n = ::read(fd, m_buffer.data(), m_buffer.size());
            if (n < 0) {
                if (errno == EINTR) continue;
                throw Error(source.absolute.string() + ": cannot read: " + errno_text(errno));
            }
            if (n == 0) break;
            copied += static_cast<std::uint64_t>(n);
            if (copied > size) break;
            if (archive_write_data(m_archive.get(), m_buffer.data(), static_cast<size_t>(n)) < 0) {
                throw Error(m_name + ": entry " + quote(source.relative) +
                            ": cannot write data: " + archive_message(m_archive.get()));
            }
        }
        if (copied != size) {
            throw Error(source.absolute.string() + ": changed while being packaged (size was " +
                        std::to_string(size) + " bytes)");
        }
    }

    Utf8Locale m_locale;  ///< declared first: in force until the archive is freed
    std::string m_name;
    const CreateOptions& m_options;
    WriteArchive m_archive;
    std::vector<char> m_buffer;
};

// ---------------------------------------------------------------------------------------
// Extracting

std::string too_many_entries(const Limits& limits) {
    return "the archive holds more than " + std::to_string(limits.max_entries) +
           " entries (the limit)";
}

std::string total_too_large(const Limits& limits) {
    return "file data exceeds the limit of " + bytes_text(limits.max_total_bytes) +
           " for the whole archive";
}

std::string file_too_large(const Limits& limits) {
    return "file is larger than the limit of " + bytes_text(limits.max_file_bytes) +
           " for one file";
}

class Extraction {
  public:
    Extraction(const fs::path& archive_path, const fs::path& destination,
               const ExtractOptions& options)
        : m_archive_path(archive_path), m_name(archive_path.string()), m_options(options) {
        m_destination = fs::absolute(destination).lexically_normal();
        if (!m_destination.has_filename()) m_destination = m_destination.parent_path();
        m_display = destination.string();
    }

    ~Extraction() { clean_up(); }

    ExtractResult run() {
        check_destination();
        create_parent();
        make_temporary_root();
        extract_entries();
        fs::path final_root = choose_final_root();
        check_symlinks(final_root);
        move_into_place(final_root);
        m_result.destination = m_destination;
        return m_result;
    }

  private:
    [[noreturn]] void fail(const std::string& entry, const std::string& why) const {
        throw Error(m_name + ": entry " + quote(entry) + ": " + why);
    }

    void check_destination() {
        std::error_code error;
        auto status = fs::symlink_status(m_destination, error);
        if (status.type() == fs::file_type::not_found) return;
        if (error) throw Error(m_display + ": " + error.message());
        if (status.type() != fs::file_type::directory) {
            throw Error(m_display + ": cannot extract " + m_name +
                        " here: exists and is not a folder");
        }
        bool empty = fs::is_empty(m_destination, error);
        if (error) throw Error(m_display + ": " + error.message());
        if (!empty && m_options.overwrite == Overwrite::no) {
            throw Error(m_display + ": cannot extract " + m_name +
                        " here: folder exists and is not empty");
        }
    }

    void create_parent() {
        fs::path parent = m_destination.parent_path();
        std::error_code error;
        for (fs::path missing = parent; !fs::exists(fs::symlink_status(missing, error));
             missing = missing.parent_path()) {
            m_created_parents.push_back(missing);
            if (missing == missing.parent_path()) break;
        }
        fs::create_directories(parent, error);
        if (error) {
            throw Error(parent.string() + ": cannot create folder: " + error.message());
        }
    }

    void make_temporary_root() {
        for (int attempt = 0;; ++attempt) {
            fs::path candidate = sibling_name(m_destination, "extract");
            if (::mkdir(candidate.c_str(), 0755) == 0) {
                m_temporary = candidate;
                break;
            }
            if (errno != EEXIST || attempt == 100) {
                throw Error(candidate.string() + ": cannot create folder: " + errno_text(errno));
            }
        }
        m_root = Descriptor(
            ::open(m_temporary.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!m_root.valid()) {
            throw Error(m_temporary.string() + ": cannot open folder: " + errno_text(errno));
        }
    }

    /// Opens the folder made of the first `count` components, creating missing ones when
    /// asked. Never follows a symlink.
    Descriptor open_folder(const std::string& entry, const std::vector<std::string_view>& parts,
                           std::size_t count, bool create) {
        Descriptor current(::dup(m_root.get()));
        if (!current.valid())
            fail(entry, "cannot open the extraction folder: " + errno_text(errno));
        for (std::size_t i = 0; i < count; ++i) {
            std::string part(parts[i]);
            int fd = ::openat(current.get(), part.c_str(),
                              O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (fd < 0 && errno == ENOENT && create) {
                if (::mkdirat(current.get(), part.c_str(), 0755) != 0 && errno != EEXIST) {
                    fail(entry, "cannot create folder " + quote(join_path(parts, i + 1)) + ": " +
                                    errno_text(errno));
                }
                fd = ::openat(current.get(), part.c_str(),
                              O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            }
            if (fd < 0) {
                int saved = errno;
                std::string prefix = join_path(parts, i + 1);
                struct stat info {};
                if (::fstatat(current.get(), part.c_str(), &info, AT_SYMLINK_NOFOLLOW) == 0) {
                    if (S_ISLNK(info.st_mode)) {
                        fail(entry, "path passes through the symlink " + quote(prefix));
                    }
                    if (!S_ISDIR(info.st_mode)) {
                        fail(entry,
                             "path passes through " + quote(prefix) + ", which is not a folder");
                    }
                }
                fail(entry, "cannot open folder " + quote(prefix) + ": " + errno_text(saved));
            }
            current = Descriptor(fd);
        }
        return current;
    }

    void extract_entries() {
        ArchiveReader reader(m_archive_path, m_options.limits);
        std::vector<char> buffer(k_block_size);
        std::string previous;
        while (archive_entry* entry = reader.next(previous)) {
            std::string raw = entry_path(entry);
            previous = raw;
            if (++m_result.entry_count > m_options.limits.max_entries) {
                fail(raw, too_many_entries(m_options.limits));
            }
            if (raw.empty()) fail(raw, "empty name");
            if (raw.front() == '/') fail(raw, "absolute paths are not allowed");
            if (raw.size() > k_max_path_bytes) {
                fail(raw.substr(0, 64) + "...",
                     "path is longer than " + std::to_string(k_max_path_bytes) + " bytes");
            }
            auto parts = split_path(raw);
            for (auto part : parts) {
                if (part == "..") fail(raw, "path escapes the extraction folder");
            }
            EntryType type = type_of(entry);
            if (parts.empty()) {
                // "." or "./": the root itself, which tarfile-made packages often list.
                if (type == EntryType::directory) continue;
                fail(raw, "names the extraction folder itself and is not a folder");
            }
            std::string key = join_path(parts, parts.size());
            auto seen = m_seen.find(key);
            if (seen != m_seen.end() &&
                !(type == EntryType::directory && seen->second == EntryType::directory)) {
                fail(raw, "duplicate entry: the archive already holds " + quote(key));
            }
            switch (type) {
                case EntryType::directory:
                    open_folder(raw, parts, parts.size(), true);
                    if (seen == m_seen.end()) ++m_result.directory_count;
                    break;
                case EntryType::file:
                    write_file(reader, entry, raw, parts, buffer);
                    ++m_result.file_count;
                    break;
                case EntryType::symlink:
                    make_symlink(entry, raw, key, parts);
                    ++m_result.symlink_count;
                    break;
                case EntryType::hardlink:
                    make_hardlink(entry, raw, parts);
                    ++m_result.file_count;
                    type = EntryType::file;
                    break;
                default:
                    fail(raw, std::string(entry_type_name(type)) +
                                  " entries are not allowed in a package");
            }
            m_seen[key] = type;
        }
    }

    void write_file(ArchiveReader& reader, archive_entry* entry, const std::string& raw,
                    const std::vector<std::string_view>& parts, std::vector<char>& buffer) {
        const Limits& limits = m_options.limits;
        if (archive_entry_size_is_set(entry) && archive_entry_size(entry) > 0) {
            auto declared = static_cast<std::uint64_t>(archive_entry_size(entry));
            if (declared > limits.max_file_bytes) fail(raw, file_too_large(limits));
            if (declared > limits.max_total_bytes - m_result.total_bytes) {
                fail(raw, total_too_large(limits));
            }
        }
        std::uint64_t written = 0;
        Descriptor folder = open_folder(raw, parts, parts.size() - 1, true);
        std::string name(parts.back());
        mode_t mode = (archive_entry_perm(entry) & S_IXUSR) ? 0755 : 0644;
        Descriptor file(::openat(folder.get(), name.c_str(),
                                 O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
        if (!file.valid()) {
            if (errno == EEXIST) fail(raw, "path already exists as a folder in the archive");
            fail(raw, "cannot create file: " + errno_text(errno));
        }
        for (;;) {
            la_ssize_t n = archive_read_data(reader.handle(), buffer.data(), buffer.size());
            if (n < 0) fail(raw, "cannot read data: " + reader.message());
            if (n == 0) break;
            auto count = static_cast<std::uint64_t>(n);
            if (count > limits.max_file_bytes - written) fail(raw, file_too_large(limits));
            if (count > limits.max_total_bytes - m_result.total_bytes) {
                fail(raw, total_too_large(limits));
            }
            written += count;
            m_result.total_bytes += count;
            write_all(file.get(), buffer.data(), static_cast<std::size_t>(n),
                      m_name + ": entry " + quote(raw));
        }
        if (file.close() != 0) fail(raw, "cannot write file: " + errno_text(errno));
    }

    void make_symlink(archive_entry* entry, const std::string& raw, const std::string& key,
                      const std::vector<std::string_view>& parts) {
        std::string target = entry_link(entry);
        if (target.empty()) fail(raw, "symlink has an empty target");
        if (target.front() == '/') {
            fail(raw, "symlink target " + quote(target) +
                          " is an absolute path outside the extraction folder");
        }
        if (!symlink_stays_inside(parts, target)) {
            fail(raw, "symlink target " + quote(target) + " leads outside the extraction folder");
        }
        Descriptor folder = open_folder(raw, parts, parts.size() - 1, true);
        std::string name(parts.back());
        if (::symlinkat(target.c_str(), folder.get(), name.c_str()) != 0) {
            if (errno == EEXIST) fail(raw, "path already exists as a folder in the archive");
            fail(raw, "cannot create symlink: " + errno_text(errno));
        }
        m_symlinks.emplace_back(key, target);
    }

    void make_hardlink(archive_entry* entry, const std::string& raw,
                       const std::vector<std::string_view>& parts) {
        std::string target = entry_link(entry);
        std::string target_key;
        bool valid = !target.empty() && target.front() != '/';
        auto target_parts = split_path(target);
        for (auto part : target_parts) {
            if (part == "..") valid = false;
        }
        if (valid && !target_parts.empty()) {
            target_key = join_path(target_parts, target_parts.size());
            auto seen = m_seen.find(target_key);
            valid = seen != m_seen.end() && seen->second == EntryType::file;
        } else {
            valid = false;
        }
        if (!valid) {
            fail(raw, "hard link to " + quote(target) +
                          ", which is not a file extracted earlier from this archive");
        }
        Descriptor source_folder = open_folder(raw, target_parts, target_parts.size() - 1, false);
        Descriptor folder = open_folder(raw, parts, parts.size() - 1, true);
        std::string source_name(target_parts.back());
        std::string name(parts.back());
        if (::linkat(source_folder.get(), source_name.c_str(), folder.get(), name.c_str(), 0) !=
            0) {
            if (errno == EEXIST) fail(raw, "path already exists as a folder in the archive");
            fail(raw, "cannot create hard link: " + errno_text(errno));
        }
    }

    fs::path choose_final_root() {
        if (m_options.top_folder != TopFolder::strip_single) return m_temporary;
        std::error_code error;
        std::vector<fs::path> children;
        for (fs::directory_iterator it(m_temporary, error), end; !error && it != end;
             it.increment(error)) {
            children.push_back(it->path());
        }
        if (error) throw Error(m_temporary.string() + ": " + error.message());
        if (children.size() != 1 ||
            fs::symlink_status(children.front(), error).type() != fs::file_type::directory) {
            return m_temporary;
        }
        m_result.stripped_folder = children.front().filename().string();
        return children.front();
    }

    /// The lexical check at extraction time cannot see chains such as "a -> ." followed by
    /// "b -> a/.."; resolving every symlink on the finished tree does.
    void check_symlinks(const fs::path& final_root) {
        std::error_code error;
        fs::path base = fs::canonical(final_root, error);
        if (error) throw Error(final_root.string() + ": " + error.message());
        for (const auto& [key, target] : m_symlinks) {
            fs::path link = m_temporary / key;
            fs::path resolved = fs::weakly_canonical(link.parent_path() / target, error);
            if (error) {
                fail(key,
                     "symlink target " + quote(target) + " cannot be resolved: " + error.message());
            }
            if (!is_within(base, resolved)) {
                fail(key,
                     "symlink target " + quote(target) + " leads outside the extraction folder");
            }
        }
    }

    void move_into_place(const fs::path& final_root) {
        m_root.reset();
        // rename(2) replaces a missing or empty folder in one step.
        fs::path old_destination;
        if (::rename(final_root.c_str(), m_destination.c_str()) != 0) {
            if (errno != ENOTEMPTY && errno != EEXIST) {
                throw Error(m_display +
                            ": cannot move the extracted folder into place: " + errno_text(errno));
            }
            if (m_options.overwrite == Overwrite::no) {
                throw Error(m_display + ": cannot extract " + m_name +
                            " here: folder exists and is not empty");
            }
            old_destination = sibling_name(m_destination, "old");
            if (::rename(m_destination.c_str(), old_destination.c_str()) != 0) {
                throw Error(m_display + ": cannot move the old folder aside: " + errno_text(errno));
            }
            if (::rename(final_root.c_str(), m_destination.c_str()) != 0) {
                int saved = errno;
                ::rename(old_destination.c_str(), m_destination.c_str());
                throw Error(m_display +
                            ": cannot move the extracted folder into place: " + errno_text(saved));
            }
        }
        m_done = true;
        if (final_root != m_temporary) ::rmdir(m_temporary.c_str());
        std::error_code ignored;
        if (!old_destination.empty()) fs::remove_all(old_destination, ignored);
    }

    void clean_up() noexcept {
        m_root.reset();
        if (m_done) return;
        std::error_code ignored;
        if (!m_temporary.empty()) fs::remove_all(m_temporary, ignored);
        // Deepest first; rmdir only removes folders that are still empty.
        for (const auto& folder : m_created_parents) ::rmdir(folder.c_str());
    }

    fs::path m_archive_path;
    std::string m_name;
    ExtractOptions m_options;
    fs::path m_destination;
    std::string m_display;
    std::vector<fs::path> m_created_parents;  ///< deepest first
    fs::path m_temporary;
    Descriptor m_root;
    std::unordered_map<std::string, EntryType> m_seen;
    std::vector<std::pair<std::string, std::string>> m_symlinks;
    ExtractResult m_result;
    bool m_done = false;
};

}  // namespace

std::string_view entry_type_name(EntryType type) {
    switch (type) {
        case EntryType::file:
            return "file";
        case EntryType::directory:
            return "directory";
        case EntryType::symlink:
            return "symlink";
        case EntryType::hardlink:
            return "hard link";
        case EntryType::character_device:
            return "character device";
        case EntryType::block_device:
            return "block device";
        case EntryType::fifo:
            return "fifo";
        case EntryType::socket:
            return "socket";
        case EntryType::unknown:
            break;
    }
    return "unknown";
}

CreateResult create(const fs::path& project_dir, const fs::path& output,
                    const CreateOptions& options) {
    if (options.compression_level < 1 || options.compression_level > 9) {
        throw Error("package compression level must be 1..9, not " +
                    std::to_string(options.compression_level));
    }
    std::error_code error;
    if (!fs::is_directory(project_dir, error)) {
        throw Error(project_dir.string() + ": not a folder");
    }
    fs::path root = fs::canonical(project_dir, error);
    if (error) throw Error(project_dir.string() + ": " + error.message());

    fs::path output_absolute = fs::absolute(output).lexically_normal();
    if (!output_absolute.has_filename()) {
        throw Error(output.string() + ": the package path must name a file");
    }
    // Resolved through symlinks so that the walk recognises the output however it is named.
    fs::path output_canonical = fs::weakly_canonical(output_absolute, error);
    if (error) throw Error(output.string() + ": " + error.message());
    std::optional<std::pair<dev_t, ino_t>> output_identity;
    struct stat output_info {};
    if (::stat(output_canonical.c_str(), &output_info) == 0) {
        if (S_ISDIR(output_info.st_mode)) throw Error(output.string() + ": is a folder");
        output_identity.emplace(output_info.st_dev, output_info.st_ino);
    }

    IgnoreRules rules = load_project_ignore_rules(root, options.default_ignores);
    rules.add(options.extra_rules);
    auto sources = ProjectWalker(root, std::move(rules), output_canonical, output_identity).walk();

    // Only now, so that a project that cannot be packaged leaves no new folder behind.
    fs::create_directories(output_canonical.parent_path(), error);
    if (error) {
        throw Error(output_canonical.parent_path().string() +
                    ": cannot create folder: " + error.message());
    }
    fs::path temporary;
    Descriptor fd;
    for (int attempt = 0; !fd.valid(); ++attempt) {
        temporary = sibling_name(output_canonical, "tmp");
        fd = Descriptor(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
        if (!fd.valid() && (errno != EEXIST || attempt == 100)) {
            throw Error(temporary.string() + ": cannot create file: " + errno_text(errno));
        }
    }
    try {
        CreateResult result;
        Sink sink;
        sink.fd = fd.get();
        PackageWriter writer(output.string(), sink, options);
        for (const auto& source : sources) writer.add(source, result);
        writer.finish();
        if (::fsync(fd.get()) != 0 || fd.close() != 0) {
            throw Error(temporary.string() + ": cannot write: " + errno_text(errno));
        }
        if (::rename(temporary.c_str(), output_canonical.c_str()) != 0) {
            throw Error(output.string() +
                        ": cannot move the package into place: " + errno_text(errno));
        }
        result.path = output;
        result.size_bytes = sink.size;
        result.sha256 = sink.digest.hex_digest();
        return result;
    } catch (...) {
        fd.reset();
        ::unlink(temporary.c_str());
        throw;
    }
}

std::uint64_t Limits::max_tar_bytes() const {
    auto saturating_add = [](std::uint64_t a, std::uint64_t b) {
        return a > UINT64_MAX - b ? UINT64_MAX : a + b;
    };
    std::uint64_t per_entries =
        max_entries > UINT64_MAX / k_tar_overhead_per_entry
            ? UINT64_MAX
            : (static_cast<std::uint64_t>(max_entries) + 1) * k_tar_overhead_per_entry;
    return saturating_add(saturating_add(max_total_bytes, per_entries), k_tar_overhead_per_archive);
}

void scan(const fs::path& archive_path, const std::function<void(const EntryInfo&)>& visit,
          const Limits& limits) {
    ArchiveReader reader(archive_path, limits);
    std::string previous;
    std::size_t entries = 0;
    std::uint64_t total = 0;
    while (archive_entry* entry = reader.next(previous)) {
        EntryInfo info = describe(entry);
        previous = info.path;
        auto fail = [&](const std::string& why) {
            throw Error(reader.name() + ": entry " + quote(info.path) + ": " + why);
        };
        if (++entries > limits.max_entries) fail(too_many_entries(limits));
        if (info.size > limits.max_file_bytes) fail(file_too_large(limits));
        if (info.size > limits.max_total_bytes - total) fail(total_too_large(limits));
        total += info.size;
        visit(info);
        if (archive_read_data_skip(reader.handle()) < ARCHIVE_WARN) {
            throw Error(reader.name() + ": entry " + quote(previous) +
                        ": cannot read data: " + reader.message());
        }
    }
}

std::vector<EntryInfo> list(const fs::path& archive_path, const Limits& limits) {
    std::vector<EntryInfo> entries;
    scan(
        archive_path, [&](const EntryInfo& info) { entries.push_back(info); }, limits);
    return entries;
}

ExtractResult extract(const fs::path& archive_path, const fs::path& destination,
                      const ExtractOptions& options) {
    Extraction extraction(archive_path, destination, options);
    return extraction.run();
}

}  // namespace fedcli::package
