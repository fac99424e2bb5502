// The session runner: rounds of select, train, fold, commit (and validate).
#include <algorithm>
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
                                        std::uint64_t round_id) const {
    nlohmann::json settings = nlohmann::json::object();
    if (!session.config.settings_json().empty()) {
        settings = nlohmann::json::parse(session.config.settings_json());  // checked at start
    }
    settings["round"] = round_id;
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

void CombinerCore::run_session(ActiveSession* active) {
    std::size_t index = 0;
    RoundModels models;
    std::uint32_t rounds = 0;
    {
        std::lock_guard lock(m_mutex);
        SessionRecord* session = m_state.find_session(active->id);
        index = static_cast<std::size_t>(session - m_state.sessions.data());
        models.global_id = session->config.model_id();
        rounds = session->config.rounds();
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
    std::uint32_t done = 0;
    for (; end == RoundEnd::committed && done < rounds; ++done) {
        end = run_round(active, index, models, failure);
        if (end != RoundEnd::committed) break;
    }

    std::lock_guard lock(m_mutex);
    SessionRecord& session = m_state.sessions[index];
    session.ended_unix_ms = now_unix_ms();
    std::string label = "session " + short_id(session.id);
    // Rounds that committed (a stop during a round's validation comes after its commit).
    done = static_cast<std::uint32_t>(std::count_if(
        session.rounds.begin(), session.rounds.end(),
        [](const v1::RoundInfo& r) { return r.state() == v1::ROUND_STATE_COMMITTED; }));
    switch (end) {
        case RoundEnd::committed:
            session.state = v1::SESSION_STATE_FINISHED;
            session.message = label + " finished: " + plural(done, "round") + ", model " +
                              short_id(models.global_id);
            break;
        case RoundEnd::stopped:
            session.state = v1::SESSION_STATE_STOPPED;
            session.message = label + " stopped by the operator after " +
                              plural(done, "committed round") + "; latest model " +
                              short_id(models.global_id);
            break;
        case RoundEnd::failed:
            session.state = v1::SESSION_STATE_FAILED;
            session.message = label + " failed: " + failure;
            break;
    }
    log_status(session.message);
    m_changed.notify_all();
}

CombinerCore::RoundEnd CombinerCore::run_round(ActiveSession* active, std::size_t session_index,
                                               RoundModels& models, std::string& failure) {
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
    {
        v1::RoundInfo& round = m_state.sessions[session_index].rounds.emplace_back();
        round.set_round_id(round_id);
        round.set_session_id(active->id);
        round.set_state(v1::ROUND_STATE_OPEN);
        round.set_input_model_id(models.global_id);
        round.set_started_unix_ms(now_unix_ms());
        round.set_aggregator(std::string(active->aggregator->name()));
    }
    auto fail_round = [&](const std::string& reason) {
        v1::RoundInfo& round = round_info(session_index, round_id);
        round.set_state(v1::ROUND_STATE_FAILED);
        round.set_reason(reason);
        round.set_closed_unix_ms(now_unix_ms());
        failure = round_label + " failed: " + reason;
        log_status(failure);
        m_changed.notify_all();
    };
    if (!begin_error.empty()) {
        fail_round(begin_error);
        return RoundEnd::failed;
    }

    // Wait for enough ready clients.
    const auto wait_started = Clock::now();
    std::vector<std::string> candidates;
    m_changed.wait_until(lock, wait_started + timeout, [&] {
        if (active->stop_requested) return true;
        candidates.clear();
        for (const auto& [id, client] : m_state.clients) {
            if (is_ready(client)) candidates.push_back(id);
        }
        return candidates.size() >= need;
    });
    if (active->stop_requested) {
        fail_round("session stopped by the operator");
        return RoundEnd::stopped;
    }
    if (candidates.size() < need) {
        fail_round("only " + std::to_string(candidates.size()) + " of " + std::to_string(need) +
                   " required clients ready after " + format_seconds(Clock::now() - wait_started));
        return RoundEnd::failed;
    }
    if (config.clients_per_round() > 0 && config.clients_per_round() < candidates.size()) {
        std::mt19937_64 generator{std::random_device{}()};
        std::shuffle(candidates.begin(), candidates.end(), generator);
        candidates.resize(config.clients_per_round());
    }

    // Send the train tasks.
    const auto started = Clock::now();
    const std::int64_t started_ms = now_unix_ms();
    std::vector<std::string> task_ids;
    {
        v1::RoundInfo& round = round_info(session_index, round_id);
        round.set_started_unix_ms(started_ms);
        round.set_clients_selected(static_cast<std::uint32_t>(candidates.size()));
        const std::string settings = task_settings(m_state.sessions[session_index], round_id);
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
    }
    log_status(round_label + " started: " + plural(candidates.size(), "client") +
               " selected, model " + short_id(models.global_id));

    // Wait until every selected client answered, the timeout passed, or a stop.
    auto all_answered = [&] {
        return std::all_of(task_ids.begin(), task_ids.end(), [&](const std::string& id) {
            return m_state.tasks.at(id).answer.has_value();
        });
    };
    m_changed.wait_until(lock, started + timeout,
                         [&] { return active->stop_requested || all_answered(); });

    // Close: no report is taken for this round from now on.
    lock.unlock();
    std::unique_lock fold_lock(m_fold_mutex);
    lock.lock();
    const bool stopped = active->stop_requested;
    close_tasks(task_ids, stopped ? "session stopped by the operator" : round_label + " closed");
    if (stopped) {
        fail_round("session stopped by the operator");
        return RoundEnd::stopped;
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
        return RoundEnd::failed;
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
                    log(round_label + ": update from client '" + outcome.client +
                        "' rejected: " + outcome.reason);
                    updates->erase(updates->begin() + k);
                } else {
                    (*updates)[k].set_used(outcome.status == aggregate::UpdateStatus::used);
                }
                break;
            }
        }
        round.set_updates_accepted(static_cast<std::uint32_t>(round.updates_size()));
        accepted = static_cast<std::size_t>(round.updates_size());
    }
    if (accepted < need) {
        fail_round(shortfall(accepted));
        return RoundEnd::failed;
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

    lock.lock();
    {
        v1::ModelInfo& model = m_state.models.emplace_back();
        model.set_model_id(new_id);
        model.set_size(model_size);
        model.set_parent_id(models.global_id);
        model.set_round_id(round_id);
        model.set_session_id(active->id);
        model.set_created_unix_ms(now_unix_ms());

        v1::RoundInfo& round = round_info(session_index, round_id);
        round.set_state(v1::ROUND_STATE_COMMITTED);
        round.set_output_model_id(new_id);
        round.set_closed_unix_ms(now_unix_ms());
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
    const std::string settings = task_settings(session, round_id);
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
    close_tasks(task_ids,
                stopped ? "session stopped by the operator" : label + " validation closed");
    const v1::RoundInfo& round = round_info(session_index, round_id);
    log(label + ": " + std::to_string(round.validations_size()) + " of " +
        plural(task_ids.size(), "client") + " reported validation metrics");
    return !stopped;
}

}  // namespace fedcli::combiner
