// combiner/db: the combiner's SQLite state store and the data-folder consistency check.
#include <sqlite3.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "combiner/db.hpp"
#include "core/error.hpp"
#include "core/util/sha256.hpp"
#include "tests/unit/support.hpp"

namespace {

namespace fs = std::filesystem;
namespace v1 = fedcli::v1;
using fedcli::combiner::check_data_dir;
using fedcli::combiner::Database;
using fedcli::combiner::LogQuery;
using fedcli::combiner::StoredState;
using fedcli::test::describe;
using fedcli::test::TempDir;

// --- helpers -------------------------------------------------------------------------------

/// Protocol messages compare by their text form, which also makes a failure readable.
template <typename Message>
void check_same(const std::vector<Message>& actual, const std::vector<Message>& expected) {
    REQUIRE(actual.size() == expected.size());
    for (std::size_t i = 0; i < actual.size(); ++i) {
        INFO("element " << i);
        CHECK(describe(actual[i]) == describe(expected[i]));
    }
}

/// A connection of the test's own, as an operator's sqlite3 shell would have.
class RawDb {
  public:
    explicit RawDb(const fs::path& file) {
        if (sqlite3_open_v2(file.c_str(), &m_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                            nullptr) != SQLITE_OK) {
            FAIL("cannot open " << file << ": " << sqlite3_errmsg(m_db));
        }
    }
    ~RawDb() { sqlite3_close_v2(m_db); }
    RawDb(const RawDb&) = delete;
    RawDb& operator=(const RawDb&) = delete;

    void exec(const std::string& sql) {
        char* message = nullptr;
        const int code = sqlite3_exec(m_db, sql.c_str(), nullptr, nullptr, &message);
        std::string text = message ? message : "";
        sqlite3_free(message);
        if (code != SQLITE_OK) FAIL(sql << ": " << text);
    }
    std::string text(const std::string& sql) {
        sqlite3_stmt* statement = nullptr;
        if (sqlite3_prepare_v2(m_db, sql.c_str(), -1, &statement, nullptr) != SQLITE_OK) {
            FAIL(sql << ": " << sqlite3_errmsg(m_db));
        }
        std::string result;
        if (sqlite3_step(statement) == SQLITE_ROW) {
            const auto* bytes = sqlite3_column_text(statement, 0);
            result = bytes ? reinterpret_cast<const char*>(bytes) : "";
        }
        sqlite3_finalize(statement);
        return result;
    }
    long long integer(const std::string& sql) { return std::stoll(text(sql)); }

  private:
    sqlite3* m_db = nullptr;
};

v1::ClientInfo make_client(const std::string& id, int seed) {
    v1::ClientInfo info;
    info.set_client_id(id);
    info.set_name("client-" + id);
    info.set_version("0.3." + std::to_string(seed));
    info.set_status(v1::CLIENT_STATUS_BUSY);
    info.set_last_seen_unix_ms(1'700'000'000'000 + seed);
    info.set_package_sha256(std::string(64, 'a'));
    info.set_first_seen_unix_ms(1'600'000'000'000 + seed);
    info.set_rounds_contributed(static_cast<std::uint32_t>(seed));
    info.set_examples_contributed(5'000'000'000ULL + static_cast<std::uint64_t>(seed));
    info.set_consecutive_failures(2);
    info.set_skipped(true);
    return info;
}

v1::SessionInfo make_session(const std::string& id, int seed) {
    v1::SessionInfo info;
    info.set_session_id(id);
    v1::SessionConfig& config = *info.mutable_config();
    config.set_rounds(10);
    config.set_aggregator("fedopt");
    config.set_aggregator_config_json(R"({"server_lr": 0.5})");
    config.set_min_clients(2);
    config.set_clients_per_round(4);
    config.set_round_timeout_ms(60'000);
    config.set_validate(true);
    config.set_model_id(std::string(64, 'b'));
    config.set_settings_json(R"({"epochs": 3})");
    config.set_clients_fraction(0.25);
    config.set_buffer_size(3);
    config.set_max_round_retries(1);
    config.set_max_client_failures(5);
    info.set_config_json(R"({"rounds": 10, "aggregator": "fedopt"})");
    info.set_state(v1::SESSION_STATE_RUNNING);
    info.set_message("session " + id + " round " + std::to_string(seed));
    info.set_started_unix_ms(1'700'000'000'000 + seed);
    info.set_ended_unix_ms(0);
    info.set_rounds_committed(static_cast<std::uint32_t>(seed));
    info.set_latest_model_id(std::string(64, 'c'));
    return info;
}

/// A round header (no updates, rejected or validations).
v1::RoundInfo make_round(std::uint64_t id, const std::string& session, std::uint32_t session_round,
                         std::uint32_t attempt, v1::RoundState state, const std::string& input,
                         const std::string& output) {
    v1::RoundInfo round;
    round.set_round_id(id);
    round.set_session_id(session);
    round.set_state(state);
    round.set_clients_selected(4);
    round.set_updates_accepted(3);
    round.set_input_model_id(input);
    round.set_output_model_id(output);
    round.set_started_unix_ms(1'700'000'000'000 + static_cast<std::int64_t>(id));
    round.set_closed_unix_ms(state == v1::ROUND_STATE_OPEN ? 0 : 1'700'000'100'000);
    round.set_reason(state == v1::ROUND_STATE_FAILED ? "2 of 3 updates" : "");
    round.set_aggregator("fedavg");
    round.set_session_round(session_round);
    round.set_attempt(attempt);
    return round;
}

v1::AcceptedUpdate make_update(const std::string& task, const std::string& client,
                               const std::string& model) {
    v1::AcceptedUpdate update;
    update.set_client_id(client);
    update.set_task_id(task);
    update.set_model_id(model);
    update.set_num_examples(600);
    update.set_metadata_json(R"({"num_examples": 600, "loss": 0.25})");
    update.set_used(true);
    update.set_received_unix_ms(1'700'000'000'500);
    return update;
}

v1::RejectedUpdate make_rejected(const std::string& task, const std::string& client) {
    v1::RejectedUpdate update;
    update.set_client_id(client);
    update.set_task_id(task);
    update.set_reason("array \"2\" has shape [64,784], global model has [32,784]");
    update.set_received_unix_ms(1'700'000'000'700);
    return update;
}

v1::ClientMetrics make_metrics(const std::string& client, const std::string& model) {
    v1::ClientMetrics metrics;
    metrics.set_client_id(client);
    metrics.set_metrics_json(R"({"accuracy": 0.91})");
    metrics.set_model_id(model);
    metrics.set_received_unix_ms(1'700'000'000'900);
    return metrics;
}

v1::ModelInfo make_model(const std::string& id, std::uint64_t size, const std::string& parent,
                         std::uint64_t round, const std::string& session) {
    v1::ModelInfo model;
    model.set_model_id(id);
    model.set_size(size);
    model.set_parent_id(parent);
    model.set_round_id(round);
    model.set_session_id(session);
    model.set_created_unix_ms(1'700'000'000'000 + static_cast<std::int64_t>(round));
    return model;
}

v1::LogEntry make_log(std::uint64_t sequence, const std::string& client, std::uint64_t round,
                      const std::string& session) {
    v1::LogEntry entry;
    entry.set_sequence(sequence);
    entry.set_unix_ms(1'700'000'000'000 + static_cast<std::int64_t>(sequence));
    entry.set_client_id(client);
    entry.set_client_name("name-" + client);
    entry.set_task_id("task-" + std::to_string(round) + "-" + client);
    entry.set_round_id(round);
    entry.set_session_id(session);
    entry.set_kind(v1::TASK_KIND_TRAIN);
    entry.set_stream(sequence % 2 ? v1::LOG_STREAM_STDOUT : v1::LOG_STREAM_STDERR);
    entry.set_line("line " + std::to_string(sequence));
    return entry;
}

std::vector<std::uint64_t> sequences(const std::vector<v1::LogEntry>& entries) {
    std::vector<std::uint64_t> result;
    for (const auto& entry : entries) result.push_back(entry.sequence());
    return result;
}

std::vector<std::uint64_t> range(std::uint64_t first, std::uint64_t last) {
    std::vector<std::uint64_t> result;
    for (std::uint64_t i = first; i <= last; ++i) result.push_back(i);
    return result;
}

StoredState reopen_and_load(const fs::path& file) {
    Database db(file);
    return db.load();
}

std::string random_bytes(std::size_t size, unsigned seed) {
    std::mt19937 random(seed);
    std::string bytes(size, '\0');
    for (char& byte : bytes) byte = static_cast<char>(random() & 0xff);
    return bytes;
}

std::string sha256_of(const std::string& bytes) {
    return fedcli::util::sha256_hex(
        std::span<const std::byte>(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()));
}

bool any_line_has(const std::vector<std::string>& lines, const std::vector<std::string>& parts) {
    for (const auto& line : lines) {
        bool all = true;
        for (const auto& part : parts) all = all && line.find(part) != std::string::npos;
        if (all) return true;
    }
    return false;
}

std::string joined(const std::vector<std::string>& lines) {
    std::string text;
    for (const auto& line : lines) text += line + "\n";
    return text;
}

}  // namespace

// --- the store -----------------------------------------------------------------------------

TEST_CASE("every record kind round-trips through a new Database in order of first save") {
    TempDir dir;
    const fs::path file = dir / "state.db";
    const std::string model_a(64, '1');
    const std::string model_b(64, '2');

    std::vector<v1::ClientInfo> clients = {make_client("c2", 1), make_client("c1", 2)};
    std::vector<v1::SessionInfo> sessions = {make_session("s-b", 1), make_session("s-a", 2)};
    std::vector<v1::ModelInfo> models = {make_model(model_b, 1234, model_a, 2, "s-b"),
                                         make_model(model_a, 99, "", 0, "")};
    {
        Database db(file);
        CHECK(db.opened_schema_version() == 0);
        CHECK(db.file() == file);
        for (const auto& client : clients) db.save_client(client);
        for (const auto& session : sessions) db.save_session(session);
        for (const auto& model : models) db.save_model(model);

        // Rounds are loaded by id whatever the order they were saved in; the repeated fields
        // of a saved round are not its updates (those have their own calls).
        v1::RoundInfo round2 = make_round(2, "s-b", 2, 1, v1::ROUND_STATE_OPEN, model_b, "");
        *round2.add_updates() = make_update("ignored", "c9", model_a);
        *round2.add_rejected() = make_rejected("ignored-too", "c9");
        db.save_round(round2);
        db.save_round(make_round(1, "s-b", 1, 1, v1::ROUND_STATE_OPEN, model_a, ""));
        db.save_update(1, make_update("t-b", "c2", model_b));
        db.save_update(1, make_update("t-a", "c1", model_a));
        db.save_rejected(1, make_rejected("t-r", "c3"));
        db.save_validation(1, "v-b", make_metrics("c2", model_b));
        db.save_validation(1, "v-a", make_metrics("c1", model_b));
        db.save_update(2, make_update("t-c", "c1", model_b));
        db.save_setting("package_sha256", std::string(64, 'd'));
        db.save_setting("package_name", "first.tgz");
        db.append_logs({make_log(1, "c1", 1, "s-b"), make_log(2, "c2", 1, "s-b")});

        // Upserts replace every field and keep the first save's position.
        clients[0].set_name("renamed");
        clients[0].set_status(v1::CLIENT_STATUS_IDLE);
        clients[0].set_skipped(false);
        db.save_client(clients[0]);
        sessions[0].set_state(v1::SESSION_STATE_FINISHED);
        sessions[0].mutable_config()->set_rounds(3);
        sessions[0].set_ended_unix_ms(1'800'000'000'000);
        db.save_session(sessions[0]);
        models[0].set_size(4321);
        db.save_model(models[0]);
        db.save_round(make_round(1, "s-b", 1, 1, v1::ROUND_STATE_COMMITTED, model_a, model_b));
        v1::AcceptedUpdate unused = make_update("t-b", "c2", model_b);
        unused.set_used(false);
        db.save_update(1, unused);
        db.save_setting("package_name", "second.tgz");
        db.flush();
    }

    const StoredState stored = reopen_and_load(file);
    for (auto& client : clients) client.set_online(false);
    check_same(stored.clients, clients);
    check_same(stored.sessions, sessions);
    check_same(stored.models, models);

    v1::RoundInfo round1 = make_round(1, "s-b", 1, 1, v1::ROUND_STATE_COMMITTED, model_a, model_b);
    v1::AcceptedUpdate unused = make_update("t-b", "c2", model_b);
    unused.set_used(false);
    *round1.add_updates() = unused;
    *round1.add_updates() = make_update("t-a", "c1", model_a);
    *round1.add_rejected() = make_rejected("t-r", "c3");
    *round1.add_validations() = make_metrics("c2", model_b);
    *round1.add_validations() = make_metrics("c1", model_b);
    v1::RoundInfo round2 = make_round(2, "s-b", 2, 1, v1::ROUND_STATE_OPEN, model_b, "");
    *round2.add_updates() = make_update("t-c", "c1", model_b);
    check_same(stored.rounds, {round1, round2});

    CHECK(stored.settings ==
          std::map<std::string, std::string>{{"package_name", "second.tgz"},
                                             {"package_sha256", std::string(64, 'd')}});
    CHECK(stored.last_log_sequence == 2);
}

TEST_CASE("a client's online flag is not stored") {
    TempDir dir;
    v1::ClientInfo client = make_client("c1", 1);
    client.set_online(true);
    {
        Database db(dir / "state.db");
        db.save_client(client);
    }
    const StoredState stored = reopen_and_load(dir / "state.db");
    REQUIRE(stored.clients.size() == 1);
    CHECK_FALSE(stored.clients[0].online());
}

TEST_CASE("an update saved again as rejected replaces it, and the other way round") {
    TempDir dir;
    const fs::path file = dir / "state.db";
    {
        Database db(file);
        db.save_round(make_round(1, "s", 1, 1, v1::ROUND_STATE_OPEN, std::string(64, '1'), ""));
        db.save_round(make_round(2, "s", 2, 1, v1::ROUND_STATE_OPEN, std::string(64, '1'), ""));
        db.save_update(1, make_update("t1", "c1", std::string(64, 'e')));
        db.save_rejected(1, make_rejected("t1", "c1"));
        db.save_rejected(1, make_rejected("t2", "c2"));
        db.save_update(2, make_update("t2", "c2", std::string(64, 'f')));  // moves to round 2
    }
    const StoredState stored = reopen_and_load(file);
    REQUIRE(stored.rounds.size() == 2);
    CHECK(stored.rounds[0].updates_size() == 0);
    check_same({stored.rounds[0].rejected().begin(), stored.rounds[0].rejected().end()},
               std::vector<v1::RejectedUpdate>{make_rejected("t1", "c1")});
    CHECK(stored.rounds[1].rejected_size() == 0);
    check_same({stored.rounds[1].updates().begin(), stored.rounds[1].updates().end()},
               std::vector<v1::AcceptedUpdate>{make_update("t2", "c2", std::string(64, 'f'))});
    CHECK(RawDb(file).integer("SELECT count(*) FROM updates") == 2);
}

TEST_CASE("logs are selected by client, round, session and sequence, with tail and limit") {
    TempDir dir;
    Database db(dir / "state.db");
    // Sequences 1..30: client c<i % 3>, rounds 1 (1..10), 2 (11..20), 3 (21..30); rounds 1
    // and 2 belong to session s1, round 3 to s2. Appended in two batches.
    std::vector<v1::LogEntry> first;
    std::vector<v1::LogEntry> second;
    for (std::uint64_t i = 1; i <= 30; ++i) {
        const std::uint64_t round = (i - 1) / 10 + 1;
        (i <= 15 ? first : second)
            .push_back(make_log(i, "c" + std::to_string(i % 3), round, round < 3 ? "s1" : "s2"));
    }
    db.append_logs(first);
    db.append_logs(second);
    db.flush();

    LogQuery query;
    const auto all = db.logs(query);
    CHECK(sequences(all) == range(1, 30));
    CHECK(describe(all[6]) == describe(make_log(7, "c1", 1, "s1")));

    SECTION("by client (exact id)") {
        query.client_id = "c1";
        CHECK(sequences(db.logs(query)) ==
              std::vector<std::uint64_t>{1, 4, 7, 10, 13, 16, 19, 22, 25, 28});
        query.client_id = "c";
        CHECK(db.logs(query).empty());
    }
    SECTION("by round") {
        query.round_id = 2;
        CHECK(sequences(db.logs(query)) == range(11, 20));
    }
    SECTION("by session") {
        query.session_id = "s2";
        CHECK(sequences(db.logs(query)) == range(21, 30));
    }
    SECTION("by client and round") {
        query.client_id = "c2";
        query.round_id = 3;
        CHECK(sequences(db.logs(query)) == std::vector<std::uint64_t>{23, 26, 29});
    }
    SECTION("after a sequence") {
        query.after_sequence = 25;
        CHECK(sequences(db.logs(query)) == range(26, 30));
        query.after_sequence = 30;
        CHECK(db.logs(query).empty());
    }
    SECTION("tail and limit") {
        query.tail = 4;
        CHECK(sequences(db.logs(query)) == range(27, 30));
        query.limit = 2;
        CHECK(sequences(db.logs(query)) == range(27, 28));
        query.tail = 0;
        CHECK(sequences(db.logs(query)) == range(1, 2));
        query.limit = 10000;
        query.tail = 2;
        query.session_id = "s1";
        query.client_id = "c0";
        CHECK(sequences(db.logs(query)) == std::vector<std::uint64_t>{15, 18});
        query.tail = 100;
        CHECK(sequences(db.logs(query)) == std::vector<std::uint64_t>{3, 6, 9, 12, 15, 18});
    }
    SECTION("the highest sequence comes back from load") {
        CHECK(db.load().last_log_sequence == 30);
    }
}

TEST_CASE("reopening a database keeps its data and does not migrate it again") {
    TempDir dir;
    const fs::path file = dir / "state.db";
    {
        Database db(file);
        CHECK(db.opened_schema_version() == 0);
        db.save_setting("seed_model_id", std::string(64, '7'));
    }
    {
        RawDb raw(file);
        CHECK(raw.integer("PRAGMA user_version") == Database::k_schema_version);
        CHECK(raw.integer("PRAGMA application_id") == Database::k_application_id);
        CHECK(raw.text("PRAGMA journal_mode") == "wal");
        // The tables read well from the sqlite3 shell.
        CHECK(raw.text("SELECT value FROM settings WHERE key = 'seed_model_id'") ==
              std::string(64, '7'));
    }
    Database db(file);
    CHECK(db.opened_schema_version() == Database::k_schema_version);
    CHECK(db.load().settings.at("seed_model_id") == std::string(64, '7'));
}

TEST_CASE("an empty file (schema version 0) is migrated") {
    TempDir dir;
    const fs::path file = dir / "state.db";
    fedcli::test::write_file(file, "");
    {
        Database db(file);
        CHECK(db.opened_schema_version() == 0);
        db.save_setting("k", "v");
    }
    CHECK(RawDb(file).integer("PRAGMA user_version") == Database::k_schema_version);
    CHECK(reopen_and_load(file).settings.at("k") == "v");
}

TEST_CASE("a database with a newer schema version is refused, untouched") {
    TempDir dir;
    const fs::path file = dir / "state.db";
    { Database db(file); }
    RawDb(file).exec("PRAGMA user_version = 99");
    REQUIRE_THROWS_WITH(
        [&] { Database db(file); }(),
        Catch::Contains(file.string()) &&
            Catch::Contains("schema version 99 is newer than this fedcli supports (" +
                            std::to_string(Database::k_schema_version) + "); upgrade fedcli"));
    CHECK(RawDb(file).integer("PRAGMA user_version") == 99);
}

TEST_CASE("a file that is not a fedcli state database is refused, naming the file") {
    TempDir dir;
    const fs::path file = dir / "state.db";
    std::string original;
    SECTION("random bytes") {
        original = random_bytes(8192, 42);
        fedcli::test::write_file(file, original);
    }
    SECTION("another program's SQLite database") {
        RawDb(file).exec("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)");
        original = fedcli::test::read_file(file);
    }
    REQUIRE_THROWS_WITH([&] { Database db(file); }(),
                        Catch::Contains("'" + file.string() + "'") &&
                            Catch::Contains("is not a fedcli state database"));
    CHECK(fedcli::test::read_file(file) == original);
}

TEST_CASE("a database that cannot be opened is refused, naming the file") {
    TempDir dir;
    const fs::path file = dir / "no-such-folder" / "state.db";
    REQUIRE_THROWS_WITH([&] { Database db(file); }(),
                        Catch::Contains(file.string()) && Catch::Contains("cannot open"));
}

TEST_CASE("a failed write is thrown by the next flush and reported to the error callback") {
    TempDir dir;
    const fs::path file = dir / "state.db";
    {
        Database db(file);
        db.save_setting("before", "1");
        db.flush();

        std::mutex mutex;
        std::vector<std::string> reported;
        db.set_error_callback([&](const std::string& message) {
            std::lock_guard lock(mutex);
            reported.push_back(message);
        });
        // A full disk, as SQLite reports it: the file may not grow any more.
        db.simulate_full_disk();
        std::vector<v1::LogEntry> entries;
        for (std::uint64_t i = 1; i <= 2000; ++i) {
            entries.push_back(make_log(i, "c1", 1, "s1"));
            entries.back().set_line(std::string(500, 'x'));
        }
        db.append_logs(std::move(entries));

        std::string thrown;
        try {
            db.flush();
        } catch (const fedcli::Error& error) {
            thrown = error.what();
        }
        INFO(thrown);
        CHECK_THAT(thrown, Catch::Contains(file.string()) && Catch::Contains("log lines") &&
                               Catch::Contains("database or disk is full"));
        {
            std::lock_guard lock(mutex);
            CHECK(reported == std::vector<std::string>{thrown});
        }
        db.flush();  // reported once
        CHECK(db.logs({}).empty());
    }
    // What was committed before survives; the failed batch left nothing behind.
    const StoredState stored = reopen_and_load(file);
    CHECK(stored.settings.at("before") == "1");
    CHECK(stored.last_log_sequence == 0);
}

TEST_CASE("writes from several threads all land") {
    TempDir dir;
    const fs::path file = dir / "state.db";
    constexpr int k_threads = 8;
    constexpr int k_per_thread = 100;
    {
        Database db(file);
        std::atomic<std::uint64_t> sequence{0};
        std::vector<std::thread> threads;
        for (int t = 0; t < k_threads; ++t) {
            threads.emplace_back([&, t] {
                for (int i = 0; i < k_per_thread; ++i) {
                    const std::string id = std::to_string(t) + "-" + std::to_string(i);
                    db.save_client(make_client(id, i));
                    db.append_logs({make_log(++sequence, id, 1, "s")});
                    if (i % 10 == 0) db.flush();
                }
                db.save_setting("thread-" + std::to_string(t), "done");
            });
        }
        for (auto& thread : threads) thread.join();
    }
    Database db(file);
    const StoredState stored = db.load();
    CHECK(stored.clients.size() == k_threads * k_per_thread);
    CHECK(stored.settings.size() == k_threads);
    CHECK(stored.last_log_sequence == k_threads * k_per_thread);
    CHECK(sequences(db.logs({})) == range(1, k_threads * k_per_thread));
}

// --- check_data_dir ------------------------------------------------------------------------

namespace {

/// A consistent data folder: a seed model, a session whose round 1 failed, was retried as
/// round 2 (committed) and followed by round 3 (committed); an accepted and a rejected update;
/// a validation; a package; and a leftover upload.
struct Store {
    explicit Store(const fs::path& root_path) : root(root_path) {
        fs::create_directories(root / "models");
        fs::create_directories(root / "packages");
        seed = add_file("models", ".npz", random_bytes(1000, 1));
        model2 = add_file("models", ".npz", random_bytes(2000, 2));
        model3 = add_file("models", ".npz", random_bytes(3000, 3));
        update = add_file("models", ".npz", random_bytes(500, 4));
        package = add_file("packages", ".tgz", random_bytes(700, 5));
        fedcli::test::write_file(root / "models" / (std::string(64, 'f') + ".npz.part"), "half");

        Database db(root / "state.db");
        db.save_model(make_model(seed, 1000, "", 0, ""));
        db.save_model(make_model(model2, 2000, seed, 2, "s1"));
        db.save_model(make_model(model3, 3000, model2, 3, "s1"));
        db.save_session(make_session("s1", 1));
        db.save_round(make_round(1, "s1", 1, 1, v1::ROUND_STATE_FAILED, seed, ""));
        db.save_round(make_round(2, "s1", 1, 2, v1::ROUND_STATE_COMMITTED, seed, model2));
        db.save_round(make_round(3, "s1", 2, 1, v1::ROUND_STATE_COMMITTED, model2, model3));
        db.save_update(3, make_update("t-1", "c1", update));
        db.save_rejected(3, make_rejected("t-2", "c2"));
        db.save_validation(3, "t-3", make_metrics("c1", model3));
        db.save_setting("package_sha256", package);
    }

    /// Writes bytes as <folder>/<sha256><extension> and returns the sha256.
    std::string add_file(const std::string& folder, const std::string& extension,
                         const std::string& bytes) {
        const std::string id = sha256_of(bytes);
        fedcli::test::write_file(root / folder / (id + extension), bytes);
        return id;
    }
    fs::path model_file(const std::string& id) const { return root / "models" / (id + ".npz"); }

    fs::path root;
    std::string seed, model2, model3, update, package;
};

}  // namespace

TEST_CASE("check_data_dir finds nothing wrong with a consistent store") {
    TempDir dir;
    Store store(dir.path());
    CHECK(joined(check_data_dir(dir.path())) == "");
    // Also while a combiner has the database open (its WAL and -shm files exist).
    Database db(dir / "state.db");
    db.save_setting("package_name", "p.tgz");
    db.flush();
    CHECK(joined(check_data_dir(dir.path())) == "");
}

TEST_CASE("check_data_dir reports each inconsistency on a line naming it") {
    TempDir dir;
    Store store(dir.path());
    std::vector<std::string> expected;  // parts of one reported line

    SECTION("a missing model file") {
        fs::remove(store.model_file(store.model2));
        expected = {"model " + store.model2, "models/" + store.model2 + ".npz is missing"};
    }
    SECTION("a model file of the wrong size") {
        std::ofstream(store.model_file(store.model3), std::ios::app) << "x";
        expected = {"model " + store.model3, "is 3001 bytes, the database says 3000"};
    }
    SECTION("a model file with a corrupt byte") {
        std::string bytes = fedcli::test::read_file(store.model_file(store.seed));
        bytes[500] = static_cast<char>(bytes[500] ^ 1);
        fedcli::test::write_file(store.model_file(store.seed), bytes);
        expected = {"model " + store.seed, "has sha256 " + sha256_of(bytes)};
    }
    SECTION("a committed round without an output model") {
        Database db(dir / "state.db");
        db.save_round(make_round(3, "s1", 2, 1, v1::ROUND_STATE_COMMITTED, store.model2, ""));
        expected = {"round 3", "committed without an output model"};
    }
    SECTION("a round whose input model is unknown") {
        Database db(dir / "state.db");
        db.save_round(make_round(4, "s1", 3, 1, v1::ROUND_STATE_OPEN, std::string(64, '9'), ""));
        expected = {"round 4", "input model " + std::string(64, '9'), "not in the models table"};
    }
    SECTION("a session round committed twice") {
        Database db(dir / "state.db");
        db.save_round(
            make_round(4, "s1", 2, 2, v1::ROUND_STATE_COMMITTED, store.model2, store.model3));
        expected = {"session s1", "session round 2 was committed more than once (rounds 3, 4)"};
    }
    SECTION("a gap in the committed session rounds") {
        Database db(dir / "state.db");
        db.save_round(
            make_round(4, "s1", 4, 1, v1::ROUND_STATE_COMMITTED, store.model3, store.model3));
        expected = {"session s1", "session round 3 has no committed round"};
    }
    SECTION("two rounds with one session round and attempt") {
        Database db(dir / "state.db");
        db.save_round(make_round(4, "s1", 2, 1, v1::ROUND_STATE_FAILED, store.model2, ""));
        expected = {"session s1", "rounds 3 and 4 are both session round 2, attempt 1"};
    }
    SECTION("an accepted update without its file") {
        fs::remove(store.model_file(store.update));
        expected = {"task 't-1'", "models/" + store.update + ".npz is missing"};
    }
    SECTION("a missing package file") {
        fs::remove(dir.path() / "packages" / (store.package + ".tgz"));
        expected = {"package " + store.package, "packages/" + store.package + ".tgz is missing"};
    }
    SECTION("a corrupt package file") {
        fedcli::test::write_file(dir.path() / "packages" / (store.package + ".tgz"), "other");
        expected = {"package " + store.package, "has sha256 " + sha256_of("other")};
    }
    const std::vector<std::string> problems = check_data_dir(dir.path());
    INFO(joined(problems));
    CHECK(any_line_has(problems, expected));
}

TEST_CASE("check_data_dir reports a missing or foreign state.db without creating one") {
    TempDir dir;
    SECTION("missing") {
        const auto problems = check_data_dir(dir.path());
        REQUIRE(problems.size() == 1);
        CHECK_THAT(problems[0],
                   Catch::Contains((dir / "state.db").string()) && Catch::Contains("missing"));
        CHECK_FALSE(fs::exists(dir / "state.db"));
    }
    SECTION("not a database") {
        fedcli::test::write_file(dir / "state.db", random_bytes(4096, 7));
        const auto problems = check_data_dir(dir.path());
        REQUIRE(problems.size() == 1);
        CHECK_THAT(problems[0], Catch::Contains("is not a fedcli state database"));
    }
}
