// fedcli-client: the client daemon's own executable, kept lean because it runs for days on
// the data owners' machines. `fedcli client start` checks its options, then replaces its
// process with this program (exec), handing the options over as JSON on an inherited
// descriptor (client::options_to_json). It links the client library, the protocol and
// core/dispatch, and none of libarchive (packages are unpacked by a `fedcli package extract`
// child), SQLite, the combiner or the command line. Users run `fedcli client start`.
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "client/client.hpp"
#include "core/error.hpp"

namespace {

constexpr int k_exit_failure = 1;
constexpr int k_exit_usage = 2;

std::string read_all(int fd) {
    std::string text;
    char buffer[65536];
    for (;;) {
        ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0)
            throw fedcli::Error(std::string("cannot read the options: ") + std::strerror(errno));
        if (n == 0) return text;
        text.append(buffer, static_cast<std::size_t>(n));
    }
}

}  // namespace

int main(int argc, char** argv) {
    int fd = -1;
    if (argc == 3 && std::strcmp(argv[1], "--options-fd") == 0) {
        char* end = nullptr;
        long value = std::strtol(argv[2], &end, 10);
        if (end != argv[2] && *end == '\0' && value >= 0 && value < 65536)
            fd = static_cast<int>(value);
    }
    if (fd < 0) {
        std::cerr << "fedcli-client: the client daemon, started by `fedcli client start` (run "
                     "that: `fedcli client start --help`)\n";
        return k_exit_usage;
    }
    try {
        std::string document = read_all(fd);
        ::close(fd);
        fedcli::client::Options options;
        try {
            options = fedcli::client::options_from_json(nlohmann::json::parse(document));
        } catch (const nlohmann::json::exception& error) {
            throw fedcli::Error(std::string("client options: ") + error.what());
        }
        // Entry points that call fedcli back (FEDCLI_EXECUTABLE, docs/entry-points.md) must
        // find fedcli, not this program; as everywhere, a value already set is kept. Before
        // any thread exists.
        if (!options.fedcli_executable.empty()) {
            ::setenv("FEDCLI_EXECUTABLE", options.fedcli_executable.c_str(), 0);
        }
        return fedcli::client::serve(std::move(options), std::cout);
    } catch (const std::exception& error) {
        std::cerr << "fedcli: error: " << error.what() << '\n';
        return k_exit_failure;
    }
}
