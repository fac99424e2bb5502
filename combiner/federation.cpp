// Federation: client streams (registry, heartbeats, task status) and result reports.
#include <nlohmann/json.hpp>
#include <sstream>

#include "combiner/internal.hpp"
#include "core/error.hpp"
#include "core/util/limits.hpp"

namespace fedcli::combiner {

namespace {

constexpr std::uint32_t k_protocol_version = 1;

/// Client ids a client may bring along: what we hand out (16 hex digits) and anything of
/// similar shape (a client keeps its id in its work folder).
bool well_formed_client_id(const std::string& id) {
    if (id.empty() || id.size() > 64) return false;
    for (char c : id) {
        bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  c == '-' || c == '_' || c == '.';
        if (!ok) return false;
    }
    return true;
}

v1::Ack make_ack(bool accepted, v1::AckCode code, std::string reason = {}) {
    v1::Ack ack;
    ack.set_accepted(accepted);
    ack.set_code(code);
    ack.set_reason(std::move(reason));
    return ack;
}

bool is_final(v1::TaskState state) {
    return state == v1::TASK_STATE_SUCCEEDED || state == v1::TASK_STATE_FAILED ||
           state == v1::TASK_STATE_CANCELLED || state == v1::TASK_STATE_REJECTED;
}

/// Why a task failed, as recorded: "exited with code 3: <last line>" when the client gave
/// no message of its own.
std::string failure_text(const v1::TaskStatus& status) {
    if (!status.message().empty()) return status.message();
    std::string text = status.exit_code() != 0
                           ? "exited with code " + std::to_string(status.exit_code())
                           : "no reason given";
    if (status.tail_size() > 0) text += ": " + status.tail(status.tail_size() - 1);
    return text;
}

}  // namespace

bool CombinerCore::is_ready(const ClientRecord& client) const {
    if (!client.info.online() || client.info.status() != v1::CLIENT_STATUS_IDLE) return false;
    if (client.has_capability("local-package")) return true;
    return !m_state.package_sha256.empty() &&
           client.info.package_sha256() == m_state.package_sha256;
}

void CombinerCore::send_package_available(ClientRecord& client) {
    if (!client.connection || m_state.package_sha256.empty() ||
        client.has_capability("local-package")) {
        return;
    }
    v1::ServerMessage message;
    message.mutable_package_available()->set_sha256(m_state.package_sha256);
    message.mutable_package_available()->set_size(m_state.package_size);
    message.mutable_package_available()->set_signature(m_state.package_signature);
    client.connection->send(std::move(message));
}

bool CombinerCore::admit_connect(const std::string& peer) {
    if (m_options.max_connects_per_second <= 0) return true;
    // "ipv4:127.0.0.1:45678" -> "ipv4:127.0.0.1": one bucket per address, not per port.
    const std::string address = peer.substr(0, peer.rfind(':'));
    const double capacity = 2 * m_options.max_connects_per_second;
    const auto now = Clock::now();
    std::lock_guard lock(m_mutex);
    if (m_connect_buckets.size() > 10000) {
        // Forget full buckets: they hold no information.
        std::erase_if(m_connect_buckets, [&](const auto& item) {
            return item.second.tokens +
                       std::chrono::duration<double>(now - item.second.updated).count() *
                           m_options.max_connects_per_second >=
                   capacity;
        });
    }
    auto [found, inserted] = m_connect_buckets.try_emplace(address, ConnectBucket{capacity, now});
    ConnectBucket& bucket = found->second;
    if (!inserted) {
        const double elapsed = std::chrono::duration<double>(now - bucket.updated).count();
        bucket.tokens =
            std::min(capacity, bucket.tokens + elapsed * m_options.max_connects_per_second);
        bucket.updated = now;
    }
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
}

grpc::Status CombinerCore::connect(grpc::ServerContext* context, Connection::Stream* stream,
                                   const Caller& caller) {
    if (!admit_connect(context->peer())) {
        std::ostringstream rate;
        rate << m_options.max_connects_per_second;
        log("connection attempt from " + context->peer() + " refused: more than " + rate.str() +
            " per second");
        return {grpc::StatusCode::RESOURCE_EXHAUSTED,
                "connect: too many connection attempts from this address (the combiner allows " +
                    rate.str() + " per second, --max-connects-per-second); back off and retry"};
    }
    v1::ClientMessage message;
    if (!stream->Read(&message)) {
        return {grpc::StatusCode::CANCELLED, "connect: the stream ended before Hello"};
    }
    if (!message.has_hello()) {
        return {grpc::StatusCode::INVALID_ARGUMENT, "connect: the first message must be Hello"};
    }
    const v1::Hello hello = message.hello();
    if (hello.protocol_version() > k_protocol_version) {
        return {grpc::StatusCode::FAILED_PRECONDITION,
                "connect: protocol version " + std::to_string(hello.protocol_version()) +
                    " is not supported; this combiner speaks fedcli.v1 (protocol version 1)"};
    }
    std::string client_id;
    const grpc::Status bound = m_tokens.bind_client(
        caller, well_formed_client_id(hello.client_id()) ? hello.client_id() : std::string(),
        random_hex(16), client_id);
    if (!bound.ok()) {
        log("connection of client '" + hello.name() + "' refused: " + bound.error_message());
        return bound;
    }

    auto connection = std::make_shared<Connection>(context, stream);
    {
        std::lock_guard lock(m_mutex);
        if (m_stopping) {
            connection->finish();
            return {grpc::StatusCode::UNAVAILABLE, "connect: the combiner is shutting down"};
        }
        auto known = m_state.clients.find(client_id);
        const bool online = known != m_state.clients.end() && known->second.info.online();
        if (!online && m_state.clients_online() >= m_options.max_clients) {
            connection->finish();
            log("connection of client '" + hello.name() + "' refused: " +
                std::to_string(m_options.max_clients) + " clients online, the limit");
            return {grpc::StatusCode::RESOURCE_EXHAUSTED,
                    "connect: the combiner serves its limit of " +
                        std::to_string(m_options.max_clients) + " online clients (--max-clients)"};
        }
        ClientRecord& client = m_state.clients[client_id];
        std::shared_ptr<Connection> older = std::move(client.connection);
        bool was_online = client.info.online();
        client.connection = connection;
        client.token_id = caller.token_id;
        client.info.set_client_id(client_id);
        client.info.set_name(hello.name());
        client.info.set_version(hello.version());
        client.info.set_online(true);
        client.info.set_status(v1::CLIENT_STATUS_UNSPECIFIED);
        client.info.set_package_sha256(lowercase(hello.package_sha256()));
        client.info.set_last_seen_unix_ms(now_unix_ms());
        if (client.info.first_seen_unix_ms() == 0) {
            client.info.set_first_seen_unix_ms(client.info.last_seen_unix_ms());
        }
        // A (re)started client process gets a fresh chance: its failure streak ends here.
        if (!was_online) {
            client.info.set_consecutive_failures(0);
            client.info.set_skipped(false);
        }
        persist_client(client);
        client.capabilities.assign(hello.capabilities().begin(), hello.capabilities().end());
        client.last_message = Clock::now();
        // The older stream of the same client is dead or about to be: a client has one.
        if (older) older->cancel();

        v1::ServerMessage welcome;
        welcome.mutable_welcome()->set_client_id(client_id);
        welcome.mutable_welcome()->set_heartbeat_interval_ms(
            static_cast<std::uint32_t>(m_options.heartbeat_interval.count()));
        welcome.mutable_welcome()->set_combiner_version(FEDCLI_VERSION);
        welcome.mutable_welcome()->set_protocol_version(k_protocol_version);
        connection->send(std::move(welcome));
        send_package_available(client);
        log(client.label() +
            (was_online ? " reconnected (replacing its older stream); " : " joined; ") +
            std::to_string(m_state.clients_online()) + " online");
    }
    m_changed.notify_all();

    while (stream->Read(&message)) {
        handle_client_message(client_id, connection, message);
    }

    {
        std::lock_guard lock(m_mutex);
        auto found = m_state.clients.find(client_id);
        if (found != m_state.clients.end() && found->second.connection == connection) {
            ClientRecord& client = found->second;
            client.connection.reset();
            if (client.info.online()) {
                client.info.set_online(false);
                persist_client(client);
                log(client.label() + " left: stream closed; " +
                    std::to_string(m_state.clients_online()) + " online");
            }
        }
    }
    m_changed.notify_all();
    connection->finish();
    return grpc::Status::OK;
}

void CombinerCore::handle_client_message(const std::string& client_id,
                                         const std::shared_ptr<Connection>& connection,
                                         const v1::ClientMessage& message) {
    {
        std::lock_guard lock(m_mutex);
        auto found = m_state.clients.find(client_id);
        // A replaced stream's late messages no longer speak for the client.
        if (found == m_state.clients.end() || found->second.connection != connection) return;
        ClientRecord& client = found->second;
        client.last_message = Clock::now();
        client.info.set_last_seen_unix_ms(now_unix_ms());
        bool changed = false;
        if (!client.info.online()) {
            client.info.set_online(true);
            changed = true;
            log(client.label() + " is back; " + std::to_string(m_state.clients_online()) +
                " online");
        }
        const v1::ClientStatus status_before = client.info.status();
        const std::string package_before = client.info.package_sha256();
        switch (message.body_case()) {
            case v1::ClientMessage::kHeartbeat:
                client.info.set_status(message.heartbeat().status());
                client.info.set_package_sha256(lowercase(message.heartbeat().package_sha256()));
                break;
            case v1::ClientMessage::kTaskStatus:
                handle_task_status(client, message.task_status());
                break;
            case v1::ClientMessage::kLogLines:
                handle_log_lines(client, message.log_lines());
                break;
            default:
                break;  // a second Hello is ignored
        }
        // Heartbeats that change nothing are not written (last_seen is saved with changes
        // and when the client leaves).
        if (changed || client.info.status() != status_before ||
            client.info.package_sha256() != package_before) {
            persist_client(client);
        }
    }
    m_changed.notify_all();
}

void CombinerCore::handle_task_status(ClientRecord& client, const v1::TaskStatus& status) {
    const v1::TaskState state = status.state();
    if (state == v1::TASK_STATE_RECEIVED || state == v1::TASK_STATE_RUNNING) {
        client.info.set_status(v1::CLIENT_STATUS_BUSY);
    }
    auto found = m_state.tasks.find(status.task_id());
    if (found != m_state.tasks.end() && found->second.client_id == client.info.client_id()) {
        TaskRecord& task = found->second;
        if (is_final(state)) {
            // Tasks run one at a time: after its final state the client is idle unless
            // another of our tasks is still open for it (the next heartbeat corrects us).
            bool other_open = false;
            for (const auto& [id, other] : m_state.tasks) {
                if (id != task.task_id && other.client_id == task.client_id && other.open &&
                    !other.answer) {
                    other_open = true;
                    break;
                }
            }
            if (!other_open) client.info.set_status(v1::CLIENT_STATUS_IDLE);
        }
        if (state == v1::TASK_STATE_FAILED || state == v1::TASK_STATE_REJECTED ||
            state == v1::TASK_STATE_CANCELLED) {
            if (!task.open || task.answer) return;  // too late, or already answered
            if (task.kind == v1::TASK_KIND_TRAIN) count_task_outcome(task.client_id, false);
            std::string what = state == v1::TASK_STATE_FAILED     ? "failed"
                               : state == v1::TASK_STATE_REJECTED ? "was rejected by the client"
                                                                  : "was cancelled";
            std::string reason = failure_text(status);
            task.answer = make_ack(false, v1::ACK_CODE_INVALID,
                                   "task " + task.task_id + " " + what + ": " + reason);
            SessionRecord* session = m_state.find_session(task.session_id);
            if (!session) return;
            for (auto& round : session->rounds) {
                if (round.round_id() != task.round_id) continue;
                if (task.kind == v1::TASK_KIND_TRAIN) {
                    auto* rejected = round.add_rejected();
                    rejected->set_client_id(task.client_id);
                    rejected->set_task_id(task.task_id);
                    std::string prefix = state == v1::TASK_STATE_FAILED     ? "train failed: "
                                         : state == v1::TASK_STATE_REJECTED ? "train rejected: "
                                                                            : "train cancelled: ";
                    rejected->set_reason(prefix + reason);
                    rejected->set_received_unix_ms(now_unix_ms());
                    m_db->save_rejected(round.round_id(), *rejected);
                    log("round " + std::to_string(task.round_id) + ": " + client.label() +
                        " train task " + what + ": " + reason);
                } else {
                    log("round " + std::to_string(task.round_id) + ": " + client.label() +
                        " validation " + what + ": " + reason);
                }
            }
        }
    } else if (is_final(state)) {
        client.info.set_status(v1::CLIENT_STATUS_IDLE);
    }
}

TaskRecord* CombinerCore::find_reported_task(const std::string& task_id,
                                             const std::string& client_id, std::uint64_t round_id,
                                             v1::TaskKind kind, const std::string& what,
                                             v1::Ack& refusal) {
    auto found = m_state.tasks.find(task_id);
    if (found == m_state.tasks.end() || found->second.client_id != client_id) {
        bool running = m_active && !m_active->stop_requested;
        if (found == m_state.tasks.end() && !running) {
            refusal =
                make_ack(false, v1::ACK_CODE_NO_SESSION,
                         "no session is running; " + what + " for task '" + task_id + "' ignored");
        } else {
            refusal =
                make_ack(false, v1::ACK_CODE_UNKNOWN_TASK,
                         "task '" + task_id + "' was not given to client '" + client_id + "'");
        }
        return nullptr;
    }
    TaskRecord& task = found->second;
    if (task.kind != kind) {
        refusal = make_ack(false, v1::ACK_CODE_UNKNOWN_TASK,
                           "task '" + task.task_id + "' is not a " +
                               (kind == v1::TASK_KIND_TRAIN ? "train" : "validate") + " task");
        return nullptr;
    }
    if (task.answer) {  // idempotent per task id
        refusal = *task.answer;
        return nullptr;
    }
    if (round_id != task.round_id) {
        refusal = make_ack(false, v1::ACK_CODE_INVALID,
                           "task '" + task.task_id + "' belongs to round " +
                               std::to_string(task.round_id) + ", the report says round " +
                               std::to_string(round_id));
        return nullptr;
    }
    return &task;
}

v1::Ack CombinerCore::report_update(const v1::UpdateReport& report) {
    // Reports are handled one at a time: the aggregator is not thread-safe, and a round
    // cannot close while an update for it is being folded.
    std::lock_guard fold_lock(m_fold_mutex);
    aggregate::Aggregator* aggregator = nullptr;
    std::string client_name;
    std::string model_id = lowercase(report.model_id());
    {
        std::lock_guard lock(m_mutex);
        v1::Ack refusal;
        TaskRecord* reported =
            find_reported_task(report.task_id(), report.client_id(), report.round_id(),
                               v1::TASK_KIND_TRAIN, "update", refusal);
        if (!reported) return refusal;
        TaskRecord& task = *reported;
        if (!task.open || !m_active || m_active->id != task.session_id) {
            return make_ack(false, v1::ACK_CODE_STALE_ROUND,
                            "round " + std::to_string(task.round_id) +
                                " is closed; update for task " + task.task_id + " ignored");
        }
        const ClientRecord& client = m_state.clients.at(task.client_id);
        client_name = client.display_name();
        if (!is_sha256(model_id) || !m_store.has(v1::TRANSFER_KIND_MODEL, model_id)) {
            // Final like any refused update: recorded, and the task counts as answered.
            std::string reason = "model '" + report.model_id() +
                                 "' was not uploaded (Transfer.Upload, kind MODEL, first)";
            task.answer = make_ack(false, v1::ACK_CODE_INVALID,
                                   "update from client '" + client_name + "': " + reason);
            SessionRecord* session = m_state.find_session(task.session_id);
            v1::RoundInfo& round = round_info(
                static_cast<std::size_t>(session - m_state.sessions.data()), task.round_id);
            auto* rejected = round.add_rejected();
            rejected->set_client_id(task.client_id);
            rejected->set_task_id(task.task_id);
            rejected->set_reason(reason);
            rejected->set_received_unix_ms(now_unix_ms());
            m_db->save_rejected(round.round_id(), *rejected);
            count_task_outcome(task.client_id, false);
            log("round " + std::to_string(task.round_id) + ": update from client '" + client_name +
                "' rejected: " + reason);
            m_changed.notify_all();
            return *task.answer;
        }
        aggregator = m_active->aggregator.get();
    }

    aggregate::UpdateInfo info;
    info.client = client_name;
    if (!report.metadata_json().empty()) {
        try {
            // A runaway metadata file must not reach the parser, the database or the logs.
            util::check_json_size(report.metadata_json(), util::k_default_max_json_bytes,
                                  "metadata");
            info.metadata = nlohmann::json::parse(report.metadata_json());
            if (!info.metadata.is_object()) {
                info.metadata_error = "metadata is not a JSON object";
                info.metadata = nlohmann::json::object();
            }
        } catch (const nlohmann::json::exception& error) {
            info.metadata_error = std::string("metadata is not valid JSON: ") + error.what();
        } catch (const Error& error) {
            info.metadata_error = error.what();
        }
    }
    std::optional<aggregate::Rejection> rejection =
        aggregator->fold(m_store.model_path(model_id), info);
    std::size_t record = aggregator->summary().updates.size() - 1;
    const aggregate::UpdateOutcome& outcome = aggregator->summary().updates[record];
    std::string reason;
    if (rejection) {
        reason = rejection->reason;
    } else if (outcome.status == aggregate::UpdateStatus::rejected) {
        reason = outcome.reason;  // found while folding (e.g. NaN)
    }
    m_active->records.resize(record + 1);
    m_active->records[record] = report.task_id();

    std::lock_guard lock(m_mutex);
    TaskRecord& task = m_state.tasks.at(report.task_id());
    SessionRecord* session = m_state.find_session(task.session_id);
    v1::RoundInfo& round =
        round_info(static_cast<std::size_t>(session - m_state.sessions.data()), task.round_id);
    if (!reason.empty()) {
        std::string message = "update from client '" + client_name + "' (model " +
                              short_id(model_id) + ") rejected: " + reason;
        task.answer = make_ack(false, v1::ACK_CODE_INVALID, message);
        auto* rejected = round.add_rejected();
        rejected->set_client_id(task.client_id);
        rejected->set_task_id(task.task_id);
        rejected->set_reason(reason);
        rejected->set_received_unix_ms(now_unix_ms());
        m_db->save_rejected(round.round_id(), *rejected);
        count_task_outcome(task.client_id, false);
        log("round " + std::to_string(task.round_id) + ": update from client '" + client_name +
            "' rejected: " + reason);
    } else {
        task.answer = make_ack(true, v1::ACK_CODE_OK);
        auto* update = round.add_updates();
        update->set_client_id(task.client_id);
        update->set_task_id(task.task_id);
        update->set_model_id(model_id);
        update->set_num_examples(outcome.num_examples);
        update->set_metadata_json(report.metadata_json().empty() ? "{}" : report.metadata_json());
        update->set_used(true);
        update->set_received_unix_ms(now_unix_ms());
        round.set_updates_accepted(round.updates_accepted() + 1);
        m_db->save_update(round.round_id(), *update);
        persist_round(round);
        count_task_outcome(task.client_id, true);
    }
    m_changed.notify_all();
    return *task.answer;
}

v1::Ack CombinerCore::report_validation(const v1::ValidationReport& report) {
    std::lock_guard lock(m_mutex);
    v1::Ack refusal;
    TaskRecord* reported =
        find_reported_task(report.task_id(), report.client_id(), report.round_id(),
                           v1::TASK_KIND_VALIDATE, "validation", refusal);
    if (!reported) return refusal;
    TaskRecord& task = *reported;
    if (!task.open) {
        return make_ack(false, v1::ACK_CODE_STALE_ROUND,
                        "validation of round " + std::to_string(task.round_id) +
                            " is closed; report for task " + task.task_id + " ignored");
    }
    std::string metrics = report.metrics_json().empty() ? "{}" : report.metrics_json();
    try {
        util::check_json_size(metrics, util::k_default_max_json_bytes, "validation metrics");
    } catch (const Error& error) {
        return make_ack(false, v1::ACK_CODE_INVALID, error.what());
    }
    try {
        if (!nlohmann::json::parse(metrics).is_object()) throw Error("not a JSON object");
    } catch (const std::exception& error) {
        return make_ack(false, v1::ACK_CODE_INVALID,
                        std::string("validation metrics are not a JSON object: ") + error.what());
    }
    const std::string model_id =
        report.model_id().empty() ? task.model_id : lowercase(report.model_id());
    if (model_id != task.model_id) {
        return make_ack(false, v1::ACK_CODE_INVALID,
                        "task '" + task.task_id + "' asked to validate model " +
                            short_id(task.model_id) + ", the report names " + short_id(model_id));
    }
    SessionRecord* session = m_state.find_session(task.session_id);
    v1::RoundInfo& round =
        round_info(static_cast<std::size_t>(session - m_state.sessions.data()), task.round_id);
    auto* metrics_entry = round.add_validations();
    metrics_entry->set_client_id(task.client_id);
    metrics_entry->set_metrics_json(metrics);
    metrics_entry->set_model_id(model_id);
    metrics_entry->set_received_unix_ms(now_unix_ms());
    m_db->save_validation(round.round_id(), task.task_id, *metrics_entry);
    task.answer = make_ack(true, v1::ACK_CODE_OK);
    m_changed.notify_all();
    return *task.answer;
}

void CombinerCore::watchdog_loop() {
    const auto limit = m_options.heartbeat_interval * std::max(1, m_options.missed_heartbeats);
    const auto period =
        std::max<Clock::duration>(m_options.heartbeat_interval / 4, std::chrono::milliseconds(10));
    std::unique_lock lock(m_mutex);
    while (!m_stopping) {
        m_stop_changed.wait_for(lock, period);
        if (m_stopping) break;
        bool changed = false;
        const auto now = Clock::now();
        // A token that expired while its stream was open closes the stream.
        close_streams_of_unusable_tokens();
        for (auto& [id, client] : m_state.clients) {
            if (client.info.online() && now - client.last_message > limit) {
                client.info.set_online(false);
                persist_client(client);
                changed = true;
                log(client.label() + " left: no message for " +
                    format_seconds(now - client.last_message) + "; " +
                    std::to_string(m_state.clients_online()) + " online");
            }
        }
        if (changed) m_changed.notify_all();
    }
}

}  // namespace fedcli::combiner
