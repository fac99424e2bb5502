// Compute packages: deterministic .tgz creation, listing, and safe extraction.
//
// A package is a gzip-compressed POSIX tar archive (pax, libarchive's "restricted" flavour:
// plain ustar headers, plus a pax extended header only for entries that need one, such as
// non-ASCII names or names too long for ustar) of a project folder. Paths are relative to the
// project root, with no top-level folder and no "./" prefix. create() is deterministic: entries are
// sorted bytewise by stored name (folders end in '/'), every entry has mtime CreateOptions::mtime
// (default 0), uid/gid 0, empty user/group names, mode 0755 for folders and for files the owner may
// execute, 0644 for other files, 0777 for symlinks; the gzip header has mtime 0 and no file name.
// The same tree (same names, contents and owner-execute bits) therefore gives the same bytes and
// the same sha256 wherever it lives and whatever its timestamps, owners or the process locale, for
// a given libarchive/zlib build. docs/packages.md describes the format byte by byte.
//
// create() leaves out what the ignore rules exclude (core/package/ignore.hpp), the output
// file itself when it lies inside the project, and nothing else. It stores symlinks as
// symlinks when their target stays inside the project and refuses those that do not;
// sockets, fifos and devices are refused. The package is written to a temporary file next
// to the output and renamed into place, so a failed run never leaves a half-written one.
//
// extract() treats every archive as hostile. It extracts into a fresh temporary folder
// next to the destination and renames it into place only when every entry passed, so a
// rejected archive leaves nothing behind. It refuses absolute paths, any ".." component,
// symlinks whose target is absolute or resolves outside the extraction folder, hard links
// to anything but a regular file extracted earlier from the same archive, devices, fifos
// and sockets, entries whose path passes through a symlink or a file, duplicate entries,
// and anything beyond its Limits (below).
// Files are created with O_EXCL|O_NOFOLLOW under directory descriptors opened with
// O_NOFOLLOW, so nothing is ever written outside the temporary folder. Extracted files get
// mode 0755 when the owner-execute bit is set in the archive, 0644 otherwise (folders 0755),
// both filtered by the process umask; owners and timestamps in the archive are ignored.
// Accepted input: tar (ustar, pax, GNU), gzip-compressed or not, so packages made by FEDn
// (Python tarfile, "w:gz") extract as well as ours. The gzip layer is inflated with zlib,
// which checks every member's CRC-32 and length (libarchive's gzip reader does not), and
// list(), scan() and extract() read the file to its end, so corruption anywhere is an error.
//
// Limits: every read of an archive (scan, list, extract) enforces a Limits value, whose
// defaults are safe for packages from an untrusted combiner: the package file at most
// 512 MiB, at most 10000 entries, at most 512 MiB in one file and 1 GiB of file data in
// all, and the tar stream inside the gzip layer at most the file data plus 16 KiB per
// entry and 1 MiB (headers, padding, trailing data), so a decompression bomb is stopped
// early. scan() checks sizes as the headers declare them; extract() also counts the bytes
// as written, so a header that lies does not help.
//
// Every failure throws fedcli::Error naming the archive and, where it applies, the entry:
//   "package.tgz: entry '../evil.sh': path escapes the extraction folder"
//   "package.tgz: entry 'data.bin': file is larger than the limit of 536870912 bytes
//    (512 MiB) for one file".
//
// Thread-safety: the functions share no state; concurrent calls are safe as long as they
// do not write the same output or destination.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/package/ignore.hpp"

namespace fedcli::package {

/// File name `fedcli package create` uses when no output is given (FEDn's default too).
inline constexpr const char* k_default_package_name = "package.tgz";

// ---------------------------------------------------------------------------------------
// Creating

struct CreateOptions {
    /// Start from k_default_ignore_rules (.git/, __pycache__/) before the project's files.
    DefaultIgnores default_ignores = DefaultIgnores::yes;
    /// Rules applied after the project's ignore files (for example from command-line
    /// --exclude flags); they take precedence over the files' rules.
    IgnoreRules extra_rules;
    /// Modification time stored for every entry, seconds since the Unix epoch.
    std::int64_t mtime = 0;
    /// gzip level 1..9. Part of what makes two packages byte-identical.
    int compression_level = 6;
};

struct CreateResult {
    std::filesystem::path path;  ///< the package written (the output argument)
    std::uint64_t size_bytes = 0;
    std::size_t file_count = 0;  ///< regular files
    std::size_t directory_count = 0;
    std::size_t symlink_count = 0;
    std::uint64_t content_bytes = 0;  ///< sum of the stored files' sizes
    std::string sha256;               ///< lowercase hex digest of the package file
};

/// Packages `project_dir` into `output` (missing parent folders of `output` are created).
/// Throws fedcli::Error naming the offending path when the project cannot be read, holds
/// a symlink leading outside it or a special file, or the output cannot be written.
CreateResult create(const std::filesystem::path& project_dir, const std::filesystem::path& output,
                    const CreateOptions& options = {});

// ---------------------------------------------------------------------------------------
// Limits

/// What an archive may hold before reading it is refused (see the header comment). The
/// defaults are the limits a client applies to the packages it installs.
struct Limits {
    /// The archive file as stored (compressed).
    std::uint64_t max_package_bytes = std::uint64_t{512} << 20;
    /// Entries of any type (files, folders, links).
    std::size_t max_entries = 10000;
    /// File data of all files together, unpacked.
    std::uint64_t max_total_bytes = std::uint64_t{1} << 30;
    /// One file, unpacked.
    std::uint64_t max_file_bytes = std::uint64_t{512} << 20;

    /// The most tar data (headers and padding included) these limits allow the gzip layer
    /// to inflate to.
    std::uint64_t max_tar_bytes() const;
};

// ---------------------------------------------------------------------------------------
// Listing

enum class EntryType {
    file,
    directory,
    symlink,
    hardlink,
    character_device,
    block_device,
    fifo,
    socket,
    unknown,
};

/// "file", "directory", "symlink", "hard link", "character device", ...
std::string_view entry_type_name(EntryType type);

struct EntryInfo {
    std::string path;  ///< exactly as stored in the archive (not validated)
    EntryType type = EntryType::unknown;
    std::uint64_t size = 0;   ///< bytes of data; 0 for everything but files
    std::uint32_t mode = 0;   ///< permission bits as stored (& 07777)
    std::string link_target;  ///< symlink target or hard-link source, as stored
};

/// Calls `visit` for every entry of the archive in archive order, without extracting or
/// validating paths and without holding the entries in memory. Throws fedcli::Error
/// naming the archive (and the last entry read) when it is not a readable tar/tar.gz or
/// exceeds `limits` (sizes as declared in the headers).
void scan(const std::filesystem::path& archive, const std::function<void(const EntryInfo&)>& visit,
          const Limits& limits = {});

/// All entries of the archive in archive order (scan() collected into a vector).
std::vector<EntryInfo> list(const std::filesystem::path& archive, const Limits& limits = {});

// ---------------------------------------------------------------------------------------
// Extracting

/// What extract() does when the destination folder exists and is not empty.
enum class Overwrite {
    no,      ///< fail, leaving it alone
    replace  ///< replace it (the old folder is removed only after the new one is in place)
};

/// Whether extract() removes a single top-level folder (older FEDn packages had one).
enum class TopFolder {
    keep,         ///< extract the archive as it is
    strip_single  ///< when the archive's root holds exactly one entry and it is a folder,
                  ///< that folder's contents become the destination
};

struct ExtractOptions {
    Limits limits;  ///< sizes counted as written, not as declared
    Overwrite overwrite = Overwrite::no;
    TopFolder top_folder = TopFolder::keep;
};

struct ExtractResult {
    std::filesystem::path destination;  ///< absolute and lexically normal
    std::size_t entry_count = 0;        ///< entries read from the archive
    std::size_t file_count = 0;         ///< regular files and hard links
    std::size_t directory_count = 0;
    std::size_t symlink_count = 0;
    std::uint64_t total_bytes = 0;  ///< file data written
    std::string stripped_folder;    ///< the folder removed by TopFolder::strip_single, or ""
};

/// Extracts `archive` into the folder `destination` (created, with missing parents; an
/// existing empty folder is fine). All or nothing: on any error the destination and its
/// parents are as they were, and no temporary files remain.
ExtractResult extract(const std::filesystem::path& archive,
                      const std::filesystem::path& destination, const ExtractOptions& options = {});

}  // namespace fedcli::package
