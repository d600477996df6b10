//! Counters and gauges of one node, kept in relaxed atomics.
//!
//! Hot paths update them once per event batch (a fan-out adds its delivery count once), never
//! per subscriber through a registry lookup. [`Metrics::render_prometheus`] writes them in the
//! Prometheus text exposition format.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use switchboard_proto::{DisconnectCode, ErrorCode};

/// Command methods counted in `switchboard_commands_total`.
pub(crate) const METHODS: [&str; 13] = [
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
    "pong",
];

/// Transports counted apart in the `switchboard_transport_*` families; any other name counts
/// as `other`.
pub const TRANSPORTS: [&str; 8] = [
    "websocket",
    "http_stream",
    "sse",
    "uni_websocket",
    "uni_http_stream",
    "uni_sse",
    "socketio",
    "other",
];

/// What one transport carried: its connections and the messages it read and wrote.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    connections: AtomicI64,
    accepted: AtomicU64,
    messages_in: AtomicU64,
    written: Striped,
}

/// Stripes of [`Striped`]: more than the worker threads of a typical node.
const STRIPES: usize = 8;

/// Messages and bytes written, counted per write by every worker thread at once: spread over
/// stripes of their own cache line (each thread counts into its own stripe), so that writers on
/// different cores never contend for one line. Reading sums the stripes.
#[derive(Debug, Default)]
struct Striped {
    stripes: [Stripe; STRIPES],
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl Striped {
    fn add(&self, messages: u64, bytes: u64) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static STRIPE: usize = (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % STRIPES;
        }
        let stripe = &self.stripes[STRIPE.with(|s| *s)];
        stripe.messages.fetch_add(messages, Ordering::Relaxed);
        stripe.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn messages(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.messages.load(Ordering::Relaxed))
            .sum()
    }

    fn bytes(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.bytes.load(Ordering::Relaxed))
            .sum()
    }
}

impl TransportMetrics {
    /// Counts `messages` (replies and pushes) of `bytes` bytes written to clients; the
    /// transports call it once per write.
    pub fn written(&self, messages: u64, bytes: u64) {
        self.written.add(messages, bytes);
    }

    /// Current number of connections over this transport.
    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Node metrics. See the module docs.
#[derive(Debug, Default)]
pub struct Metrics {
    transports: [TransportMetrics; TRANSPORTS.len()],
    connections: AtomicI64,
    subscriptions: AtomicI64,
    channels: AtomicI64,
    connections_accepted: AtomicU64,
    commands: [AtomicU64; METHODS.len()],
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
    publications: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
    disconnects: [AtomicU64; DisconnectCode::ALL.len()],
    disconnects_other: AtomicU64,
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The counters of the transport called `name` (`websocket`, `http_stream`, ...; see
    /// [`TRANSPORTS`]).
    pub fn transport(&self, name: &str) -> &TransportMetrics {
        let i = TRANSPORTS
            .iter()
            .position(|t| *t == name)
            .unwrap_or(TRANSPORTS.len() - 1);
        &self.transports[i]
    }
    pub(crate) fn connection_opened(&self, transport: &str) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        inc(&self.connections_accepted);
        let t = self.transport(transport);
        t.connections.fetch_add(1, Ordering::Relaxed);
        inc(&t.accepted);
    }
    pub(crate) fn connection_closed(&self, transport: &str) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
        self.transport(transport)
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
    /// Counts commands received over `transport`, `n` at a time (besides
    /// [`Metrics::messages_in`]).
    pub(crate) fn transport_messages_in(&self, transport: &str, n: u64) {
        self.messages_in(n);
        self.transport(transport)
            .messages_in
            .fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn subscriptions_changed(&self, delta: i64) {
        self.subscriptions.fetch_add(delta, Ordering::Relaxed);
    }
    pub(crate) fn channels_changed(&self, delta: i64) {
        self.channels.fetch_add(delta, Ordering::Relaxed);
    }
    pub(crate) fn command(&self, method: &str) {
        if let Some(i) = METHODS.iter().position(|m| *m == method) {
            inc(&self.commands[i]);
        }
    }
    /// Counts incoming protocol messages (commands), `n` at a time.
    pub fn messages_in(&self, n: u64) {
        self.messages_in.fetch_add(n, Ordering::Relaxed);
    }
    /// Counts outgoing protocol messages (replies and pushes) and their bytes.
    pub fn messages_out(&self, n: u64, bytes: u64) {
        self.messages_out.fetch_add(n, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(crate) fn publication(&self) {
        inc(&self.publications);
    }
    pub(crate) fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|e| e.code == code.code) {
            inc(&self.errors[i]);
        }
    }
    /// Counts a disconnect by code.
    pub fn disconnect(&self, code: DisconnectCode) {
        match DisconnectCode::ALL.iter().position(|d| d.code == code.code) {
            Some(i) => inc(&self.disconnects[i]),
            None => inc(&self.disconnects_other),
        }
    }

    /// Current number of connections.
    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// Current number of subscriptions (connection x channel).
    pub fn subscriptions(&self) -> i64 {
        self.subscriptions.load(Ordering::Relaxed)
    }
    /// Current number of channels with local subscribers.
    pub fn channels(&self) -> i64 {
        self.channels.load(Ordering::Relaxed)
    }
    /// Disconnects so far with `code`.
    pub fn disconnects_with(&self, code: DisconnectCode) -> u64 {
        DisconnectCode::ALL
            .iter()
            .position(|d| d.code == code.code)
            .map_or(0, |i| self.disconnects[i].load(Ordering::Relaxed))
    }

    /// Appends every metric in the Prometheus text format to `out`.
    pub fn render_prometheus(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            out,
            "switchboard_connections",
            "Open client connections.",
            self.connections(),
        );
        gauge(
            out,
            "switchboard_subscriptions",
            "Client subscriptions (connection x channel).",
            self.subscriptions(),
        );
        gauge(
            out,
            "switchboard_channels",
            "Channels with local subscribers.",
            self.channels(),
        );
        counter(
            out,
            "switchboard_connections_accepted_total",
            "Connections accepted.",
            load(&self.connections_accepted),
        );
        header(
            out,
            "switchboard_commands_total",
            "Client commands by method.",
            "counter",
        );
        for (m, c) in METHODS.iter().zip(&self.commands) {
            let _ = writeln!(
                out,
                "switchboard_commands_total{{method=\"{m}\"}} {}",
                load(c)
            );
        }
        counter(
            out,
            "switchboard_messages_in_total",
            "Protocol messages received from clients.",
            load(&self.messages_in),
        );
        counter(
            out,
            "switchboard_messages_out_total",
            "Protocol messages (replies and pushes) sent to clients.",
            load(&self.messages_out),
        );
        counter(
            out,
            "switchboard_bytes_out_total",
            "Payload bytes sent to clients.",
            load(&self.bytes_out),
        );
        counter(
            out,
            "switchboard_publications_total",
            "Publications fanned out by this node.",
            load(&self.publications),
        );
        header(
            out,
            "switchboard_errors_total",
            "Error replies by code.",
            "counter",
        );
        for (e, c) in ErrorCode::ALL.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "switchboard_errors_total{{code=\"{}\",message=\"{}\"}} {}",
                e.code,
                e.message,
                load(c)
            );
        }
        header(
            out,
            "switchboard_disconnects_total",
            "Server-initiated disconnects by code.",
            "counter",
        );
        for (d, c) in DisconnectCode::ALL.iter().zip(&self.disconnects) {
            let _ = writeln!(
                out,
                "switchboard_disconnects_total{{code=\"{}\",reason=\"{}\"}} {}",
                d.code,
                d.reason,
                load(c)
            );
        }
        let _ = writeln!(
            out,
            "switchboard_disconnects_total{{code=\"other\",reason=\"other\"}} {}",
            load(&self.disconnects_other)
        );
        counter(
            out,
            "switchboard_slow_disconnects_total",
            "Connections closed because their outbound queue overflowed.",
            self.disconnects_with(DisconnectCode::SLOW),
        );
        self.render_transports(out);
    }

    /// The `switchboard_transport_*` families, one series per transport.
    fn render_transports(&self, out: &mut String) {
        type Family = (
            &'static str,
            &'static str,
            &'static str,
            fn(&TransportMetrics) -> i64,
        );
        let families: [Family; 5] = [
            (
                "switchboard_transport_connections",
                "Open client connections by transport.",
                "gauge",
                |t| t.connections(),
            ),
            (
                "switchboard_transport_connections_accepted_total",
                "Connections accepted by transport.",
                "counter",
                |t| t.accepted.load(Ordering::Relaxed) as i64,
            ),
            (
                "switchboard_transport_messages_in_total",
                "Protocol messages (commands) received by transport.",
                "counter",
                |t| t.messages_in.load(Ordering::Relaxed) as i64,
            ),
            (
                "switchboard_transport_messages_out_total",
                "Protocol messages (replies and pushes) written by transport.",
                "counter",
                |t| t.written.messages() as i64,
            ),
            (
                "switchboard_transport_bytes_out_total",
                "Message bytes written by transport (before framing).",
                "counter",
                |t| t.written.bytes() as i64,
            ),
        ];
        for (name, help, kind, value) in families {
            header(out, name, help, kind);
            for (t, m) in TRANSPORTS.iter().zip(&self.transports) {
                let _ = writeln!(out, "{name}{{transport=\"{t}\"}} {}", value(m));
            }
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: i64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::default();
        m.command("subscribe");
        m.error(ErrorCode::PERMISSION_DENIED);
        m.disconnect(DisconnectCode::SLOW);
        let mut s = String::new();
        m.render_prometheus(&mut s);
        assert!(s.contains("switchboard_commands_total{method=\"subscribe\"} 1"));
        assert!(
            s.contains("switchboard_errors_total{code=\"103\",message=\"permission denied\"} 1")
        );
        assert!(s.contains("switchboard_slow_disconnects_total 1"));
        assert!(s.contains("# TYPE switchboard_connections gauge"));
    }

    #[test]
    fn transports_are_counted_apart() {
        let m = Metrics::default();
        m.connection_opened("sse");
        m.connection_opened("sse");
        m.connection_opened("websocket");
        m.connection_closed("sse");
        m.connection_opened("carrier-pigeon");
        m.transport_messages_in("sse", 3);
        m.transport("sse").written(2, 40);
        let mut s = String::new();
        m.render_prometheus(&mut s);
        for line in [
            "switchboard_transport_connections{transport=\"sse\"} 1",
            "switchboard_transport_connections{transport=\"websocket\"} 1",
            "switchboard_transport_connections{transport=\"other\"} 1",
            "switchboard_transport_connections_accepted_total{transport=\"sse\"} 2",
            "switchboard_transport_messages_in_total{transport=\"sse\"} 3",
            "switchboard_transport_messages_out_total{transport=\"sse\"} 2",
            "switchboard_transport_bytes_out_total{transport=\"sse\"} 40",
            "switchboard_connections 3",
            "switchboard_messages_in_total 3",
        ] {
            assert!(s.contains(line), "{line} missing in\n{s}");
        }
    }
}
