// Federation overhead: round time and memory of real combiner and client processes, and
// transfer throughput through the combiner against raw TCP loopback in the same run.
//
//   bench_federation [--fedcli PATH] [--python PY] [--rounds 4] [--quick]
//                    [--transfer-only] [--throughput-target 0.5]
//
// Rounds: for each configuration (N clients, model size) it starts `fedcli combiner start`
// and N `fedcli client start --path echo` processes (an "echo" project whose train copies
// its input to its output and writes {"num_examples": 1}: no ML, only fedcli's overhead),
// pushes a float32 seed, runs one session of --rounds rounds (FedAvg, all N clients) and
// reports the mean round time over the rounds after the first (from the combiner's round
// start/close times), the combiner's peak RSS and the largest client peak RSS (VmHWM in
// /proc/PID/status), and the largest client RSS (VmRSS) once all clients are online and
// idle, before the session. Configurations: N=2 at 4 MB and 100 MB, N=8 at 100 MB, N=32 at 0.4 MB
// (--quick: N=2 at 4 MB and N=8 at 4 MB only; --transfer-only: none). These combiners run
// --insecure (the echo clients have no tokens).
//
// Throughput: a 100 MB model pushed (Transfer.Upload, sha256 on both sides, written to the
// combiner's store) and pulled (Transfer.Download into a verified file) with the same
// helpers the commands use, through a combiner that requires tokens (the admin token it
// made), best of 3, against one thread sending 1 GiB over a loopback TCP socket to another
// that reads and discards it (best of 3), against SHA-256 on one core, and against "bare
// TCP" transfers that do a verified transfer's own work with no protocol (bare_transfer),
// all measured in the same run. It also prints the CPU time a transfer at the target may
// take on this machine's cores, next to what the loopback's socket copies and one SHA-256
// pass take.
//
// Targets (docs/benchmarks.md): upload and download >= --throughput-target of loopback;
// combiner peak RSS <= 2 x model + 64 MiB; idle client RSS <= 16 MB. Exits 1 when a target is
// missed, 2 on a setup error.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "core/error.hpp"
#include "core/npz/npz.hpp"
#include "core/proto/rpc.hpp"
#include "core/util/sha256.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
namespace v1 = fedcli::v1;
using Clock = std::chrono::steady_clock;

struct Options {
    std::string fedcli = FEDCLI_BINARY;
    std::string python = "/usr/bin/python3";
    int rounds = 4;
    bool quick = false;
    bool transfer_only = false;
    double throughput_target = 0.5;
};

/// Issue [4/7]: an idle client daemon stays within 16 MB resident.
constexpr std::uint64_t k_client_idle_target = 16'000'000;

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

/// A "Vm...:" field of /proc/PID/status (VmHWM: peak resident set, VmRSS: resident set
/// now) in bytes; 0 when it cannot be read.
std::uint64_t status_bytes(pid_t pid, std::string_view field) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind(field, 0) == 0) return std::stoull(line.substr(field.size())) * 1024;
    }
    return 0;
}

std::uint64_t peak_rss(pid_t pid) {
    return status_bytes(pid, "VmHWM:");
}

/// A child process started with posix_spawn, output to a log file; stopped with SIGTERM
/// (then SIGKILL) on destruction.
class Process {
  public:
    Process(const std::vector<std::string>& argv, const fs::path& log) {
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                         0644);
        posix_spawn_file_actions_adddup2(&actions, 1, 2);
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
        std::vector<char*> args;
        for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
        args.push_back(nullptr);
        int error = posix_spawn(&m_pid, args[0], &actions, nullptr, args.data(), environ);
        posix_spawn_file_actions_destroy(&actions);
        if (error != 0) throw fedcli::Error("cannot start " + argv[0] + ": " + strerror(error));
    }
    ~Process() { stop(); }
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;
    pid_t pid() const { return m_pid; }
    void stop() {
        if (m_pid <= 0) return;
        kill(m_pid, SIGTERM);
        for (int i = 0; i < 100; ++i) {
            if (waitpid(m_pid, nullptr, WNOHANG) == m_pid) {
                m_pid = -1;
                return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        kill(m_pid, SIGKILL);
        waitpid(m_pid, nullptr, 0);
        m_pid = -1;
    }

  private:
    pid_t m_pid = -1;
};

int run_command(const std::vector<std::string>& argv, const fs::path& log) {
    Process process(argv, log);
    int status = 0;
    waitpid(process.pid(), &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/// A float32 model of `bytes` bytes (4 arrays) with values from `seed`.
void write_model(const fs::path& path, std::uint64_t bytes, unsigned seed) {
    fedcli::npz::ParameterSet parameters;
    std::uint64_t elements = bytes / 4;
    std::mt19937 random(seed);
    for (int i = 0; i < 4; ++i) {
        std::uint64_t count = elements / 4 + (i == 0 ? elements % 4 : 0);
        fedcli::npz::Array array(fedcli::npz::DType::float32, {count});
        auto values = array.values<float>();
        float base = static_cast<float>(random() % 1000) / 1000.0f;
        for (std::uint64_t j = 0; j < count; ++j) values[j] = base + static_cast<float>(j % 97);
        parameters.add(std::to_string(i), std::move(array));
    }
    fedcli::npz::write_npz(path, parameters);
}

/// SHA-256 over a 64 MiB buffer on one core, bytes per second: no transfer that verifies
/// sha256 on the receiving side (as fedcli's do) can go faster than this.
double sha256_throughput() {
    std::vector<std::byte> buffer(std::size_t{64} << 20, std::byte{1});
    double best = 0;
    for (int i = 0; i < 3; ++i) {
        auto start = Clock::now();
        fedcli::util::Sha256 hash;
        hash.update(buffer.data(), buffer.size());
        hash.hex_digest();
        best = std::max(best, static_cast<double>(buffer.size()) / seconds_since(start));
    }
    return best;
}

/// The 1 MiB block every loopback sender writes, over and over, truncated at the end.
const std::vector<std::byte>& send_block() {
    static const std::vector<std::byte> block = [] {
        std::vector<std::byte> bytes(std::size_t{1} << 20);
        std::mt19937 random(7);
        for (auto& byte : bytes) byte = static_cast<std::byte>(random());
        return bytes;
    }();
    return block;
}

/// SHA-256 of the `total` bytes a loopback sender writes.
std::string send_digest(std::uint64_t total) {
    fedcli::util::Sha256 hash;
    const auto& block = send_block();
    for (std::uint64_t done = 0; done < total;) {
        auto n = std::min<std::uint64_t>(block.size(), total - done);
        hash.update(block.data(), n);
        done += n;
    }
    return hash.hex_digest();
}

double process_cpu_seconds() {
    timespec now{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
    return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) / 1e9;
}

struct Rate {
    double bytes_per_second = 0;
    double cpu_seconds = 0;  ///< this process's CPU time (both threads, user and system)
};

/// `total` bytes sent over one loopback TCP connection, in 1 MiB writes from memory, to a
/// thread that runs `receive(fd, total)`. Timed from just before `prepare()`, which runs on
/// the sending thread, to the end of `receive`.
template <class Prepare, class Receive>
Rate loopback_transfer(std::uint64_t total, Prepare prepare, Receive receive) {
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    if (bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
        listen(listener, 1) != 0 ||
        getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
        throw fedcli::Error(std::string("loopback listener: ") + strerror(errno));
    }
    std::exception_ptr failure;
    std::thread receiver([&] {
        int connection = accept(listener, nullptr, nullptr);
        try {
            receive(connection, total);
        } catch (...) {
            failure = std::current_exception();
        }
        close(connection);
    });
    int sender = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(sender, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
        throw fedcli::Error(std::string("loopback connect: ") + strerror(errno));
    }
    const auto& block = send_block();
    auto start = Clock::now();
    const double cpu_start = process_cpu_seconds();
    prepare();
    std::uint64_t sent = 0;
    while (sent < total) {
        ssize_t n =
            write(sender, block.data(), std::min<std::uint64_t>(block.size(), total - sent));
        if (n <= 0) break;
        sent += static_cast<std::uint64_t>(n);
    }
    close(sender);
    receiver.join();
    const double seconds = seconds_since(start);
    const double cpu_seconds = process_cpu_seconds() - cpu_start;
    close(listener);
    if (failure) std::rethrow_exception(failure);
    if (sent < total) throw fedcli::Error("loopback: the receiver hung up early");
    return {static_cast<double>(sent) / seconds, cpu_seconds};
}

/// Reads up to `size` bytes into `buffer`, fewer only at end of stream.
std::size_t read_block(int fd, std::vector<std::byte>& buffer, std::uint64_t size) {
    std::size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buffer.data() + got, size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
    }
    return got;
}

/// Writes all of `size` bytes; 0, or the errno that stopped it.
int write_block(int fd, const std::byte* data, std::size_t size) {
    for (std::size_t done = 0; done < size;) {
        ssize_t n = write(fd, data + done, size - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return n < 0 ? errno : ENOSPC;
        done += static_cast<std::size_t>(n);
    }
    return 0;
}

/// Raw loopback TCP: the receiver reads 1 MiB blocks and discards them.
Rate loopback_throughput(std::uint64_t total) {
    return loopback_transfer(
        total, [] {},
        [](int fd, std::uint64_t) {
            std::vector<char> buffer(std::size_t{1} << 20);
            while (read(fd, buffer.data(), buffer.size()) > 0) {
            }
        });
}

/// A verified transfer without a protocol, for reference: the same loopback stream, but one
/// receiving thread hashes every 1 MiB block (SHA-256), writes it to `file` and checks the
/// digest at the end; with `sender_hashes`, the sender first hashes what it will send, as an
/// uploader must to name its file in the header. What fedcli's transfers add (framing, gRPC,
/// reading the file) shows as their fraction of this; a receiver that hashes on a second
/// thread, as fedcli's download does, can beat it.
/// `expected` is send_digest(total), computed once by the caller.
double bare_transfer(std::uint64_t total, const std::string& expected, const fs::path& file,
                     bool sender_hashes) {
    std::string sent_digest;
    const double rate =
        loopback_transfer(
            total,
            [&] {
                if (sender_hashes) sent_digest = send_digest(total);
            },
            [&](int fd, std::uint64_t size) {
                std::vector<std::byte> buffer(std::size_t{1} << 20);
                fedcli::util::Sha256 hash;
                int out = open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                if (out < 0) throw fedcli::Error(file.string() + ": " + strerror(errno));
                std::uint64_t received = 0;
                int error = 0;
                while (received < size && error == 0) {
                    std::size_t got = read_block(
                        fd, buffer, std::min<std::uint64_t>(buffer.size(), size - received));
                    if (got == 0) break;
                    hash.update(buffer.data(), got);
                    error = write_block(out, buffer.data(), got);
                    received += got;
                }
                close(out);
                if (error != 0) throw fedcli::Error(file.string() + ": " + strerror(error));
                if (received != size || hash.hex_digest() != expected) {
                    throw fedcli::Error("bare transfer: received bytes do not match what was sent");
                }
            })
            .bytes_per_second;
    fs::remove(file);
    if (sender_hashes && sent_digest != expected) {
        throw fedcli::Error("bare transfer: sender digest differs");
    }
    return rate;
}

/// A combiner process on a free port with its data in `folder`.
struct Combiner {
    std::unique_ptr<Process> process;
    std::string target;
    std::shared_ptr<grpc::Channel> channel;

    /// With `authenticated`, the combiner requires tokens and the channel uses the admin
    /// token it makes at start (transfers then pay for the token check, as in production);
    /// otherwise it runs --insecure (the rounds' clients need no tokens).
    Combiner(const Options& options, const fs::path& folder, bool authenticated = false) {
        fs::create_directories(folder);
        fs::path port_file = folder / "port";
        std::vector<std::string> argv{options.fedcli,
                                      "combiner",
                                      "start",
                                      "--port",
                                      "0",
                                      "--port-file",
                                      port_file.string(),
                                      "--data-dir",
                                      (folder / "data").string(),
                                      "--heartbeat-interval",
                                      "0.5"};
        if (!authenticated) argv.push_back("--insecure");
        process = std::make_unique<Process>(argv, folder / "combiner.log");
        auto start = Clock::now();
        while (!fs::exists(port_file)) {
            if (seconds_since(start) > 30) throw fedcli::Error("combiner did not start");
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        std::ifstream in(port_file);
        int port = 0;
        in >> port;
        target = "127.0.0.1:" + std::to_string(port);
        fedcli::proto::ChannelOptions channel_options;
        if (authenticated) {
            std::ifstream token(folder / "data" / "admin.token");
            token >> channel_options.token;
            if (channel_options.token.empty()) throw fedcli::Error("no admin token written");
        }
        channel = fedcli::proto::make_channel(target, channel_options);
    }
};

template <class Call>
auto control(Combiner& combiner, Call call) {
    auto stub = v1::Control::NewStub(combiner.channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return call(*stub, context);
}

struct RoundResult {
    int clients = 0;
    std::uint64_t model_bytes = 0;
    double mean_round_s = 0;
    double first_round_s = 0;
    std::uint64_t combiner_peak = 0;
    std::uint64_t client_peak = 0;
    std::uint64_t client_idle = 0;  ///< largest client RSS once all are online and idle
};

RoundResult run_rounds(const Options& options, const fs::path& base, int clients,
                       std::uint64_t model_bytes) {
    fs::path folder = base / ("n" + std::to_string(clients) + "-" + std::to_string(model_bytes));
    fs::create_directories(folder / "echo");
    std::ofstream(folder / "echo" / "fedcli.yaml")
        << "name: echo\nentry_points:\n  train:\n    command: python3 echo.py\n";
    std::ofstream(folder / "echo" / "echo.py")
        << "import json, shutil, sys\nshutil.copyfile(sys.argv[1], sys.argv[2])\n"
           "json.dump({\"num_examples\": 1}, open(sys.argv[2] + \"-metadata\", \"w\"))\n";
    write_model(folder / "seed.npz", model_bytes, 1);

    Combiner combiner(options, folder / "combiner");
    if (run_command({options.fedcli, "model", "push", (folder / "seed.npz").string(), "--combiner",
                     combiner.target},
                    folder / "push.log") != 0) {
        throw fedcli::Error("model push failed; see " + (folder / "push.log").string());
    }
    std::vector<std::unique_ptr<Process>> processes;
    for (int i = 0; i < clients; ++i) {
        std::string name = "c" + std::to_string(i);
        processes.push_back(std::make_unique<Process>(
            std::vector<std::string>{
                options.fedcli, "client", "start", "--combiner", combiner.target, "--name", name,
                "--path", (folder / "echo").string(), "--work-dir",
                (folder / "clients" / name).string(), "--python", options.python},
            folder / (name + ".log")));
    }
    auto start = Clock::now();
    while (true) {
        auto list = control(combiner, [](v1::Control::Stub& stub, grpc::ClientContext& context) {
            v1::ListClientsResponse response;
            stub.ListClients(&context, v1::ListClientsRequest{}, &response);
            return response;
        });
        int idle = 0;
        for (const auto& client : list.clients()) {
            idle += client.online() && client.status() == v1::CLIENT_STATUS_IDLE;
        }
        if (idle >= clients) break;
        if (seconds_since(start) > 120) throw fedcli::Error("clients did not come online");
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::uint64_t client_idle = 0;
    for (const auto& process : processes) {
        client_idle = std::max(client_idle, status_bytes(process->pid(), "VmRSS:"));
    }
    auto started = control(combiner, [&](v1::Control::Stub& stub, grpc::ClientContext& context) {
        v1::StartSessionRequest request;
        request.mutable_config()->set_rounds(static_cast<unsigned>(options.rounds));
        request.mutable_config()->set_aggregator("fedavg");
        request.mutable_config()->set_min_clients(static_cast<unsigned>(clients));
        request.mutable_config()->set_round_timeout_ms(600000);
        v1::StartSessionResponse response;
        stub.StartSession(&context, request, &response);
        return response;
    });
    if (!started.ack().accepted())
        throw fedcli::Error("session refused: " + started.ack().reason());
    while (true) {
        auto status = control(combiner, [](v1::Control::Stub& stub, grpc::ClientContext& context) {
            v1::StatusResponse response;
            stub.GetStatus(&context, v1::GetStatusRequest{}, &response);
            return response;
        });
        if (status.session_state() != v1::SESSION_STATE_RUNNING &&
            status.session_id() == started.session_id()) {
            if (status.session_state() != v1::SESSION_STATE_FINISHED) {
                throw fedcli::Error("session ended: " + status.message());
            }
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    auto rounds = control(combiner, [](v1::Control::Stub& stub, grpc::ClientContext& context) {
        v1::ListRoundsResponse response;
        stub.ListRounds(&context, v1::ListRoundsRequest{}, &response);
        return response;
    });
    RoundResult result;
    result.clients = clients;
    result.model_bytes = model_bytes;
    result.client_idle = client_idle;
    double sum = 0;
    int counted = 0;
    for (int i = 0; i < rounds.rounds_size(); ++i) {
        const auto& round = rounds.rounds(i);
        double seconds =
            static_cast<double>(round.closed_unix_ms() - round.started_unix_ms()) / 1e3;
        if (i == 0) {
            result.first_round_s = seconds;
        } else {
            sum += seconds;
            ++counted;
        }
    }
    result.mean_round_s = counted ? sum / counted : result.first_round_s;
    result.combiner_peak = peak_rss(combiner.process->pid());
    for (const auto& process : processes) {
        result.client_peak = std::max(result.client_peak, peak_rss(process->pid()));
    }
    processes.clear();
    combiner.process->stop();
    fs::remove_all(folder);
    return result;
}

double mib(std::uint64_t bytes) {
    return static_cast<double>(bytes) / (1024.0 * 1024.0);
}

}  // namespace

int main(int argc, char** argv) {
    Options options;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "bench_federation: %s needs a value\n", arg.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (arg == "--fedcli") {
            options.fedcli = value();
        } else if (arg == "--python") {
            options.python = value();
        } else if (arg == "--rounds") {
            options.rounds = std::max(2, std::stoi(value()));
        } else if (arg == "--quick") {
            options.quick = true;
        } else if (arg == "--transfer-only") {
            options.transfer_only = true;
        } else if (arg == "--throughput-target") {
            options.throughput_target = std::stod(value());
        } else {
            std::fprintf(stderr,
                         "usage: bench_federation [--fedcli PATH] [--python PY] [--rounds N] "
                         "[--quick] [--transfer-only] [--throughput-target R]\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    fs::path base =
        fs::temp_directory_path() / ("fedcli-bench-federation-" + std::to_string(getpid()));
    bool ok = true;
    try {
        fs::create_directories(base);
        // Throughput first, on an idle machine.
        const std::uint64_t size = 100'000'000;
        const std::uint64_t loopback_bytes = 1ull << 30;
        Rate best_loopback;
        for (int i = 0; i < 3; ++i) {
            Rate rate = loopback_throughput(loopback_bytes);
            if (rate.bytes_per_second > best_loopback.bytes_per_second) best_loopback = rate;
        }
        const double loopback = best_loopback.bytes_per_second;
        const double loopback_cpu_per_byte =
            best_loopback.cpu_seconds / static_cast<double>(loopback_bytes);
        const double sha256 = sha256_throughput();
        double upload = 0;
        double download = 0;
        double bare_download = 0;
        double bare_upload = 0;
        {
            Combiner combiner(options, base / "transfer", true);
            auto stub = v1::Transfer::NewStub(combiner.channel);
            // Each bare transfer runs next to the fedcli transfer it matches, so both meet the same
            // machine state (the VM hands out fresh pages at very different speeds over time).
            const std::string bare_digest = send_digest(size);
            const fs::path bare_file = base / "bare.bin";
            for (int i = 0; i < 3; ++i) {
                bare_upload =
                    std::max(bare_upload, bare_transfer(size, bare_digest, bare_file, true));
                fs::path file = base / ("model-" + std::to_string(i) + ".npz");
                write_model(file, size, 100 + static_cast<unsigned>(i));
                auto start = Clock::now();
                auto uploaded = fedcli::proto::upload_file(*stub, v1::TRANSFER_KIND_MODEL, file);
                upload =
                    std::max(upload, static_cast<double>(uploaded.size) / seconds_since(start));
                bare_download =
                    std::max(bare_download, bare_transfer(size, bare_digest, bare_file, false));
                fs::path copy = base / ("pulled-" + std::to_string(i) + ".npz");
                start = Clock::now();
                auto pulled =
                    fedcli::proto::download_file(*stub, v1::TRANSFER_KIND_MODEL, uploaded.id, copy);
                download =
                    std::max(download, static_cast<double>(pulled.size) / seconds_since(start));
                fs::remove(file);
                fs::remove(copy);
            }
        }
        const double target = options.throughput_target;
        std::printf("transfer (100 MB model, best of 3)\n");
        std::printf("  raw TCP loopback     %8.0f MB/s  (%.1f cores busy)\n", loopback / 1e6,
                    best_loopback.cpu_seconds * loopback / static_cast<double>(loopback_bytes));
        std::printf("  sha256, one core     %8.0f MB/s  (%.2f of loopback)\n", sha256 / 1e6,
                    sha256 / loopback);
        std::printf(
            "  bare TCP download    %8.0f MB/s  (%.2f of loopback; no protocol: the receiver "
            "hashes and writes a file)\n",
            bare_download / 1e6, bare_download / loopback);
        std::printf(
            "  bare TCP upload      %8.0f MB/s  (%.2f of loopback; as above, the sender hashes "
            "first)\n",
            bare_upload / 1e6, bare_upload / loopback);
        std::printf(
            "  upload (push)        %8.0f MB/s  ratio %.2f (target >= %.2f), %.2f of bare TCP\n",
            upload / 1e6, upload / loopback, target, upload / bare_upload);
        std::printf(
            "  download (pull)      %8.0f MB/s  ratio %.2f (target >= %.2f), %.2f of bare TCP\n",
            download / 1e6, download / loopback, target, download / bare_download);
        // What the target leaves to spend: at target x loopback, a transfer of `size` bytes
        // takes size / (target x loopback) seconds on this many cores.
        const double cores = std::max(1u, std::thread::hardware_concurrency());
        const double budget = cores * static_cast<double>(size) / (target * loopback);
        std::printf(
            "  CPU at the target: %.3f CPU-s for %.0f MB on %.0f cores; the socket copies take "
            "%.3f of it and each SHA-256 pass %.3f (a download needs one, an upload two)\n",
            budget, static_cast<double>(size) / 1e6, cores,
            loopback_cpu_per_byte * static_cast<double>(size), static_cast<double>(size) / sha256);
        if (sha256 / loopback < target) {
            std::printf(
                "  (out of reach here: every transfer verified on receipt runs the whole file "
                "through one SHA-256, and one core hashes at %.2f of loopback)\n",
                sha256 / loopback);
        }
        ok = ok && upload / loopback >= target && download / loopback >= target;

        std::vector<std::pair<int, std::uint64_t>> configurations =
            options.transfer_only ? std::vector<std::pair<int, std::uint64_t>>{}
            : options.quick
                ? std::vector<std::pair<int, std::uint64_t>>{{2, 4'000'000}, {8, 4'000'000}}
                : std::vector<std::pair<int, std::uint64_t>>{
                      {2, 4'000'000}, {2, 100'000'000}, {8, 100'000'000}, {32, 400'000}};
        if (!configurations.empty()) {
            std::printf("\nrounds (echo train, fedavg, %d rounds; mean of rounds 2..%d)\n",
                        options.rounds, options.rounds);
            std::printf("  %7s  %9s  %9s  %9s  %13s  %11s  %11s  %11s\n", "clients", "model",
                        "round", "first", "combiner peak", "limit", "client peak", "client idle");
            for (auto [clients, bytes] : configurations) {
                RoundResult result = run_rounds(options, base, clients, bytes);
                std::uint64_t limit = 2 * bytes + (64ull << 20);
                bool within = result.combiner_peak <= limit;
                bool lean = result.client_idle <= k_client_idle_target;
                ok = ok && within && lean;
                std::printf(
                    "  %7d  %6.1f MB  %7.2f s  %7.2f s  %9.0f MiB  %7.0f MiB%s  %7.0f MiB  "
                    "%7.1f MB%s\n",
                    clients, static_cast<double>(bytes) / 1e6, result.mean_round_s,
                    result.first_round_s, mib(result.combiner_peak), mib(limit), within ? " " : "!",
                    mib(result.client_peak), static_cast<double>(result.client_idle) / 1e6,
                    lean ? " " : "!");
                std::fflush(stdout);
            }
        }
        std::printf("\n%s\n", ok ? "all targets met"
                                 : "target missed (ratio below target, or '!': combiner peak "
                                   "RSS above 2 x model + 64 MiB, or idle client RSS above "
                                   "16 MB)");
    } catch (const std::exception& error) {
        std::fprintf(stderr, "bench_federation: %s (files kept in %s)\n", error.what(),
                     base.c_str());
        return 2;
    }
    fs::remove_all(base);
    return ok ? 0 : 1;
}
