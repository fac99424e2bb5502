// `fedcli local`: a whole federation on this machine, with the real daemons.
//
// One command plays what an operator does by hand on several terminals: it builds the seed
// model (the project's `build` entry point), packs the compute package, starts a combiner
// in this process (port 0 on 127.0.0.1, its state under OUT/combiner), starts N
// `fedcli client start` processes that dial it (each in its own process group, its output
// in OUT/logs/client-I.log), pushes package and seed through the same Transfer and Control
// calls as `fedcli package push` and `fedcli model push`, starts a session, and follows it:
// a progress line of the open round on a terminal, one row per finished round with the
// validation metrics (weighted means across clients). At the end, or on Ctrl-C (which stops
// the session at once), it pulls the latest global model and writes the metrics and the
// report to OUT, then stops the clients and the combiner.
//
// Security is not switched off: the combiner requires tokens (this command uses its
// bootstrap admin token and gives each client a client token of its own, in OUT/tokens),
// and the package is signed with a key made for the run (OUT/keys) that the clients trust.
//
// Clients learn their place from the environment (FEDCLI_CLIENT_INDEX, FEDCLI_NUM_CLIENTS,
// FEDCLI_PARTITION, FEDCLI_ALPHA, FEDCLI_SEED), which entry points use to take their share
// of the data.
#include <poll.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "cli/app.hpp"
#include "cli/cmd_session.hpp"
#include "cli/commands.hpp"
#include "cli/federation.hpp"
#include "cli/report.hpp"
#include "cli/text.hpp"
#include "client/client.hpp"
#include "combiner/combiner.hpp"
#include "core/aggregate/aggregator.hpp"
#include "core/dispatch/dispatch.hpp"
#include "core/dispatch/interrupt.hpp"
#include "core/dispatch/process.hpp"
#include "core/error.hpp"
#include "core/npz/npz.hpp"
#include "core/package/package.hpp"
#include "core/package/signature.hpp"
#include "core/project/project.hpp"
#include "core/proto/rpc.hpp"
#include "core/util/ids.hpp"
#include "core/util/sha256.hpp"

namespace fedcli::cli {

namespace v1 = fedcli::v1;
using Stub = v1::Control::Stub;
namespace fs = std::filesystem;

namespace {

constexpr int k_max_clients = 64;

struct LocalOptions {
    fs::path path = ".";
    int clients = 2;
    int rounds = 3;
    std::string aggregator = "fedavg";
    std::vector<std::string> config;
    std::string partition = "iid";
    double alpha = 0.5;
    std::uint64_t seed = 0;
    fs::path out;
    double round_timeout = 600;
    double ready_timeout = 600;
    std::vector<std::string> settings;
    std::vector<std::string> environment;
    std::string python;
    fs::path data_path;
    bool no_validate = false;
    bool verbose = false;
};

/// The default --out: fedcli-local/<UTC time>, never one that exists.
fs::path default_out_dir() {
    std::string stamp = util::utc_timestamp();
    for (char& c : stamp) {
        if (c == ':') c = '-';
    }
    fs::path base = fs::path("fedcli-local") / stamp;
    fs::path candidate = base;
    for (int n = 2; fs::exists(candidate); ++n) {
        candidate = base;
        candidate += "-" + std::to_string(n);
    }
    return candidate;
}

/// Writes `text` to `file` through a temporary name.
void write_file(const fs::path& file, const std::string& text) {
    fs::path temporary = file;
    temporary += ".tmp";
    {
        std::ofstream stream(temporary, std::ios::binary | std::ios::trunc);
        stream << text;
        stream.close();
        if (!stream) throw Error(file.string() + ": cannot write");
    }
    std::error_code error;
    fs::rename(temporary, file, error);
    if (error) throw Error(file.string() + ": cannot write: " + error.message());
}

/// One client daemon, supervised on a thread of its own.
class ClientProcess {
  public:
    ClientProcess(std::string name, dispatch::ProcessSpec spec, fs::path log_file)
        : m_name(std::move(name)), m_log_file(std::move(log_file)), m_log(m_log_file) {
        if (!m_log) throw Error(m_log_file.string() + ": cannot create the client's log");
        spec.log = &m_log;
        spec.on_line = [this](std::string_view line, dispatch::Stream) {
            if (auto reason = client::install_failure_reason(line)) {
                std::lock_guard lock(m_mutex);
                m_install_failure = std::move(reason);
            }
        };
        spec.stop = m_stop.get_token();
        m_thread = std::thread([this, spec = std::move(spec)]() mutable {
            std::string why;
            try {
                dispatch::ProcessResult result = dispatch::run_process(spec);
                why = result.describe();
            } catch (const std::exception& error) {
                why = error.what();
            }
            std::lock_guard lock(m_mutex);
            m_exit = why.empty() ? std::string("exited") : why;
        });
    }
    ~ClientProcess() { stop(); }
    ClientProcess(const ClientProcess&) = delete;
    ClientProcess& operator=(const ClientProcess&) = delete;

    const std::string& name() const { return m_name; }
    const fs::path& log_file() const { return m_log_file; }
    /// How the daemon ended, when it has (before stop() was asked, that is a failure).
    std::optional<std::string> exit() const {
        std::lock_guard lock(m_mutex);
        return m_exit;
    }
    /// Why the daemon's last package install failed, if one did.
    std::optional<std::string> install_failure() const {
        std::lock_guard lock(m_mutex);
        return m_install_failure;
    }
    /// SIGTERM to its process group (SIGKILL after the grace period) and wait.
    void stop() {
        m_stop.request_stop();
        if (m_thread.joinable()) m_thread.join();
    }

  private:
    std::string m_name;
    fs::path m_log_file;
    std::ofstream m_log;
    std::stop_source m_stop;
    mutable std::mutex m_mutex;
    std::optional<std::string> m_exit;
    std::optional<std::string> m_install_failure;
    std::thread m_thread;
};

/// Everything `fedcli local` started, stopped in reverse order whatever happens.
struct Federation {
    std::unique_ptr<combiner::Combiner> combiner;
    std::vector<std::unique_ptr<ClientProcess>> clients;
    ~Federation() { stop(); }
    void stop() {
        // All clients get SIGTERM at once, then the combiner goes.
        std::vector<std::thread> stoppers;
        for (auto& client : clients) stoppers.emplace_back([&client] { client->stop(); });
        for (auto& thread : stoppers) thread.join();
        clients.clear();
        if (combiner) combiner->shutdown();
        combiner.reset();
    }
};

/// The weighted mean of each metric of a round, by name.
std::map<std::string, double> round_means(const v1::RoundInfo& round) {
    std::map<std::string, double> means;
    for (const MetricSummary& summary : summarize_metrics(round)) {
        means[summary.metric] = summary.weighted_mean;
    }
    return means;
}

/// The metrics shown in the live table: accuracy and loss first, at most four.
std::vector<std::string> shown_metrics(const std::vector<std::string>& names) {
    std::vector<std::string> shown;
    for (const char* preferred :
         {"test_accuracy", "test_loss", "training_accuracy", "training_loss", "accuracy", "loss"}) {
        if (std::find(names.begin(), names.end(), preferred) != names.end()) {
            shown.push_back(preferred);
        }
    }
    for (const std::string& name : names) {
        if (std::find(shown.begin(), shown.end(), name) == shown.end()) shown.push_back(name);
    }
    if (shown.size() > 4) shown.resize(4);
    return shown;
}

/// metrics.csv: one row per round and metric.
std::string metrics_csv(const std::vector<v1::RoundInfo>& rounds) {
    std::ostringstream csv;
    csv << "session_round,round_id,metric,clients,weighted_mean,mean,min,max\n";
    const auto positions = session_positions(rounds);
    csv << std::setprecision(9);
    for (std::size_t i = 0; i < rounds.size(); ++i) {
        if (rounds[i].state() != v1::ROUND_STATE_COMMITTED) continue;
        for (const MetricSummary& summary : summarize_metrics(rounds[i])) {
            std::string metric = summary.metric;
            if (metric.find_first_of(",\"\n") != std::string::npos) {
                std::string quoted = "\"";
                for (char c : metric) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
                metric = quoted + "\"";
            }
            csv << positions[i] << ',' << rounds[i].round_id() << ',' << metric << ','
                << summary.values.size() << ',' << summary.weighted_mean << ',' << summary.mean
                << ',' << summary.min << ',' << summary.max << '\n';
        }
    }
    return csv.str();
}

/// metrics.json: the same, one object per committed round.
nlohmann::ordered_json metrics_json(const std::vector<v1::RoundInfo>& rounds) {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    const auto positions = session_positions(rounds);
    for (std::size_t i = 0; i < rounds.size(); ++i) {
        const v1::RoundInfo& round = rounds[i];
        if (round.state() != v1::ROUND_STATE_COMMITTED) continue;
        nlohmann::ordered_json metrics = nlohmann::ordered_json::object();
        for (const MetricSummary& summary : summarize_metrics(round)) {
            metrics[summary.metric] = {{"weighted_mean", summary.weighted_mean},
                                       {"mean", summary.mean},
                                       {"min", summary.min},
                                       {"max", summary.max},
                                       {"clients", summary.values.size()}};
        }
        list.push_back({{"session_round", positions[i]},
                        {"round_id", round.round_id()},
                        {"model_id", round.output_model_id()},
                        {"examples", round_examples(round)},
                        {"updates_accepted", round.updates_accepted()},
                        {"metrics", metrics}});
    }
    return list;
}

class LocalRun {
  public:
    LocalRun(const LocalOptions& options, std::ostream& out) : m_options(options), m_out(out) {}

    int run();

  private:
    void check_options() const;
    void build_seed();
    void start_combiner();
    void start_clients();
    /// False when Ctrl-C came first.
    bool wait_for_clients();
    std::string start_session();
    int follow(const std::string& session_id);
    void write_results(const std::string& session_id);
    /// Throws when a client daemon ended on its own (naming its log).
    void check_clients() const;
    /// Waits up to `milliseconds` for Ctrl-C; true when it came.
    bool wait_interrupt(int milliseconds) const {
        pollfd wait{m_interrupt.fd(), POLLIN, 0};
        return ::poll(&wait, 1, milliseconds) > 0;
    }
    void step(const std::string& text) { m_out << "==> " << text << std::endl; }

    const LocalOptions& m_options;
    std::ostream& m_out;
    dispatch::InterruptGuard m_interrupt;
    project::Project m_project;
    fs::path m_out_dir;
    fs::path m_seed;
    fs::path m_package;
    std::string m_package_id;  // its sha256 (computed once, for the signature and the push)
    std::string m_signature;
    std::ofstream m_combiner_log;
    Federation m_federation;
    std::string m_target;
    std::unique_ptr<CombinerConnection> m_connection;
    std::chrono::steady_clock::time_point m_started = std::chrono::steady_clock::now();
};

void LocalRun::check_options() const {
    const std::string command = "fedcli local";
    if (m_options.clients < 1 || m_options.clients > k_max_clients) {
        throw UsageError("--clients must be between 1 and " + std::to_string(k_max_clients),
                         command);
    }
    if (m_options.rounds < 1) throw UsageError("--rounds must be at least 1", command);
    if (m_options.partition != "iid" && m_options.partition != "dirichlet") {
        throw UsageError(
            "--partition must be 'iid' or 'dirichlet', not '" + m_options.partition + "'", command);
    }
    if (!std::isfinite(m_options.alpha) || m_options.alpha <= 0) {
        throw UsageError("--alpha must be a positive number", command);
    }
    for (const std::string& item : m_options.environment) {
        const auto equals = item.find('=');
        if (equals == std::string::npos || equals == 0) {
            throw UsageError("--env '" + item + "': expected NAME=VALUE", command);
        }
    }
    if (!std::isfinite(m_options.round_timeout) || m_options.round_timeout <= 0) {
        throw UsageError("--round-timeout must be a positive number of seconds", command);
    }
    auto config = aggregate::Config::from_items(m_options.config);
    aggregate::make_aggregator(m_options.aggregator, config);
}

void LocalRun::build_seed() {
    m_seed = m_out_dir / "seed.npz";
    if (m_project.find("build")) {
        step("building the seed model (" + m_project.name + ": build)");
        dispatch::RunRequest request;
        request.output = m_seed;
        request.seed = m_options.seed;
        request.cancel_fd = m_interrupt.fd();
        if (!m_options.python.empty()) request.python = m_options.python;
        for (const std::string& item : m_options.environment) {
            const auto equals = item.find('=');
            request.environment.emplace_back(item.substr(0, equals), item.substr(equals + 1));
        }
        request.log_file = m_out_dir / "logs" / "build.log";
        dispatch::run_entry_point(m_project, "build", request);
    } else if (fs::is_regular_file(m_project.directory / "seed.npz")) {
        step("using " + (m_project.directory / "seed.npz").string() +
             " as the seed (the project has no build entry point)");
        fs::copy_file(m_project.directory / "seed.npz", m_seed);
    } else {
        throw Error(m_project.file.string() +
                    ": no build entry point and no seed.npz: fedcli local needs a seed model");
    }
    npz::Reader seed(m_seed);
    m_out << "    seed " << m_seed.string() << ": " << plural(seed.members().size(), "array")
          << '\n';
    step("packing the compute package");
    m_package = m_out_dir / "package.tgz";
    package::create(m_project.directory, m_package);
    // Signed with a key made for this run: clients run it because they trust that key,
    // exactly as in a real federation (docs/security.md).
    fs::create_directories(m_out_dir / "keys");
    package::generate_key_pair(m_out_dir / "keys" / "package.key",
                               m_out_dir / "keys" / "package.pub");
    m_package_id = util::sha256_file(m_package);
    m_signature = package::sign_package(
        package::load_secret_key(m_out_dir / "keys" / "package.key"), m_package_id);
    m_out << "    " << m_package.string() << " (" << human_bytes(fs::file_size(m_package)) << ")\n";
}

void LocalRun::start_combiner() {
    combiner::Options settings;
    settings.host = "127.0.0.1";
    settings.port = 0;
    settings.data_dir = m_out_dir / "combiner";
    settings.heartbeat_interval = std::chrono::milliseconds(1000);
    settings.max_connects_per_second = 0;  // every client dials from this machine at once
    m_combiner_log.open(m_out_dir / "logs" / "combiner.log");
    if (!m_combiner_log)
        throw Error((m_out_dir / "logs" / "combiner.log").string() + ": cannot create");
    m_combiner_log.setf(std::ios::unitbuf);
    settings.log = &m_combiner_log;
    m_federation.combiner = std::make_unique<combiner::Combiner>(settings);
    m_federation.combiner->start();
    m_target = "127.0.0.1:" + std::to_string(m_federation.combiner->port());
    step("combiner listening on " + m_target + " (state in " + settings.data_dir.string() +
         ", log in " + (m_out_dir / "logs" / "combiner.log").string() + ")");
    // Authenticated like any federation: the combiner's bootstrap admin token for this
    // command, one client token per client (each binds to its client's id).
    AccessOptions access;
    access.token_file = combiner::admin_token_file(settings.data_dir);
    m_connection = std::make_unique<CombinerConnection>(m_target, access);
    fs::create_directories(m_out_dir / "tokens");
    fs::permissions(m_out_dir / "tokens", fs::perms::owner_all, fs::perm_options::replace);
    for (int i = 0; i < m_options.clients; ++i) {
        v1::CreateTokenRequest request;
        request.set_role(v1::TOKEN_ROLE_CLIENT);
        request.set_name("client-" + std::to_string(i));
        auto token = m_connection->call(&Stub::CreateToken, request, "creating a client token");
        const fs::path file = m_out_dir / "tokens" / ("client-" + std::to_string(i) + ".token");
        write_file(file, token.token() + "\n");
        fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write,
                        fs::perm_options::replace);
    }

    proto::TransferOptions transfer;
    transfer.sha256 = m_package_id;  // hashed once, for the signature
    auto package = proto::upload_file(m_connection->transfer(), v1::TRANSFER_KIND_PACKAGE,
                                      m_package, {}, transfer);
    v1::SetPackageRequest package_request;
    package_request.set_sha256(package.id);
    package_request.set_name(m_project.name + ".tgz");
    package_request.set_signature(m_signature);
    auto ack = m_connection->call(&Stub::SetPackage, package_request, "setting the package");
    if (!ack.accepted()) throw Error("the combiner refused the package: " + ack.reason());
    auto seed = proto::upload_file(m_connection->transfer(), v1::TRANSFER_KIND_MODEL, m_seed);
    v1::SetSeedModelRequest seed_request;
    seed_request.set_model_id(seed.id);
    ack = m_connection->call(&Stub::SetSeedModel, seed_request, "setting the seed model");
    if (!ack.accepted()) throw Error("the combiner refused the seed model: " + ack.reason());
}

void LocalRun::start_clients() {
    const fs::path self = dispatch::self_executable();
    step("starting " + plural(m_options.clients, "client") + " (logs in " +
         (m_out_dir / "logs").string() + ")");
    for (int i = 0; i < m_options.clients; ++i) {
        const std::string name = "client-" + std::to_string(i);
        dispatch::ProcessSpec spec;
        spec.executable = self;
        spec.argv = {"fedcli",     "client",     "start",
                     "--combiner", m_target,     "--name",
                     name,         "--work-dir", (m_out_dir / "clients" / name).string()};
        spec.argv.push_back("--trust-key");
        spec.argv.push_back((m_out_dir / "keys" / "package.pub").string());
        spec.argv.push_back("--token-file");
        spec.argv.push_back((m_out_dir / "tokens" / (name + ".token")).string());
        auto env = [&spec](const std::string& variable, const std::string& value) {
            spec.argv.push_back("--env");
            spec.argv.push_back(variable + "=" + value);
        };
        env("FEDCLI_CLIENT_INDEX", std::to_string(i));
        env("FEDCLI_NUM_CLIENTS", std::to_string(m_options.clients));
        env("FEDCLI_PARTITION", m_options.partition);
        std::ostringstream alpha;
        alpha << m_options.alpha;
        env("FEDCLI_ALPHA", alpha.str());
        env("FEDCLI_SEED", std::to_string(m_options.seed));
        for (const std::string& item : m_options.environment) {
            spec.argv.push_back("--env");
            spec.argv.push_back(item);
        }
        if (!m_options.python.empty()) {
            spec.argv.push_back("--python");
            spec.argv.push_back(m_options.python);
        }
        if (!m_options.data_path.empty()) {
            spec.argv.push_back("--data-path");
            spec.argv.push_back(fs::absolute(m_options.data_path).string());
        }
        spec.kill_grace = std::chrono::seconds(10);
        spec.tail_lines = 5;
        m_federation.clients.push_back(std::make_unique<ClientProcess>(
            name, std::move(spec), m_out_dir / "logs" / (name + ".log")));
    }
}

void LocalRun::check_clients() const {
    for (const auto& client : m_federation.clients) {
        if (auto exit = client->exit()) {
            throw Error(client->name() + " stopped unexpectedly (" + *exit + "); see " +
                        client->log_file().string());
        }
        // A client without a working package takes no tasks: the session would wait for it
        // forever.
        if (auto failure = client->install_failure()) {
            throw Error(client->name() + " could not install the compute package: " + *failure +
                        "; see " + client->log_file().string());
        }
    }
}

bool LocalRun::wait_for_clients() {
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(std::llround(m_options.ready_timeout * 1000));
    std::size_t shown = SIZE_MAX;
    while (true) {
        check_clients();
        auto clients =
            m_connection->call(&Stub::ListClients, v1::ListClientsRequest(), "listing the clients");
        std::size_t ready = 0;
        for (const auto& client : clients.clients()) {
            if (client.online() && client.status() == v1::CLIENT_STATUS_IDLE &&
                client.package_sha256() == m_package_id) {
                ++ready;
            }
        }
        if (ready != shown) {
            m_out << "    " << ready << " of " << m_options.clients << " clients ready\n";
            m_out.flush();
            shown = ready;
        }
        if (ready >= static_cast<std::size_t>(m_options.clients)) return true;
        if (std::chrono::steady_clock::now() > deadline) {
            throw Error("only " + std::to_string(ready) + " of " +
                        std::to_string(m_options.clients) + " clients were ready after " +
                        duration_text(m_options.ready_timeout) + "; see the logs in " +
                        (m_out_dir / "logs").string());
        }
        if (wait_interrupt(200)) return false;
    }
}

std::string LocalRun::start_session() {
    auto config = aggregate::Config::from_items(m_options.config);
    nlohmann::ordered_json aggregator_config = nlohmann::ordered_json::object();
    for (const auto& [key, value] : config.values()) aggregator_config[key] = value;
    const nlohmann::ordered_json settings = parse_settings(m_options.settings, "fedcli local");
    v1::StartSessionRequest request;
    v1::SessionConfig& session = *request.mutable_config();
    session.set_rounds(static_cast<std::uint32_t>(m_options.rounds));
    session.set_aggregator(m_options.aggregator);
    session.set_aggregator_config_json(dump_json(aggregator_config));
    session.set_min_clients(static_cast<std::uint32_t>(m_options.clients));
    session.set_round_timeout_ms(
        static_cast<std::uint64_t>(std::llround(m_options.round_timeout * 1000)));
    session.set_validate(!m_options.no_validate);
    session.set_max_round_retries(1);
    session.set_settings_json(dump_json(settings));
    request.set_config_json(dump_json({{"rounds", m_options.rounds},
                                       {"aggregator", m_options.aggregator},
                                       {"aggregator_config", aggregator_config},
                                       {"min_clients", m_options.clients},
                                       {"round_timeout_s", m_options.round_timeout},
                                       {"validate", !m_options.no_validate},
                                       {"settings", settings},
                                       {"local",
                                        {{"partition", m_options.partition},
                                         {"alpha", m_options.alpha},
                                         {"seed", m_options.seed}}}}));
    auto response = m_connection->call(&Stub::StartSession, request, "starting the session");
    if (!response.ack().accepted()) {
        throw Error("the combiner did not start the session: " + response.ack().reason());
    }
    step("session " + short_id(response.session_id()) + ": " + plural(m_options.rounds, "round") +
         " of " + m_options.aggregator + " with " + plural(m_options.clients, "client"));
    return response.session_id();
}

int LocalRun::follow(const std::string& session_id) {
    const bool terminal = ::isatty(STDOUT_FILENO) && &m_out == &std::cout;
    std::set<std::uint64_t> printed;
    std::vector<std::string> columns;
    bool header = false;
    bool progress_shown = false;
    auto clear_progress = [&] {
        if (progress_shown) m_out << "\r\033[K";
        progress_shown = false;
    };
    while (true) {
        check_clients();
        auto status = m_connection->status();
        v1::ListRoundsRequest request;
        request.set_session_id(session_id);
        auto listed = m_connection->call(&Stub::ListRounds, request, "listing the rounds");
        std::vector<v1::RoundInfo> rounds(listed.rounds().begin(), listed.rounds().end());
        const bool ended = status.has_session() && status.session().session_id() == session_id &&
                           status.session().state() != v1::SESSION_STATE_RUNNING;
        const auto positions = session_positions(rounds);
        for (std::size_t i = 0; i < rounds.size(); ++i) {
            const v1::RoundInfo& round = rounds[i];
            if (round.state() == v1::ROUND_STATE_OPEN || printed.count(round.round_id())) continue;
            // Validation follows a commit: a round's row waits for a later round or the end.
            const bool later = i + 1 < rounds.size();
            if (round.state() == v1::ROUND_STATE_COMMITTED && !m_options.no_validate && !later &&
                !ended) {
                continue;
            }
            printed.insert(round.round_id());
            clear_progress();
            if (round.state() != v1::ROUND_STATE_COMMITTED) {
                m_out << "round " << session_round_text(round) << " failed: " << round.reason()
                      << '\n';
                continue;
            }
            if (!header) {
                columns = shown_metrics(metric_names({round}));
                m_out << std::left << std::setw(7) << "round" << std::right << std::setw(10)
                      << "examples" << std::setw(10) << "time";
                for (const auto& column : columns) {
                    m_out << std::setw(std::max<int>(12, static_cast<int>(column.size()) + 2))
                          << column;
                }
                m_out << '\n';
                header = true;
            }
            const double seconds = seconds_between(round.started_unix_ms(), round.closed_unix_ms());
            m_out << std::left << std::setw(7)
                  << (std::to_string(positions[i]) + "/" + std::to_string(m_options.rounds))
                  << std::right << std::setw(10) << round_examples(round) << std::setw(10)
                  << duration_text(seconds);
            const auto means = round_means(round);
            for (const auto& column : columns) {
                auto found = means.find(column);
                m_out << std::setw(std::max<int>(12, static_cast<int>(column.size()) + 2))
                      << (found == means.end() ? std::string("-") : metric_number(found->second));
            }
            m_out << '\n';
        }
        if (ended) {
            clear_progress();
            m_out.flush();
            const auto& session = status.session();
            if (session.state() == v1::SESSION_STATE_FINISHED) return k_exit_success;
            throw Error(session.message().empty()
                            ? "session " + short_id(session_id) + " " +
                                  std::string(session_state_name(session.state()))
                            : session.message());
        }
        if (terminal) {
            clear_progress();
            m_out << watch_line(status);
            progress_shown = true;
        }
        m_out.flush();
        if (wait_interrupt(250)) {
            clear_progress();
            m_out << "interrupted: stopping session " << short_id(session_id) << " now\n";
            v1::StopSessionRequest stop;
            stop.set_session_id(session_id);
            stop.set_now(true);
            m_connection->call(&Stub::StopSession, stop, "stopping the session");
            return 128 + m_interrupt.signal();
        }
    }
}

void LocalRun::write_results(const std::string& session_id) {
    v1::ListRoundsRequest request;
    request.set_session_id(session_id);
    auto listed = m_connection->call(&Stub::ListRounds, request, "listing the rounds");
    std::vector<v1::RoundInfo> rounds(listed.rounds().begin(), listed.rounds().end());
    auto session = find_session(*m_connection, session_id);
    if (!session) throw Error("the combiner does not list session " + short_id(session_id));

    step("results in " + m_out_dir.string());
    if (!session->latest_model_id().empty() && session->rounds_committed() > 0) {
        const fs::path model = m_out_dir / "model.npz";
        proto::download_file(m_connection->transfer(), v1::TRANSFER_KIND_MODEL,
                             session->latest_model_id(), model);
        m_out << "    model.npz      the global model after " +
                     plural(session->rounds_committed(), "round")
              << " (" << short_id(session->latest_model_id()) << ")\n";
    }
    write_file(m_out_dir / "metrics.csv", metrics_csv(rounds));
    write_file(m_out_dir / "metrics.json", metrics_json(rounds).dump(2) + "\n");
    m_out << "    metrics.csv    validation metrics per round (also metrics.json)\n";
    ReportInput input;
    input.session = *session;
    input.rounds = rounds;
    ClientNames names(*m_connection);
    input.client_names = names.all();
    input.generator = "fedcli " + std::string(version()) + " (fedcli local)";
    input.combiner = m_target;
    input.generated_unix_ms = util::now_unix_ms();
    write_file(m_out_dir / "report.html", render_report(input, ReportFormat::html));
    m_out << "    report.html    charts and tables of the session\n"
          << "    logs/          combiner and client logs; combiner/ holds its state\n";
}

int LocalRun::run() {
    check_options();
    m_project = project::load(m_options.path);
    m_out_dir = m_options.out.empty() ? default_out_dir() : m_options.out;
    if (fs::exists(m_out_dir) && !fs::is_empty(m_out_dir)) {
        throw Error(m_out_dir.string() +
                    " exists and is not empty: give another --out (results are never "
                    "overwritten)");
    }
    fs::create_directories(m_out_dir / "logs");
    m_out.setf(std::ios::unitbuf);
    m_out << "fedcli local: " << m_project.name << " (" << m_project.file.string() << "), "
          << plural(m_options.clients, "client") << ", " << plural(m_options.rounds, "round")
          << ", " << m_options.partition
          << (m_options.partition == "dirichlet" ? " alpha " + metric_number(m_options.alpha)
                                                 : std::string())
          << " partition, seed " << m_options.seed << ", results in " << m_out_dir.string() << '\n';

    build_seed();
    start_combiner();
    start_clients();
    if (!wait_for_clients()) {
        m_out << "interrupted before the session started: stopping the clients and the "
                 "combiner\n";
        m_federation.stop();
        return 128 + m_interrupt.signal();
    }
    const std::string session_id = start_session();
    int code = k_exit_success;
    std::optional<Error> failure;
    try {
        code = follow(session_id);
    } catch (const Error& error) {
        failure = error;
    }
    if (code != k_exit_success && !failure) {
        // Interrupted: wait for the stop to land so that the results are final.
        for (int i = 0; i < 100; ++i) {
            auto status = m_connection->status();
            if (!status.has_session() || status.session().state() != v1::SESSION_STATE_RUNNING) {
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    }
    write_results(session_id);
    step("stopping the clients and the combiner");
    m_federation.stop();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - m_started).count();
    if (failure) throw *failure;
    m_out << "fedcli local finished in " << duration_text(seconds) << '\n';
    return code;
}

int local(const LocalOptions& options, std::ostream& out) {
    LocalRun run(options, out);
    return run.run();
}

Action setup_local(CLI::App& command, const Streams& streams) {
    auto options = std::make_shared<LocalOptions>();
    command.add_option("--path,-p", options->path, "Project folder (default: .)")->type_name("DIR");
    command.add_option("--clients,-n", options->clients, "Number of client daemons")
        ->capture_default_str();
    command.add_option("--rounds,-r", options->rounds, "Number of rounds")->capture_default_str();
    command
        .add_option("--aggregator,-a", options->aggregator,
                    "Aggregator (see `fedcli model aggregate --help`)")
        ->capture_default_str();
    command.add_option("--config,-c", options->config, "Aggregator setting KEY=VALUE (repeatable)")
        ->type_name("KEY=VALUE");
    command
        .add_option("--partition", options->partition,
                    "How entry points split the data: iid or dirichlet (FEDCLI_PARTITION)")
        ->capture_default_str();
    command
        .add_option("--alpha", options->alpha,
                    "Dirichlet concentration; smaller is more skewed (FEDCLI_ALPHA)")
        ->capture_default_str();
    command
        .add_option("--seed", options->seed, "Seed for the model and the partition (FEDCLI_SEED)")
        ->capture_default_str();
    command
        .add_option("--out,-o", options->out,
                    "Results folder (default: fedcli-local/<UTC time>); must be new or empty")
        ->type_name("DIR");
    command.add_option("--round-timeout", options->round_timeout, "Seconds a round may take")
        ->capture_default_str();
    command
        .add_option("--ready-timeout", options->ready_timeout,
                    "Seconds the clients may take to start (package install, startup)")
        ->capture_default_str();
    command
        .add_option("--settings,-s", options->settings,
                    "Round setting KEY=VALUE passed to train (repeatable)")
        ->type_name("KEY=VALUE");
    command
        .add_option("--env,-e", options->environment,
                    "Extra environment for the entry points (build and every client's; repeatable)")
        ->type_name("NAME=VALUE");
    command.add_option("--python", options->python, "Interpreter for python entry points");
    command
        .add_option("--data-path", options->data_path,
                    "Data folder exported to entry points (FEDCLI_DATA_PATH)")
        ->type_name("DIR");
    command.add_flag("--no-validate", options->no_validate, "Skip validation after each round");
    std::ostream& out = streams.out;
    return [options, &out] { return local(*options, out); };
}

}  // namespace

void register_local_commands(CLI::App& app, Dispatch& dispatch) {
    static constexpr CommandSpec k_commands[] = {
        {"local", "Run a whole federation on this machine: combiner, N clients, one session",
         setup_local},
    };
    add_commands(app, k_commands, dispatch);
}

}  // namespace fedcli::cli
