// The session runner: rounds of select, train, fold, commit (and validate).
#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <random>

#include "combiner/internal.hpp"
#include "core/error.hpp"

namespace fedcli::combiner {

namespace {

std::string plural(std::size_t count, const std::string& word) {
    return std::to_string(count) + " " + word + (count == 1 ? "" : "s");
}

}  // namespace

v1::RoundInfo& CombinerCore::round_info(std::size_t session_index, std::uint64_t round_id) {
    for (auto& round : m_state.sessions.at(session_index).rounds) {
        if (round.round_id() == round_id) return round;
    }
    throw Error("internal: round " + std::to_string(round_id) + " not found");
}

std::string CombinerCore::task_settings(const SessionRecord& session,
                                        const v1::RoundInfo& round) const {
    nlohmann::json settings = nlohmann::json::object();
    if (!session.config.settings_json().empty()) {
        settings = nlohmann::json::parse(session.config.settings_json());  // checked at start
    }
    settings["round"] = round.round_id();
    settings["session_round"] = round.session_round();
    settings["session_id"] = session.id;
    return settings.dump();
}

void CombinerCore::close_tasks(const std::vector<std::string>& task_ids,
                               const std::string& reason) {
    for (const auto& id : task_ids) {
        TaskRecord& task = m_state.tasks.at(id);
        task.open = false;
        if (task.answer) continue;
        auto client = m_state.clients.find(task.client_id);
        if (client != m_state.clients.end() && client->second.connection) {
            v1::ServerMessage message;
            message.mutable_cancel_task()->set_task_id(task.task_id);
            message.mutable_cancel_task()->set_reason(reason);
            client->second.connection->send(std::move(message));
        }
    }
}

namespace {

std::filesystem::path state_file(const ActiveSession& active, std::uint64_t round_id) {
    return active.state_dir / ("aggregator-" + std::to_string(round_id) + ".npz");
}

}  // namespace

void CombinerCore::run_session(ActiveSession* active) {
    std::size_t index = 0;
    RoundModels models;
    v1::SessionConfig config;
    std::uint32_t committed = 0;
    std::uint64_t last_committed_round = 0;
    {
        std::lock_guard lock(m_mutex);
        SessionRecord* session = m_state.find_session(active->id);
        index = static_cast<std::size_t>(session - m_state.sessions.data());
        models.global_id = session->latest_model_id();
        config = session->config;
        committed = session->rounds_committed();
        for (const auto& round : session->rounds) {
            if (round.state() == v1::ROUND_STATE_COMMITTED) last_committed_round = round.round_id();
        }
    }
    RoundEnd end = RoundEnd::committed;
    std::string failure;
    try {
        models.global = std::make_shared<npz::ParameterSet>(
            npz::read_parameters(m_store.model_path(models.global_id)));
    } catch (const Error& error) {
        end = RoundEnd::failed;
        failure =
            "cannot read the starting model " + short_id(models.global_id) + ": " + error.what();
    }
    // A resumed session continues its optimiser (fedavgm, FedOpt) from the state saved
    // with its last committed round.
    if (end == RoundEnd::committed && last_committed_round != 0 &&
        active->aggregator->has_state()) {
        const std::filesystem::path file = state_file(*active, last_committed_round);
        std::error_code ignored;
        try {
            if (!std::filesystem::exists(file, ignored)) throw Error("no such file");
            active->aggregator->load_state(file);
            log("session " + short_id(active->id) + ": optimiser state of round " +
                std::to_string(last_committed_round) + " loaded");
        } catch (const Error& error) {
            log("warning: session " + short_id(active->id) + ": optimiser state " + file.string() +
                " not loaded (" + error.what() + "); it starts afresh");
        }
    }

    std::uint32_t retries = 0;
    while (end != RoundEnd::failed && committed < config.rounds()) {
        end = run_round(active, index, models, committed + 1, failure);
        if (end == RoundEnd::committed) {
            ++committed;
            retries = 0;
            std::lock_guard lock(m_mutex);
            if (active->stop_after_round && committed < config.rounds()) {
                end = RoundEnd::stopped;
                break;
            }
            continue;
        }
        if (end == RoundEnd::retry && retries < config.max_round_retries()) {
            ++retries;
            log("session " + short_id(active->id) + ": round " + std::to_string(committed + 1) +
                " of the session is tried again (retry " + std::to_string(retries) + " of " +
                std::to_string(config.max_round_retries()) + ")");
            continue;
        }
        if (end == RoundEnd::retry) end = RoundEnd::failed;
        break;
    }

    std::unique_lock lock(m_mutex);
    SessionRecord& session = m_state.sessions[index];
    session.ended_unix_ms = now_unix_ms();
    std::string label = "session " + short_id(session.id);
    // Rounds that committed (a stop during a round's validation comes after its commit).
    const std::uint32_t done = session.rounds_committed();
    const std::string latest = session.latest_model_id();
    if (end == RoundEnd::stopped && m_stopping) {
        session.state = v1::SESSION_STATE_INTERRUPTED;
        session.message = label + " was interrupted after " + std::to_string(done) + " of " +
                          std::to_string(config.rounds()) +
                          " rounds (the combiner shut down); `fedcli session resume` continues it";
    } else if (end == RoundEnd::stopped) {
        session.state = v1::SESSION_STATE_STOPPED;
        session.message = label + " stopped by the operator after " +
                          plural(done, "committed round") + "; latest model " + short_id(latest);
    } else if (end == RoundEnd::failed) {
        session.state = v1::SESSION_STATE_FAILED;
        session.message = label + " failed: " + failure;
    } else {
        session.state = v1::SESSION_STATE_FINISHED;
        session.message =
            label + " finished: " + plural(done, "round") + ", model " + short_id(latest);
    }
    persist_session(session);
    log_status(session.message);
    m_changed.notify_all();
    lock.unlock();
    try {
        m_db->flush();
    } catch (const Error& error) {
        log("error: " + std::string(error.what()));
    }
}

bool CombinerCore::is_selectable(const ClientRecord& client,
                                 const v1::SessionConfig& config) const {
    return config.max_client_failures() == 0 ||
           client.info.consecutive_failures() < config.max_client_failures();
}

CombinerCore::RoundEnd CombinerCore::run_round(ActiveSession* active, std::size_t session_index,
                                               RoundModels& models, std::uint32_t session_round,
                                               std::string& failure) {
    v1::SessionConfig config;
    {
        std::lock_guard lock(m_mutex);
        config = m_state.sessions[session_index].config;
    }
    const std::size_t need = std::max<std::uint32_t>(config.min_clients(), 1);
    const auto timeout = std::chrono::milliseconds(config.round_timeout_ms());

    std::string begin_error;
    {
        std::lock_guard fold_lock(m_fold_mutex);
        active->records.clear();
        try {
            active->aggregator->begin_round(models.global);
        } catch (const Error& error) {
            begin_error = error.what();
        }
    }
    // The previous round's input is free once the aggregator let go of it: its memory takes
    // this round's result.
    if (models.retired && models.retired.use_count() == 1) {
        models.spare = std::move(*models.retired);
    }
    models.retired.reset();

    std::unique_lock lock(m_mutex);
    const std::uint64_t round_id = ++m_state.last_round_id;
    const std::string round_label = "round " + std::to_string(round_id);
    active->tasks_sent = false;
    {
        SessionRecord& session = m_state.sessions[session_index];
        const std::uint32_t attempt = session.attempts(session_round) + 1;
        v1::RoundInfo& round = session.rounds.emplace_back();
        round.set_round_id(round_id);
        round.set_session_id(active->id);
        round.set_state(v1::ROUND_STATE_OPEN);
        round.set_input_model_id(models.global_id);
        round.set_started_unix_ms(now_unix_ms());
        round.set_aggregator(std::string(active->aggregator->name()));
        round.set_session_round(session_round);
        round.set_attempt(attempt);
        persist_round(round);
    }
    auto fail_round = [&](const std::string& reason) {
        v1::RoundInfo& round = round_info(session_index, round_id);
        round.set_state(v1::ROUND_STATE_FAILED);
        round.set_reason(reason);
        round.set_closed_unix_ms(now_unix_ms());
        persist_round(round);
        failure = round_label + " failed: " + reason;
        log_status(failure);
        active->tasks_sent = false;
        m_changed.notify_all();
    };
    if (!begin_error.empty()) {
        fail_round(begin_error);
        return RoundEnd::failed;
    }

    // Wait for enough ready clients.
    const auto wait_started = Clock::now();
    std::vector<std::string> candidates;
    std::size_t skipped = 0;
    m_changed.wait_until(lock, wait_started + timeout, [&] {
        if (active->stop_requested || active->stop_after_round) return true;
        candidates.clear();
        skipped = 0;
        for (const auto& [id, client] : m_state.clients) {
            if (!is_ready(client)) continue;
            if (is_selectable(client, config)) {
                candidates.push_back(id);
            } else {
                ++skipped;
            }
        }
        return candidates.size() >= need;
    });
    if (active->stop_requested || active->stop_after_round) {
        fail_round(stop_reason() + " before the round began");
        return RoundEnd::stopped;
    }
    if (candidates.size() < need) {
        fail_round("only " + std::to_string(candidates.size()) + " of " + std::to_string(need) +
                   " required clients ready after " + format_seconds(Clock::now() - wait_started) +
                   (skipped > 0
                        ? " (" + std::to_string(skipped) + " skipped after repeated failures)"
                        : std::string()));
        return RoundEnd::retry;
    }
    // How many to select: the fraction and/or the fixed number (the smaller wins), never
    // fewer than min_clients.
    std::size_t select = candidates.size();
    if (config.clients_fraction() > 0.0) {
        select = std::min(
            select, static_cast<std::size_t>(std::ceil(config.clients_fraction() *
                                                       static_cast<double>(candidates.size()))));
    }
    if (config.clients_per_round() > 0) {
        select = std::min<std::size_t>(select, config.clients_per_round());
    }
    select = std::max(select, need);
    if (select < candidates.size()) {
        std::mt19937_64 generator{std::random_device{}()};
        std::shuffle(candidates.begin(), candidates.end(), generator);
        candidates.resize(select);
    }

    // Send the train tasks.
    const auto started = Clock::now();
    const std::int64_t started_ms = now_unix_ms();
    std::vector<std::string> task_ids;
    {
        v1::RoundInfo& round = round_info(session_index, round_id);
        round.set_started_unix_ms(started_ms);
        round.set_clients_selected(static_cast<std::uint32_t>(candidates.size()));
        persist_round(round);
        const std::string settings = task_settings(m_state.sessions[session_index], round);
        for (const auto& client_id : candidates) {
            TaskRecord task;
            task.task_id = random_hex(16);
            task.client_id = client_id;
            task.session_id = active->id;
            task.round_id = round_id;
            task.kind = v1::TASK_KIND_TRAIN;
            task.model_id = models.global_id;
            v1::ServerMessage message;
            v1::Task* body = message.mutable_task();
            body->set_task_id(task.task_id);
            body->set_round_id(round_id);
            body->set_session_id(active->id);
            body->set_kind(v1::TASK_KIND_TRAIN);
            body->set_model_id(models.global_id);
            body->set_model_sha256(models.global_id);
            body->set_settings_json(settings);
            body->set_deadline_unix_ms(started_ms + timeout.count());
            ClientRecord& client = m_state.clients.at(client_id);
            client.info.set_status(v1::CLIENT_STATUS_BUSY);
            if (client.connection) client.connection->send(std::move(message));
            task_ids.push_back(task.task_id);
            m_state.tasks.emplace(task.task_id, std::move(task));
        }
        active->tasks_sent = true;
    }
    log_status(round_label + " started: " + plural(candidates.size(), "client") +
               " selected, model " + short_id(models.global_id));

    // Wait until every selected client answered, the timeout passed, or a stop.
    auto all_answered = [&] {
        return std::all_of(task_ids.begin(), task_ids.end(), [&](const std::string& id) {
            return m_state.tasks.at(id).answer.has_value();
        });
    };
    // With buffer_size, the first K accepted updates are enough.
    auto buffer_full = [&] {
        return config.buffer_size() > 0 &&
               round_info(session_index, round_id).updates_accepted() >= config.buffer_size();
    };
    m_changed.wait_until(lock, started + timeout,
                         [&] { return active->stop_requested || all_answered() || buffer_full(); });

    // Close: no report is taken for this round from now on.
    lock.unlock();
    std::unique_lock fold_lock(m_fold_mutex);
    lock.lock();
    const bool stopped = active->stop_requested;
    const bool full = !stopped && buffer_full();
    close_tasks(task_ids, stopped ? stop_reason()
                          : full  ? round_label + " closed: its buffer of " +
                                       std::to_string(config.buffer_size()) + " updates is full"
                                 : round_label + " closed");
    if (stopped) {
        fail_round(stop_reason());
        return RoundEnd::stopped;
    }
    if (!full) {
        // Silence until the timeout counts as a failure of the client.
        for (const auto& id : task_ids) {
            const TaskRecord& task = m_state.tasks.at(id);
            if (!task.answer) count_task_outcome(task.client_id, false);
        }
    }
    auto shortfall = [&](std::size_t accepted) {
        const v1::RoundInfo& round = round_info(session_index, round_id);
        std::string reason = std::string(accepted == 1 ? "1 update" : plural(accepted, "update")) +
                             " accepted, " + std::to_string(need) + " required";
        std::string rejected;
        for (const auto& entry : round.rejected()) {
            if (!rejected.empty()) rejected += "; ";
            rejected +=
                "'" + m_state.clients.at(entry.client_id()).display_name() + "': " + entry.reason();
        }
        if (!rejected.empty()) reason += "; rejected: " + rejected;
        std::string silent;
        for (const auto& id : task_ids) {
            const TaskRecord& task = m_state.tasks.at(id);
            if (task.answer) continue;
            if (!silent.empty()) silent += ", ";
            silent += "'" + m_state.clients.at(task.client_id).display_name() + "'";
        }
        if (!silent.empty()) {
            reason += "; no answer within " + format_seconds(timeout) + " from " + silent;
        }
        return reason;
    };
    std::size_t accepted = round_info(session_index, round_id).updates_accepted();
    if (accepted < need) {
        fail_round(shortfall(accepted));
        return RoundEnd::retry;
    }
    lock.unlock();

    // Aggregate. The result goes into the spare model's memory.
    aggregate::RoundSummary summary;
    std::string finish_error;
    try {
        summary = active->aggregator->finish(models.spare);
    } catch (const Error& error) {
        finish_error = error.what();
    }
    const std::vector<std::string> records = active->records;
    fold_lock.unlock();

    lock.lock();
    if (!finish_error.empty()) {
        fail_round(finish_error);
        return RoundEnd::failed;
    }
    {
        // Updates turned down while folding (NaN/Inf found in a pass) or left out by a
        // robust rule: reflect the aggregator's verdict in the round record.
        v1::RoundInfo& round = round_info(session_index, round_id);
        for (std::size_t i = 0; i < summary.updates.size() && i < records.size(); ++i) {
            const aggregate::UpdateOutcome& outcome = summary.updates[i];
            auto* updates = round.mutable_updates();
            for (int k = 0; k < updates->size(); ++k) {
                if ((*updates)[k].task_id() != records[i]) continue;
                if (outcome.status == aggregate::UpdateStatus::rejected) {
                    auto* rejected = round.add_rejected();
                    rejected->set_client_id((*updates)[k].client_id());
                    rejected->set_task_id(records[i]);
                    rejected->set_reason(outcome.reason);
                    rejected->set_received_unix_ms((*updates)[k].received_unix_ms());
                    m_db->save_rejected(round_id, *rejected);
                    log(round_label + ": update from client '" + outcome.client +
                        "' rejected: " + outcome.reason);
                    updates->erase(updates->begin() + k);
                } else {
                    (*updates)[k].set_used(outcome.status == aggregate::UpdateStatus::used);
                    m_db->save_update(round_id, (*updates)[k]);
                }
                break;
            }
        }
        round.set_updates_accepted(static_cast<std::uint32_t>(round.updates_size()));
        accepted = static_cast<std::size_t>(round.updates_size());
    }
    if (accepted < need) {
        fail_round(shortfall(accepted));
        return RoundEnd::retry;
    }
    lock.unlock();

    std::string new_id;
    try {
        new_id = m_store.add_model(models.spare);
    } catch (const Error& error) {
        lock.lock();
        fail_round("cannot store the new global model: " + std::string(error.what()));
        return RoundEnd::failed;
    }
    std::uint64_t model_size = 0;
    {
        std::error_code ignored;
        model_size = std::filesystem::file_size(m_store.model_path(new_id), ignored);
    }
    // The optimiser's state after this round, for a resume (written before the round is
    // recorded as committed, so a committed round always has it).
    if (active->aggregator->has_state()) {
        try {
            std::error_code ignored;
            std::filesystem::create_directories(active->state_dir, ignored);
            active->aggregator->save_state(state_file(*active, round_id));
        } catch (const Error& error) {
            log("warning: " + round_label + ": optimiser state not saved: " + error.what());
        }
    }

    lock.lock();
    {
        v1::ModelInfo& model = m_state.models.emplace_back();
        model.set_model_id(new_id);
        model.set_size(model_size);
        model.set_parent_id(models.global_id);
        model.set_round_id(round_id);
        model.set_session_id(active->id);
        model.set_created_unix_ms(now_unix_ms());
        persist_model(model);

        v1::RoundInfo& round = round_info(session_index, round_id);
        round.set_state(v1::ROUND_STATE_COMMITTED);
        round.set_output_model_id(new_id);
        round.set_closed_unix_ms(now_unix_ms());
        persist_round(round);
        persist_session(m_state.sessions[session_index]);
        active->tasks_sent = false;
        log_status(round_label + " committed in " + format_seconds(Clock::now() - started) + ": " +
                   plural(summary.used, "update") + " (" + std::to_string(summary.total_examples) +
                   " examples), " + std::to_string(round.rejected_size()) + " rejected -> model " +
                   short_id(new_id));
    }
    m_changed.notify_all();

    // The result is the next round's input; the old input's memory is reused once free.
    models.retired = std::move(models.global);
    models.global = std::make_shared<npz::ParameterSet>(std::move(models.spare));
    models.spare = npz::ParameterSet();
    models.global_id = new_id;

    const bool validate = config.validate();
    lock.unlock();
    try {
        m_db->flush();  // the commit is on disk before anyone acts on it
    } catch (const Error& error) {
        log("error: " + std::string(error.what()));
    }
    // Older optimiser states are not needed any more.
    if (active->aggregator->has_state()) {
        std::error_code ignored;
        for (const auto& entry : std::filesystem::directory_iterator(active->state_dir, ignored)) {
            if (entry.path() != state_file(*active, round_id)) {
                std::filesystem::remove(entry.path(), ignored);
            }
        }
    }
    if (validate && !run_validation(active, session_index, round_id, candidates, new_id)) {
        return RoundEnd::stopped;
    }
    return RoundEnd::committed;
}

bool CombinerCore::run_validation(ActiveSession* active, std::size_t session_index,
                                  std::uint64_t round_id,
                                  const std::vector<std::string>& client_ids,
                                  const std::string& model_id) {
    std::unique_lock lock(m_mutex);
    if (active->stop_requested) return false;
    const SessionRecord& session = m_state.sessions[session_index];
    const auto timeout = std::chrono::milliseconds(session.config.round_timeout_ms());
    const std::string settings = task_settings(session, round_info(session_index, round_id));
    const std::int64_t started_ms = now_unix_ms();
    std::vector<std::string> task_ids;
    for (const auto& client_id : client_ids) {
        ClientRecord& client = m_state.clients.at(client_id);
        if (!client.info.online() || !client.connection) continue;
        TaskRecord task;
        task.task_id = random_hex(16);
        task.client_id = client_id;
        task.session_id = active->id;
        task.round_id = round_id;
        task.kind = v1::TASK_KIND_VALIDATE;
        task.model_id = model_id;
        v1::ServerMessage message;
        v1::Task* body = message.mutable_task();
        body->set_task_id(task.task_id);
        body->set_round_id(round_id);
        body->set_session_id(active->id);
        body->set_kind(v1::TASK_KIND_VALIDATE);
        body->set_model_id(model_id);
        body->set_model_sha256(model_id);
        body->set_settings_json(settings);
        body->set_deadline_unix_ms(started_ms + timeout.count());
        client.connection->send(std::move(message));
        task_ids.push_back(task.task_id);
        m_state.tasks.emplace(task.task_id, std::move(task));
    }
    if (task_ids.empty()) return true;
    const std::string label = "round " + std::to_string(round_id);
    log(label + ": validating model " + short_id(model_id) + " on " +
        plural(task_ids.size(), "client"));
    m_changed.wait_until(lock, Clock::now() + timeout, [&] {
        return active->stop_requested ||
               std::all_of(task_ids.begin(), task_ids.end(), [&](const std::string& id) {
                   return m_state.tasks.at(id).answer.has_value();
               });
    });
    const bool stopped = active->stop_requested;
    close_tasks(task_ids, stopped ? stop_reason() : label + " validation closed");
    const v1::RoundInfo& round = round_info(session_index, round_id);
    log(label + ": " + std::to_string(round.validations_size()) + " of " +
        plural(task_ids.size(), "client") + " reported validation metrics");
    return !stopped;
}

}  // namespace fedcli::combiner
