// Entry-point output that clients stream (LogLines): stored in the database, served by
// Control.GetLogs (docs/protocol.md, Logs).
#include "combiner/internal.hpp"

namespace fedcli::combiner {

namespace {

/// Longer lines are cut (a runaway progress bar must not fill the database).
constexpr std::size_t k_max_line_bytes = 4096;
/// Lines per batch on the GetLogs stream.
constexpr std::size_t k_batch_lines = 500;

/// Cuts at a UTF-8 character boundary and says so.
std::string clip_line(const std::string& line) {
    if (line.size() <= k_max_line_bytes) return line;
    std::size_t end = k_max_line_bytes;
    while (end > 0 && (static_cast<unsigned char>(line[end]) & 0xC0) == 0x80) --end;
    return line.substr(0, end) + " [... " + std::to_string(line.size() - end) + " bytes cut]";
}

}  // namespace

void CombinerCore::handle_log_lines(const ClientRecord& client, const v1::LogLines& lines) {
    // Only lines of a task this client was given are kept; others are dropped quietly
    // (a task of a previous combiner run, or a confused client).
    auto found = m_state.tasks.find(lines.task_id());
    if (found == m_state.tasks.end() || found->second.client_id != client.info.client_id()) return;
    const TaskRecord& task = found->second;
    const std::int64_t now = now_unix_ms();
    std::vector<v1::LogEntry> entries;
    entries.reserve(static_cast<std::size_t>(lines.lines_size()));
    for (const std::string& line : lines.lines()) {
        v1::LogEntry& entry = entries.emplace_back();
        entry.set_sequence(++m_state.last_log_sequence);
        entry.set_unix_ms(now);
        entry.set_client_id(client.info.client_id());
        entry.set_client_name(client.info.name());
        entry.set_task_id(task.task_id);
        entry.set_round_id(task.round_id);
        entry.set_session_id(task.session_id);
        entry.set_kind(task.kind);
        entry.set_stream(lines.stream());
        entry.set_line(clip_line(line));
    }
    if (entries.empty()) return;
    m_db->append_logs(std::move(entries));
    m_logs_changed.notify_all();
}

grpc::Status CombinerCore::get_logs(grpc::ServerContext* context, const v1::GetLogsRequest& request,
                                    grpc::ServerWriter<v1::LogBatch>* writer) {
    // Which clients: a name (several clients may share one), else an id or id prefix.
    // An exact name wins over an id prefix that happens to match other clients.
    std::vector<std::string> client_ids;
    if (!request.client().empty()) {
        std::lock_guard lock(m_mutex);
        std::string known;
        std::vector<std::string> by_prefix;
        for (const auto& [id, client] : m_state.clients) {
            if (client.info.name() == request.client()) client_ids.push_back(id);
            if (id.rfind(request.client(), 0) == 0) by_prefix.push_back(id);
            known += (known.empty() ? "" : ", ") + client.display_name();
        }
        if (client_ids.empty()) client_ids = std::move(by_prefix);
        if (client_ids.empty()) {
            return {grpc::StatusCode::NOT_FOUND,
                    "logs: no client named '" + request.client() +
                        "' (known: " + (known.empty() ? "none" : known) + ")"};
        }
    }
    if (!request.session_id().empty()) {
        std::lock_guard lock(m_mutex);
        if (!m_state.find_session(request.session_id())) {
            return {grpc::StatusCode::NOT_FOUND, "logs: no session '" + request.session_id() + "'"};
        }
    }

    LogQuery query;
    query.client_id = client_ids.size() == 1 ? client_ids.front() : std::string();
    query.round_id = request.round_id();
    query.session_id = request.session_id();
    query.tail = request.tail();
    query.limit = k_batch_lines;
    auto wanted = [&](const v1::LogEntry& entry) {
        if (client_ids.size() <= 1) return true;
        for (const auto& id : client_ids) {
            if (entry.client_id() == id) return true;
        }
        return false;
    };

    while (!context->IsCancelled()) {
        std::uint64_t known_sequence = 0;
        {
            std::lock_guard lock(m_mutex);
            known_sequence = m_state.last_log_sequence;
        }
        // Lines queued before now are readable once flushed.
        m_db->flush();
        std::vector<v1::LogEntry> entries = m_db->logs(query);
        query.tail = 0;  // only the first read is a tail
        if (!entries.empty()) {
            query.after_sequence = entries.back().sequence();
            v1::LogBatch batch;
            for (auto& entry : entries) {
                if (wanted(entry)) *batch.add_entries() = std::move(entry);
            }
            if (batch.entries_size() > 0 && !writer->Write(batch)) break;
            if (entries.size() == k_batch_lines) continue;  // more stored lines
        }
        if (!request.follow()) break;
        std::unique_lock lock(m_mutex);
        // A bounded wait: a cancelled call is noticed within a second.
        m_logs_changed.wait_for(lock, std::chrono::seconds(1), [&] {
            return m_stopping ||
                   m_state.last_log_sequence > std::max(known_sequence, query.after_sequence);
        });
        if (m_stopping) break;
    }
    return grpc::Status::OK;
}

}  // namespace fedcli::combiner
