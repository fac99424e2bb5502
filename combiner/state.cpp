// Small helpers, the event log and State's queries.
#include <ctime>
#include <random>
#include <utility>

#include "combiner/internal.hpp"

namespace fedcli::combiner {

std::string random_hex(std::size_t count) {
    static std::mutex mutex;
    static std::mt19937_64 generator{std::random_device{}()};
    static constexpr char k_digits[] = "0123456789abcdef";
    std::lock_guard lock(mutex);
    std::string text;
    text.reserve(count);
    for (std::size_t i = 0; i < count; ++i) text.push_back(k_digits[generator() & 15]);
    return text;
}

std::string format_seconds(Clock::duration duration) {
    double seconds = std::chrono::duration<double>(duration).count();
    char text[32];
    std::snprintf(text, sizeof text, "%.1f s", seconds);
    return text;
}

void EventLog::write(const std::string& message) {
    if (!m_out) return;
    std::string stamp = util::utc_timestamp();
    std::lock_guard lock(m_mutex);
    *m_out << stamp << ' ' << message << '\n';
    m_out->flush();
}

bool ClientRecord::has_capability(std::string_view name) const {
    for (const auto& capability : capabilities) {
        if (capability == name) return true;
    }
    return false;
}

std::string ClientRecord::display_name() const {
    return info.name().empty() ? short_id(info.client_id()) : info.name();
}

std::string ClientRecord::label() const {
    return "client '" + display_name() + "' (id " + short_id(info.client_id()) + ")";
}

std::string State::latest_model_id() const {
    for (auto it = models.rbegin(); it != models.rend(); ++it) {
        if (it->round_id() != 0) return it->model_id();
    }
    return seed_model_id;
}

const v1::ModelInfo* State::find_model(const std::string& id) const {
    for (const auto& model : models) {
        if (model.model_id() == id) return &model;
    }
    return nullptr;
}

SessionRecord* State::find_session(const std::string& id) {
    return const_cast<SessionRecord*>(std::as_const(*this).find_session(id));
}

const SessionRecord* State::find_session(const std::string& id) const {
    // Operators type the short ids that listings show: a unique prefix names a session.
    const SessionRecord* found = nullptr;
    for (const auto& session : sessions) {
        if (session.id == id) return &session;
        if (!id.empty() && session.id.rfind(id, 0) == 0) {
            if (found) return nullptr;  // ambiguous
            found = &session;
        }
    }
    return found;
}

std::size_t State::clients_online() const {
    std::size_t online = 0;
    for (const auto& [id, client] : clients) online += client.info.online() ? 1 : 0;
    return online;
}

}  // namespace fedcli::combiner
