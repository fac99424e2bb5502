// The combiner's content-addressed files and per-file transfer locks.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "combiner/internal.hpp"
#include "core/error.hpp"
#include "core/util/sha256.hpp"

namespace fedcli::combiner {

namespace fs = std::filesystem;

namespace {

/// fsync of a file, then of its folder; errors are the caller's (it renames next).
void sync_file(const fs::path& file) {
    int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(file.string() + ": cannot open to sync: " + std::strerror(errno));
    const int result = ::fsync(fd);
    const int saved = errno;
    ::close(fd);
    if (result != 0) throw Error(file.string() + ": cannot sync: " + std::strerror(saved));
    int dir = ::open(file.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
        ::fsync(dir);
        ::close(dir);
    }
}

}  // namespace

void Store::create() const {
    for (const fs::path& folder : {m_root, m_root / "models", m_root / "packages"}) {
        std::error_code error;
        fs::create_directories(folder, error);
        if (error) {
            throw Error("data folder " + folder.string() + ": cannot create: " + error.message());
        }
    }
}

fs::path Store::path(v1::TransferKind kind, const std::string& sha256) const {
    if (kind == v1::TRANSFER_KIND_PACKAGE) return m_root / "packages" / (sha256 + ".tgz");
    return m_root / "models" / (sha256 + ".npz");
}

bool Store::has(v1::TransferKind kind, const std::string& sha256) const {
    std::error_code ignored;
    return is_sha256(sha256) && fs::is_regular_file(path(kind, sha256), ignored);
}

std::string Store::add_model(const npz::ParameterSet& parameters) const {
    // write_npz writes a temporary file and renames it; the name it lands under is ours and
    // never looks like a stored id, so nobody reads it before it is renamed again below.
    fs::path staging = m_root / "models" / ("new-" + random_hex(16) + ".npz");
    npz::write_npz(staging, parameters);
    std::string id;
    try {
        sync_file(staging);
        id = util::sha256_file(staging);
    } catch (...) {
        std::error_code ignored;
        fs::remove(staging, ignored);
        throw;
    }
    // Synced above, before it gets its final name: a crash leaves either no model or a
    // whole one (the database refers to it only after the rename).
    std::error_code error;
    fs::rename(staging, model_path(id), error);
    if (error) {
        fs::remove(staging, error);
        throw Error(model_path(id).string() + ": cannot store the new model: " + error.message());
    }
    return id;
}

bool Store::lock_transfer(const std::string& key, const std::function<bool()>& give_up) {
    std::unique_lock lock(m_transfer_mutex);
    while (m_transfers.count(key)) {
        if (give_up()) return false;
        // A bounded wait: a waiting upload must notice that its own client went away even
        // though nobody notifies for that.
        m_transfer_done.wait_for(lock, std::chrono::milliseconds(200));
    }
    m_transfers.insert(key);
    return true;
}

void Store::unlock_transfer(const std::string& key) {
    {
        std::lock_guard lock(m_transfer_mutex);
        m_transfers.erase(key);
    }
    m_transfer_done.notify_all();
}

void Store::wake_transfers() {
    m_transfer_done.notify_all();
}

}  // namespace fedcli::combiner
