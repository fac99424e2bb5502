// Control: operator commands.
#include <algorithm>
#include <nlohmann/json.hpp>

#include "combiner/internal.hpp"
#include "core/error.hpp"

namespace fedcli::combiner {

namespace {

constexpr std::uint64_t k_default_round_timeout_ms = 300'000;

v1::Ack refuse(std::string reason) {
    v1::Ack ack;
    ack.set_accepted(false);
    ack.set_code(v1::ACK_CODE_INVALID);
    ack.set_reason(std::move(reason));
    return ack;
}

v1::Ack accept(std::string reason = {}) {
    v1::Ack ack;
    ack.set_accepted(true);
    ack.set_code(v1::ACK_CODE_OK);
    ack.set_reason(std::move(reason));
    return ack;
}

/// Parses a JSON object field ("" = {}); throws fedcli::Error naming the field.
nlohmann::json parse_object(const std::string& text, const std::string& field) {
    if (text.empty()) return nlohmann::json::object();
    nlohmann::json value;
    try {
        value = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& error) {
        throw Error(field + " is not valid JSON: " + error.what());
    }
    if (!value.is_object()) throw Error(field + " must be a JSON object, got " + value.dump());
    return value;
}

/// The aggregator for a session, with the combiner's memory settings unless the operator
/// chose otherwise: every update of a round stays pending (memory-mapped, its pages dropped
/// after use) until the round closes, and one pass writes the result straight into the new
/// model, so no float64 accumulator is needed and memory stays at two models however many
/// clients there are (docs/aggregators.md, Memory).
std::unique_ptr<aggregate::Aggregator> make_session_aggregator(const std::string& name,
                                                               const std::string& config_json) {
    aggregate::Config config =
        aggregate::Config::from_json(parse_object(config_json, "aggregator_config_json"));
    for (const auto& info : aggregate::aggregator_catalog()) {
        if (info.name != name) continue;
        for (const auto& parameter : info.parameters) {
            std::string key(parameter.key);
            if (config.values().count(key)) continue;
            if (key == "batch") config.set(key, parameter.maximum);
            if (key == "release_pages") config.set(key, 1);
        }
    }
    return aggregate::make_aggregator(name, config);  // throws for an unknown name or key
}

}  // namespace

v1::Ack CombinerCore::set_package(const v1::SetPackageRequest& request) {
    if (!is_sha256(request.sha256())) {
        return refuse("package sha256 must be 64 hex digits, got '" + request.sha256() + "'");
    }
    const std::string sha256 = lowercase(request.sha256());
    if (!m_store.has(v1::TRANSFER_KIND_PACKAGE, sha256)) {
        return refuse("package " + short_id(sha256) +
                      " was not uploaded (Transfer.Upload, kind PACKAGE, first)");
    }
    // The combiner holds no keys: it only keeps the signature for the clients, who check it.
    if (!request.signature().empty() &&
        (request.signature().size() > 512 ||
         request.signature().rfind("fedcli-signature-v1 ", 0) != 0 ||
         request.signature().find('\n') != std::string::npos)) {
        return refuse("package " + short_id(sha256) +
                      ": the signature is not a line `fedcli package sign` writes");
    }
    std::error_code ignored;
    auto size =
        std::filesystem::file_size(m_store.path(v1::TRANSFER_KIND_PACKAGE, sha256), ignored);
    std::lock_guard lock(m_mutex);
    m_state.package_sha256 = sha256;
    m_state.package_name = request.name();
    m_state.package_size = size;
    m_db->save_setting("package_sha256", sha256);
    m_db->save_setting("package_name", request.name());
    m_db->save_setting("package_size", std::to_string(size));
    m_state.package_signature = request.signature();
    m_db->save_setting("package_signature", request.signature());
    std::size_t announced = 0;
    for (auto& [id, client] : m_state.clients) {
        if (!client.info.online() || !client.connection || client.has_capability("local-package"))
            continue;
        send_package_available(client);
        ++announced;
    }
    std::string name = request.name().empty() ? "" : "'" + request.name() + "' ";
    log_status("package " + name + "(" + short_id(sha256) + ") is current; announced to " +
               std::to_string(announced) + (announced == 1 ? " client" : " clients"));
    m_changed.notify_all();
    return accept();
}

v1::Ack CombinerCore::set_seed_model(const v1::SetSeedModelRequest& request) {
    if (!is_sha256(request.model_id())) {
        return refuse("model id must be 64 hex digits, got '" + request.model_id() + "'");
    }
    const std::string id = lowercase(request.model_id());
    if (!m_store.has(v1::TRANSFER_KIND_MODEL, id)) {
        return refuse("model " + short_id(id) +
                      " was not uploaded (Transfer.Upload, kind MODEL, first)");
    }
    // A seed is read by every round that starts from it: check the whole file now (headers,
    // and each member's data through its CRC) rather than fail a session later.
    try {
        npz::Reader reader(m_store.model_path(id));
        if (reader.members().empty()) throw Error("it holds no arrays");
        for (std::size_t i = 0; i < reader.members().size(); ++i) reader.verify(i);
    } catch (const Error& error) {
        return refuse("model " + short_id(id) +
                      " is not a readable parameter file (.npz): " + error.what());
    }
    std::error_code ignored;
    auto size = std::filesystem::file_size(m_store.model_path(id), ignored);
    std::lock_guard lock(m_mutex);
    m_state.seed_model_id = id;
    m_db->save_setting("seed_model_id", id);
    if (!m_state.find_model(id)) {
        v1::ModelInfo& model = m_state.models.emplace_back();
        model.set_model_id(id);
        model.set_size(size);
        model.set_created_unix_ms(now_unix_ms());
        persist_model(model);
    }
    log_status("seed model " + short_id(id) + " set");
    return accept();
}

v1::StartSessionResponse CombinerCore::start_session(const v1::StartSessionRequest& request) {
    v1::StartSessionResponse response;
    v1::SessionConfig config = request.config();
    if (config.rounds() == 0) {
        *response.mutable_ack() = refuse("rounds must be at least 1");
        return response;
    }
    if (config.aggregator().empty()) config.set_aggregator("fedavg");
    if (config.min_clients() == 0) config.set_min_clients(1);
    if (config.round_timeout_ms() == 0) config.set_round_timeout_ms(k_default_round_timeout_ms);
    if (config.clients_per_round() != 0 && config.clients_per_round() < config.min_clients()) {
        *response.mutable_ack() =
            refuse("clients_per_round (" + std::to_string(config.clients_per_round()) +
                   ") is less than min_clients (" + std::to_string(config.min_clients()) +
                   "): no round could ever collect enough updates");
        return response;
    }
    if (!(config.clients_fraction() >= 0.0 && config.clients_fraction() <= 1.0)) {
        *response.mutable_ack() = refuse("clients_fraction must be in (0, 1], got " +
                                         std::to_string(config.clients_fraction()));
        return response;
    }
    if (config.buffer_size() != 0 && config.buffer_size() < config.min_clients()) {
        *response.mutable_ack() =
            refuse("buffer_size (" + std::to_string(config.buffer_size()) +
                   ") is less than min_clients (" + std::to_string(config.min_clients()) +
                   "): a full buffer could never commit the round");
        return response;
    }
    std::unique_ptr<aggregate::Aggregator> aggregator;
    try {
        parse_object(config.settings_json(), "settings_json");
        aggregator = make_session_aggregator(config.aggregator(), config.aggregator_config_json());
    } catch (const Error& error) {
        *response.mutable_ack() = refuse(error.what());
        return response;
    }
    if (!config.model_id().empty()) {
        if (!is_sha256(config.model_id()) ||
            !m_store.has(v1::TRANSFER_KIND_MODEL, lowercase(config.model_id()))) {
            *response.mutable_ack() =
                refuse("starting model '" + config.model_id() + "' is not in the model store");
            return response;
        }
        config.set_model_id(lowercase(config.model_id()));
    }

    std::lock_guard fold_lock(m_fold_mutex);
    std::unique_lock lock(m_mutex);
    if (std::string busy = refuse_if_busy(lock); !busy.empty()) {
        *response.mutable_ack() = refuse(busy);
        return response;
    }
    if (config.model_id().empty()) config.set_model_id(m_state.latest_model_id());
    if (config.model_id().empty()) {
        *response.mutable_ack() = refuse(
            "no starting model: upload a seed model and set it (SetSeedModel), or name one in "
            "config.model_id");
        return response;
    }
    try {
        npz::Reader check(m_store.model_path(config.model_id()));
    } catch (const Error& error) {
        *response.mutable_ack() = refuse("starting model " + short_id(config.model_id()) +
                                         " is not a readable parameter file: " + error.what());
        return response;
    }
    SessionRecord& session = m_state.sessions.emplace_back();
    session.id = random_hex(16);
    session.config = config;
    session.config_json = request.config_json();
    session.state = v1::SESSION_STATE_RUNNING;
    session.started_unix_ms = now_unix_ms();
    session.message = "session " + short_id(session.id) + " started";
    log_status("session " + short_id(session.id) + " started: " + std::to_string(config.rounds()) +
               (config.rounds() == 1 ? " round" : " rounds") + ", aggregator " +
               config.aggregator() + ", min_clients " + std::to_string(config.min_clients()) +
               ", model " + short_id(config.model_id()));
    launch_session(session, std::move(aggregator));
    *response.mutable_ack() = accept();
    response.set_session_id(session.id);
    return response;
}

std::string CombinerCore::refuse_if_busy(std::unique_lock<std::mutex>& lock) {
    if (m_stopping) return "the combiner is shutting down";
    for (const auto& session : m_state.sessions) {
        if (session.state == v1::SESSION_STATE_RUNNING) {
            return "session " + session.id + " is running; stop it first (StopSession)";
        }
    }
    // The previous runner has finished (its session is no longer RUNNING); reap it.
    if (m_active && m_active->thread.joinable()) {
        lock.unlock();
        m_active->thread.join();
        lock.lock();
        if (m_stopping) return "the combiner is shutting down";
    }
    return {};
}

void CombinerCore::launch_session(SessionRecord& session,
                                  std::unique_ptr<aggregate::Aggregator> aggregator) {
    for (auto& [id, client] : m_state.clients) {
        // Failure streaks count within a session: everyone starts with a clean slate.
        if (client.info.consecutive_failures() != 0 || client.info.skipped()) {
            client.info.set_consecutive_failures(0);
            client.info.set_skipped(false);
            persist_client(client);
        }
    }
    persist_session(session);
    auto active = std::make_unique<ActiveSession>();
    active->id = session.id;
    active->aggregator = std::move(aggregator);
    active->state_dir = m_store.root() / "sessions" / session.id;
    ActiveSession* runner = active.get();
    m_active = std::move(active);
    m_active->thread = std::thread([this, runner] { run_session(runner); });
}

v1::StartSessionResponse CombinerCore::resume_session(const v1::ResumeSessionRequest& request) {
    v1::StartSessionResponse response;
    std::lock_guard fold_lock(m_fold_mutex);
    std::unique_lock lock(m_mutex);
    if (std::string busy = refuse_if_busy(lock); !busy.empty()) {
        *response.mutable_ack() = refuse(busy);
        return response;
    }
    SessionRecord* session = nullptr;
    if (request.session_id().empty()) {
        if (m_state.sessions.empty()) {
            *response.mutable_ack() = refuse("no session to resume: none has run yet");
            return response;
        }
        session = &m_state.sessions.back();
    } else {
        for (auto& candidate : m_state.sessions) {
            if (candidate.id.rfind(request.session_id(), 0) != 0) continue;
            if (session) {
                *response.mutable_ack() =
                    refuse("session id '" + request.session_id() + "' is ambiguous");
                return response;
            }
            session = &candidate;
        }
        if (!session) {
            *response.mutable_ack() = refuse("no session '" + request.session_id() + "'");
            return response;
        }
    }
    const std::uint32_t committed = session->rounds_committed();
    if (request.rounds() > 0) {
        session->config.set_rounds(committed + request.rounds());
    } else if (committed >= session->config.rounds()) {
        *response.mutable_ack() = refuse("session " + session->id + " has run all its " +
                                         std::to_string(session->config.rounds()) +
                                         " rounds; give a number of further rounds to run more");
        return response;
    }
    const std::string model_id = session->latest_model_id();
    if (!m_store.has(v1::TRANSFER_KIND_MODEL, model_id)) {
        *response.mutable_ack() = refuse("session " + session->id + ": its latest model " +
                                         short_id(model_id) + " is missing from the model store");
        return response;
    }
    std::unique_ptr<aggregate::Aggregator> aggregator;
    try {
        aggregator = make_session_aggregator(session->config.aggregator(),
                                             session->config.aggregator_config_json());
    } catch (const Error& error) {
        *response.mutable_ack() = refuse(error.what());
        return response;
    }
    const v1::SessionState was = session->state;
    session->state = v1::SESSION_STATE_RUNNING;
    session->ended_unix_ms = 0;
    session->message = "session " + short_id(session->id) + " resumed";
    log_status("session " + short_id(session->id) + " resumed (was " + v1::SessionState_Name(was) +
               ") at round " + std::to_string(committed + 1) + " of " +
               std::to_string(session->config.rounds()) + ", model " + short_id(model_id));
    launch_session(*session, std::move(aggregator));
    *response.mutable_ack() = accept();
    response.set_session_id(session->id);
    return response;
}

v1::ListSessionsResponse CombinerCore::list_sessions() {
    std::lock_guard lock(m_mutex);
    v1::ListSessionsResponse response;
    for (const auto& session : m_state.sessions) *response.add_sessions() = session.info();
    return response;
}

v1::Ack CombinerCore::stop_session(const v1::StopSessionRequest& request) {
    std::unique_lock lock(m_mutex);
    SessionRecord* running = nullptr;
    for (auto& session : m_state.sessions) {
        if (session.state == v1::SESSION_STATE_RUNNING) running = &session;
    }
    if (!running || !m_active || m_active->id != running->id) {
        return refuse("no session is running");
    }
    if (!request.session_id().empty() && request.session_id() != running->id) {
        return refuse("session " + request.session_id() + " is not running (session " +
                      running->id + " is)");
    }
    const std::string id = running->id;
    if (!request.now() && m_active->tasks_sent) {
        // The round in progress finishes (and validates); the runner stops after it.
        m_active->stop_after_round = true;
        const std::uint64_t round = running->rounds.empty() ? 0 : running->rounds.back().round_id();
        log("session " + short_id(id) + ": stop requested; it ends after round " +
            std::to_string(round));
        return accept("session " + id + " stops after round " + std::to_string(round) +
                      " (use --now to stop during the round)");
    }
    m_active->stop_requested = true;
    m_changed.notify_all();
    // Answer once the runner has cancelled the open tasks and ended the session, so that a
    // status query right after sees it stopped; a commit in progress is let finish.
    bool ended = m_changed.wait_for(lock, std::chrono::seconds(30), [&] {
        SessionRecord* session = m_state.find_session(id);
        return !session || session->state != v1::SESSION_STATE_RUNNING;
    });
    return accept(ended ? "session " + id + " stopped" : "session " + id + " is stopping");
}

v1::StatusResponse CombinerCore::status() {
    std::lock_guard lock(m_mutex);
    v1::StatusResponse response;
    response.set_combiner_version(FEDCLI_VERSION);
    response.set_session_state(v1::SESSION_STATE_IDLE);
    response.set_insecure(m_options.insecure);
    response.set_tls(!m_options.tls_cert_file.empty());
    if (!m_state.sessions.empty()) {
        const SessionRecord& session = m_state.sessions.back();
        response.set_session_id(session.id);
        response.set_session_state(session.state);
        response.set_rounds(session.config.rounds());
        if (!session.rounds.empty()) {
            response.set_current_round(session.rounds.back().round_id());
            *response.mutable_round() = session.rounds.back();
        }
        *response.mutable_session() = session.info();
    }
    response.set_clients_online(static_cast<std::uint32_t>(m_state.clients_online()));
    response.set_clients_known(static_cast<std::uint32_t>(m_state.clients.size()));
    response.set_package_sha256(m_state.package_sha256);
    response.set_latest_model_id(m_state.latest_model_id());
    response.set_message(m_state.last_message);
    return response;
}

v1::ListClientsResponse CombinerCore::list_clients() {
    std::lock_guard lock(m_mutex);
    v1::ListClientsResponse response;
    std::vector<const ClientRecord*> clients;
    for (const auto& [id, client] : m_state.clients) clients.push_back(&client);
    std::sort(clients.begin(), clients.end(), [](const ClientRecord* a, const ClientRecord* b) {
        return std::tie(a->info.name(), a->info.client_id()) <
               std::tie(b->info.name(), b->info.client_id());
    });
    // Contributions: committed rounds whose aggregation used the client's update.
    std::map<std::string, std::pair<std::uint32_t, std::uint64_t>> contributed;
    for (const auto& session : m_state.sessions) {
        for (const auto& round : session.rounds) {
            if (round.state() != v1::ROUND_STATE_COMMITTED) continue;
            for (const auto& update : round.updates()) {
                if (!update.used()) continue;
                auto& [rounds, examples] = contributed[update.client_id()];
                ++rounds;
                examples += update.num_examples();
            }
        }
    }
    for (const ClientRecord* client : clients) {
        v1::ClientInfo& info = *response.add_clients();
        info = client->info;
        auto found = contributed.find(info.client_id());
        if (found != contributed.end()) {
            info.set_rounds_contributed(found->second.first);
            info.set_examples_contributed(found->second.second);
        }
    }
    return response;
}

grpc::Status CombinerCore::list_rounds(const v1::ListRoundsRequest& request,
                                       v1::ListRoundsResponse* response) {
    std::lock_guard lock(m_mutex);
    if (request.all_sessions()) {
        for (const auto& session : m_state.sessions) {
            for (const auto& round : session.rounds) *response->add_rounds() = round;
        }
        return grpc::Status::OK;
    }
    const SessionRecord* session = nullptr;
    if (request.session_id().empty()) {
        if (m_state.sessions.empty()) return grpc::Status::OK;
        session = &m_state.sessions.back();
    } else {
        session = m_state.find_session(request.session_id());
        if (!session) {
            return {grpc::StatusCode::NOT_FOUND,
                    "list rounds: no session '" + request.session_id() + "'"};
        }
    }
    for (const auto& round : session->rounds) *response->add_rounds() = round;
    return grpc::Status::OK;
}

v1::ListModelsResponse CombinerCore::list_models() {
    std::lock_guard lock(m_mutex);
    v1::ListModelsResponse response;
    for (const auto& model : m_state.models) *response.add_models() = model;
    return response;
}

}  // namespace fedcli::combiner
