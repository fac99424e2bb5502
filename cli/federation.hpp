// Helpers shared by the federation commands (cli/cmd_combiner.cpp, cli/cmd_client.cpp,
// cli/cmd_federation.cpp): signal handling for the daemons, the operator's connection to a
// combiner's Control and Transfer services, and the formatting of ids and times.
//
// Thread-safety: SignalWaiter is driven by the thread that created it (its own thread only
// calls the handler); CombinerConnection may be used from one thread at a time.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "core/proto/fedcli.grpc.pb.h"

namespace fedcli::cli {

/// Default `--combiner` of every command that talks to a combiner (env FEDCLI_COMBINER).
inline constexpr const char* k_default_combiner = "127.0.0.1:12080";
inline constexpr const char* k_combiner_env = "FEDCLI_COMBINER";

/// Turns SIGINT and SIGTERM into a call on a thread of its own, so that a daemon shuts
/// down through its normal API instead of inside a signal handler. The constructor blocks
/// both signals in the calling thread; it must run before any other thread is started, so
/// that every thread (gRPC's included) inherits the mask and only sigwait() sees them.
/// Entry points are spawned with an empty mask (core/dispatch), so they still get signals.
/// A second signal while the first is being handled exits at once with 128 + signal.
class SignalWaiter {
  public:
    SignalWaiter();
    /// Wakes and joins the waiting thread, discards signals still pending, and restores
    /// the previous mask.
    ~SignalWaiter();
    SignalWaiter(const SignalWaiter&) = delete;
    SignalWaiter& operator=(const SignalWaiter&) = delete;

    /// Starts waiting; `on_signal(signal)` runs on the waiting thread for the first signal.
    void start(std::function<void(int)> on_signal);
    /// The first signal received, or 0.
    int received() const { return m_received.load(); }

  private:
    sigset_t m_previous_mask;
    std::atomic<int> m_received{0};
    std::atomic<bool> m_closing{false};
    std::thread m_thread;
};

/// "SIGINT", "SIGTERM", else "signal N".
std::string signal_name(int signal);

/// A connection to a combiner for operator commands. Unary calls get a short deadline;
/// a combiner that cannot be reached gives the same error everywhere:
///   cannot reach the combiner at HOST:PORT: <gRPC message> (is `fedcli combiner start`
///   running?)
class CombinerConnection {
  public:
    /// Checks `target` ("host:port") and opens a channel (connecting lazily).
    explicit CombinerConnection(std::string target,
                                std::chrono::milliseconds deadline = std::chrono::seconds(5));

    const std::string& target() const { return m_target; }
    fedcli::v1::Control::Stub& control() { return *m_control; }
    fedcli::v1::Transfer::Stub& transfer() { return *m_transfer; }

    /// Calls a unary Control method with the deadline; throws fedcli::Error (see class
    /// comment) when the call fails. `what` names the call in messages ("starting the
    /// session").
    template <class Request, class Response>
    Response call(grpc::Status (fedcli::v1::Control::Stub::*method)(grpc::ClientContext*,
                                                                    const Request&, Response*),
                  const Request& request, std::string_view what) {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + m_deadline);
        Response response;
        grpc::Status status = ((*m_control).*method)(&context, request, &response);
        if (!status.ok()) fail(status, what);
        return response;
    }

    /// GetStatus, used as a reachability check before long transfers.
    fedcli::v1::StatusResponse status();

    /// Throws the error for a failed call.
    [[noreturn]] void fail(const grpc::Status& status, std::string_view what) const;

  private:
    std::string m_target;
    std::chrono::milliseconds m_deadline;
    std::shared_ptr<grpc::Channel> m_channel;
    std::unique_ptr<fedcli::v1::Control::Stub> m_control;
    std::unique_ptr<fedcli::v1::Transfer::Stub> m_transfer;
};

/// The first 8 hex digits of an id ("-" for an empty one), as in the event log.
std::string short_id(std::string_view id);

/// "2026-11-23 10:00:00Z" for a Unix time in milliseconds; "-" for 0.
std::string utc_time(std::int64_t unix_ms);
/// "0.8 s", "42 s", "3 min", "2 h" (one unit, rounded down beyond a minute).
std::string duration_text(double seconds);

}  // namespace fedcli::cli
