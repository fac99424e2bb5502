// The State <-> Database link: rebuilding State at start-up and queueing its changes.
#include <algorithm>

#include "combiner/internal.hpp"
#include "core/error.hpp"

namespace fedcli::combiner {

std::uint32_t SessionRecord::rounds_committed() const {
    return static_cast<std::uint32_t>(std::count_if(
        rounds.begin(), rounds.end(),
        [](const v1::RoundInfo& round) { return round.state() == v1::ROUND_STATE_COMMITTED; }));
}

std::string SessionRecord::latest_model_id() const {
    for (auto it = rounds.rbegin(); it != rounds.rend(); ++it) {
        if (it->state() == v1::ROUND_STATE_COMMITTED) return it->output_model_id();
    }
    return config.model_id();
}

std::uint32_t SessionRecord::attempts(std::uint32_t session_round) const {
    return static_cast<std::uint32_t>(std::count_if(
        rounds.begin(), rounds.end(),
        [&](const v1::RoundInfo& round) { return round.session_round() == session_round; }));
}

v1::SessionInfo SessionRecord::info() const {
    v1::SessionInfo info;
    info.set_session_id(id);
    *info.mutable_config() = config;
    info.set_config_json(config_json);
    info.set_state(state);
    info.set_message(message);
    info.set_started_unix_ms(started_unix_ms);
    info.set_ended_unix_ms(ended_unix_ms);
    info.set_rounds_committed(rounds_committed());
    info.set_latest_model_id(latest_model_id());
    return info;
}

SessionRecord SessionRecord::from_info(const v1::SessionInfo& info) {
    SessionRecord session;
    session.id = info.session_id();
    session.config = info.config();
    session.config_json = info.config_json();
    session.state = info.state();
    session.message = info.message();
    session.started_unix_ms = info.started_unix_ms();
    session.ended_unix_ms = info.ended_unix_ms();
    return session;
}

void CombinerCore::persist_client(const ClientRecord& client) {
    m_db->save_client(client.info);
}

void CombinerCore::persist_session(const SessionRecord& session) {
    m_db->save_session(session.info());
}

void CombinerCore::persist_round(const v1::RoundInfo& round) {
    m_db->save_round(round);
}

void CombinerCore::persist_model(const v1::ModelInfo& model) {
    m_db->save_model(model);
}

void CombinerCore::count_task_outcome(const std::string& client_id, bool success) {
    auto found = m_state.clients.find(client_id);
    if (found == m_state.clients.end()) return;
    ClientRecord& client = found->second;
    const std::uint32_t before = client.info.consecutive_failures();
    client.info.set_consecutive_failures(success ? 0 : before + 1);
    if (client.info.consecutive_failures() == before) return;
    if (m_active) {
        const SessionRecord* session = m_state.find_session(m_active->id);
        client.info.set_skipped(session && !is_selectable(client, session->config));
        if (client.info.skipped() && before + 1 == session->config.max_client_failures()) {
            log(client.label() + " failed " + std::to_string(client.info.consecutive_failures()) +
                " tasks in a row: not selected again in session " + short_id(session->id) +
                " (max_client_failures)");
        }
    }
    persist_client(client);
}

void CombinerCore::load_state() {
    StoredState stored = m_db->load();
    const std::int64_t now = now_unix_ms();
    m_tokens.load(stored.tokens);

    for (const auto& info : stored.clients) {
        ClientRecord& client = m_state.clients[info.client_id()];
        client.info = info;
        client.info.set_online(false);
        client.info.set_skipped(false);
        client.info.set_status(v1::CLIENT_STATUS_UNSPECIFIED);
    }
    m_state.models.assign(stored.models.begin(), stored.models.end());
    auto setting = [&](const std::string& key) {
        auto found = stored.settings.find(key);
        return found == stored.settings.end() ? std::string() : found->second;
    };
    m_state.seed_model_id = setting("seed_model_id");
    m_state.package_sha256 = setting("package_sha256");
    m_state.package_name = setting("package_name");
    m_state.package_signature = setting("package_signature");
    try {
        std::string size = setting("package_size");
        m_state.package_size = size.empty() ? 0 : std::stoull(size);
    } catch (const std::exception&) {
        m_state.package_size = 0;
    }
    if (!m_state.package_sha256.empty() &&
        !m_store.has(v1::TRANSFER_KIND_PACKAGE, m_state.package_sha256)) {
        log("warning: package " + short_id(m_state.package_sha256) + " is missing from " +
            m_store.path(v1::TRANSFER_KIND_PACKAGE, m_state.package_sha256).string() +
            "; push it again");
    }

    std::map<std::string, std::size_t> session_index;
    for (const auto& info : stored.sessions) {
        session_index[info.session_id()] = m_state.sessions.size();
        m_state.sessions.push_back(SessionRecord::from_info(info));
    }
    std::size_t orphans = 0;
    for (auto& round : stored.rounds) {
        m_state.last_round_id = std::max(m_state.last_round_id, round.round_id());
        auto found = session_index.find(round.session_id());
        if (found == session_index.end()) {
            ++orphans;
            continue;
        }
        if (round.state() == v1::ROUND_STATE_OPEN) {
            round.set_state(v1::ROUND_STATE_FAILED);
            round.set_reason("the combiner stopped while the round was open");
            if (round.closed_unix_ms() == 0) round.set_closed_unix_ms(now);
            persist_round(round);
        }
        m_state.sessions[found->second].rounds.push_back(std::move(round));
    }
    if (orphans > 0) {
        log("warning: " + std::to_string(orphans) + " stored rounds name unknown sessions");
    }
    for (auto& session : m_state.sessions) {
        if (session.state != v1::SESSION_STATE_RUNNING) continue;
        session.state = v1::SESSION_STATE_INTERRUPTED;
        session.ended_unix_ms = now;
        session.message = "session " + short_id(session.id) + " was interrupted after " +
                          std::to_string(session.rounds_committed()) + " of " +
                          std::to_string(session.config.rounds()) +
                          " rounds (the combiner stopped); `fedcli session resume` continues it";
        persist_session(session);
    }
    m_state.last_log_sequence = stored.last_log_sequence;
    if (!m_state.sessions.empty()) m_state.last_message = m_state.sessions.back().message;
    m_db->flush();
    log("state restored from " + m_db->file().string() + ": " +
        std::to_string(m_state.clients.size()) + " clients, " +
        std::to_string(m_state.sessions.size()) + " sessions, " +
        std::to_string(stored.rounds.size()) + " rounds, " + std::to_string(m_state.models.size()) +
        " models");
}

}  // namespace fedcli::combiner
