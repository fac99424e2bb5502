// One client stream: queued writes drained by a writer thread.
#include "combiner/internal.hpp"

namespace fedcli::combiner {

Connection::Connection(grpc::ServerContext* context, Stream* stream)
    : m_context(context), m_stream(stream) {
    m_writer = std::thread([this] { write_loop(); });
}

Connection::~Connection() {
    finish();
}

void Connection::send(v1::ServerMessage message) {
    {
        std::lock_guard lock(m_mutex);
        if (m_closing || m_writer_done) return;
        m_queue.push_back(std::move(message));
    }
    m_changed.notify_all();
}

void Connection::cancel() {
    std::lock_guard lock(m_mutex);
    if (m_context) m_context->TryCancel();
}

void Connection::drain_then_cancel(Clock::time_point deadline) {
    std::unique_lock lock(m_mutex);
    m_changed.wait_until(lock, deadline,
                         [&] { return m_writer_done || (m_queue.empty() && !m_writing); });
    if (m_context) m_context->TryCancel();
}

void Connection::write_loop() {
    std::unique_lock lock(m_mutex);
    for (;;) {
        m_changed.wait(lock, [&] { return m_closing || !m_queue.empty(); });
        if (m_queue.empty()) break;  // closing with nothing left to send
        v1::ServerMessage message = std::move(m_queue.front());
        m_queue.pop_front();
        m_writing = true;
        lock.unlock();
        bool written = m_stream->Write(message);
        lock.lock();
        m_writing = false;
        m_changed.notify_all();
        if (!written) break;  // the stream is gone; nothing more can be sent
    }
    m_writer_done = true;
    m_queue.clear();
    m_changed.notify_all();
}

void Connection::finish() {
    std::unique_lock lock(m_mutex);
    if (!m_writer.joinable()) return;
    m_closing = true;
    m_changed.notify_all();
    // A write the client does not read (flow control) would block forever; give it a moment,
    // then cancel the RPC, which makes the write fail.
    if (!m_changed.wait_for(lock, std::chrono::milliseconds(500), [&] { return m_writer_done; })) {
        if (m_context) m_context->TryCancel();
    }
    lock.unlock();
    m_writer.join();
    lock.lock();
    m_context = nullptr;
    m_stream = nullptr;
}

}  // namespace fedcli::combiner
