//! The metrics port under attack, one test per attack, each asserting the bound it proves, on
//! the real binary over real sockets (issue 15). The agent runs with short timeouts through the
//! test-only `GPU_AGENT_TEST_HTTP_*` variables; production defaults are in `serve::Limits`.

mod common;
#[path = "common/limits.rs"]
mod limits;

use std::time::{Duration, Instant};

use common::*;
use limits::{raise_fd_limit, read_to_close, rss_kib, sockets};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header (and idle) timeout the timing tests give the agent.
const HEADER_TIMEOUT: Duration = Duration::from_millis(500);
/// Scheduling noise allowed past a timeout on a loaded CI machine.
const SLACK: Duration = Duration::from_secs(2);

/// An agent serving HTTP on a free port with `env`, answering `/healthz`.
async fn agent_with(
    dir: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Agent, String) {
    let addr = free_addr();
    let mut args = vec!["--metrics-addr", addr.as_str()];
    args.extend_from_slice(extra);
    let agent = Agent::spawn_with_env(dir, &args, env);
    eventually("/healthz answers", || {
        http_get(&addr, "/healthz").is_some_and(|(status, _)| status == 200)
    })
    .await;
    (agent, addr)
}

/// [`HEADER_TIMEOUT`], for the agent.
const HEADER_TIMEOUT_ENV: (&str, &str) = ("GPU_AGENT_TEST_HTTP_HEADER_TIMEOUT_MS", "500");

/// A scrape on a fresh connection: the status and how long it took.
async fn timed_scrape(addr: &str) -> (Option<u16>, Duration) {
    let addr = addr.to_string();
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics").map(|(s, _)| s))
        .await
        .unwrap();
    (status, started.elapsed())
}

#[tokio::test]
async fn half_open_connections_are_closed_within_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, addr) = agent_with(dir.path(), &[], &[HEADER_TIMEOUT_ENV]).await;
    // Ten that send nothing, ten that stop half-way through the head.
    let mut connections = Vec::new();
    for i in 0..20 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 1 {
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Ag")
                .await
                .unwrap();
        }
        connections.push((Instant::now(), stream));
    }
    let closed = futures_join(
        connections
            .into_iter()
            .map(|(opened, mut stream)| async move {
                let sent = read_to_close(&mut stream, HEADER_TIMEOUT + SLACK).await;
                (opened.elapsed(), sent)
            }),
    )
    .await;
    for (after, sent) in closed {
        // Closed by the timer: not before it, and within it plus scheduling noise.
        assert!(
            after >= HEADER_TIMEOUT.mul_f64(0.9),
            "closed after {after:?}"
        );
        assert!(after <= HEADER_TIMEOUT + SLACK, "closed after {after:?}");
        // Nothing but, at most, an error status.
        let text = String::from_utf8_lossy(&sent);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, addr) = agent_with(dir.path(), &[], &[HEADER_TIMEOUT_ENV]).await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    // Two requests on the connection: keep-alive works, then it idles.
    for _ in 0..2 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        while !response.ends_with(b"ok\n") {
            let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("a response")
                .unwrap();
            assert!(n > 0, "closed before answering");
            response.extend_from_slice(&buf[..n]);
        }
        assert!(response.starts_with(b"HTTP/1.1 200"));
    }
    let idle_since = Instant::now();
    let sent = read_to_close(&mut stream, HEADER_TIMEOUT + SLACK).await;
    let after = idle_since.elapsed();
    assert!(sent.is_empty(), "{:?}", String::from_utf8_lossy(&sent));
    assert!(
        after >= HEADER_TIMEOUT.mul_f64(0.9),
        "closed after {after:?}"
    );
    assert!(after <= HEADER_TIMEOUT + SLACK, "closed after {after:?}");
}

#[tokio::test]
async fn h2c_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, addr) = agent_with(dir.path(), &[], &[]).await;

    // Prior knowledge: the HTTP/2 preface and an empty SETTINGS frame. An HTTP/2 server answers
    // with its own SETTINGS frame; the agent closes the connection without a byte (hyper's
    // HTTP/1 server on a preface), or at most with an HTTP/1.1 error status.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    stream.write_all(&preface).await.unwrap();
    let answer = read_to_close(&mut stream, WAIT).await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
        "answered {answer:?} to an HTTP/2 preface"
    );

    // Upgrade from HTTP/1.1: ignored, answered over HTTP/1.1.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn a_head_over_16_kib_is_refused_with_431() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, addr) = agent_with(dir.path(), &[], &[]).await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let filler = "a".repeat(1000);
    let mut head = String::from("GET /metrics HTTP/1.1\r\nHost: x\r\n");
    for i in 0..20 {
        head.push_str(&format!("X-Filler-{i}: {filler}\r\n"));
    }
    head.push_str("\r\n");
    // The agent may answer and close before reading all of it.
    let _ = stream.write_all(head.as_bytes()).await;
    let answer = read_to_close(&mut stream, WAIT).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_after_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // A node big enough that /metrics (about 17 MB under both namings) outgrows what the
    // kernel buffers for a client that does not read (up to 4 MiB of send buffer).
    let mut fixture = String::from("gpus:\n");
    for _ in 0..64 {
        fixture.push_str(
            "  - {model: NVIDIA H100 80GB HBM3, telemetry: {utilizationPercent: 50, memoryUsedMiB: 1000, \
             temperatureCelsius: 60, powerWatts: 300, profiling: {smActive: 0.5, dramActive: 0.4}}, \
             mig: {devices: [1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb, 1g.10gb]}}\n",
        );
    }
    let fixture = write_file(dir.path(), "fixture.yaml", &fixture);
    let env = [("GPU_AGENT_TEST_HTTP_WRITE_TIMEOUT_MS", "500")];
    const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
    let (_agent, addr) = agent_with(
        dir.path(),
        &[
            "--mock-fixture",
            arg(&fixture),
            "--mig-strategy",
            "mixed",
            "--metrics-names",
            "both",
        ],
        &env,
    )
    .await;
    let pid = _agent.child.id();
    // The readiness probe's connection may still be closing on the agent's side.
    let idle_sockets = settled_sockets(pid).await;

    // A small receive window, a request, and no reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let asked = Instant::now();
    eventually("the agent to hold the connection", || {
        sockets(pid) > idle_sockets
    })
    .await;
    // The agent drops the connection once its write has stalled for the timeout.
    eventually("the agent to drop the connection", || {
        sockets(pid) == idle_sockets
    })
    .await;
    let after = asked.elapsed();
    assert!(
        after >= WRITE_TIMEOUT.mul_f64(0.9),
        "dropped after {after:?}"
    );
    assert!(after <= WRITE_TIMEOUT + SLACK, "dropped after {after:?}");
    // What it had handed the kernel before giving up: a cut answer, then the end.
    let sent = read_to_close(&mut stream, SLACK).await;
    let head_end = sent
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&sent[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap();
    let body = sent.len() - head_end;
    assert!(
        body < length,
        "{body} of {length} bytes arrived: the answer was not cut"
    );
}

#[tokio::test]
async fn over_the_cap_scrapes_still_answer_and_memory_stays_bounded() {
    raise_fd_limit();
    const CAP: usize = 64;
    const FLOOD: usize = 800;
    let dir = tempfile::tempdir().unwrap();
    let cap = CAP.to_string();
    let env = [("GPU_AGENT_TEST_HTTP_MAX_CONNECTIONS", cap.as_str())];
    let (agent, addr) = agent_with(dir.path(), &[], &env).await;
    let pid = agent.child.id();
    for _ in 0..20 {
        assert_eq!(timed_scrape(&addr).await.0, Some(200));
    }
    let (rss_before, sockets_before) = (rss_kib(pid), sockets(pid));

    // The flood: idle connections and half-sent heads, held open (the header timeout is the
    // production 10 s, longer than this test).
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 1 {
            let _ = stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .await;
        }
        flood.push(stream);
    }
    // Scrapes on fresh connections are answered, promptly, while the flood holds.
    for _ in 0..20 {
        let (status, took) = timed_scrape(&addr).await;
        assert_eq!(status, Some(200));
        assert!(took < Duration::from_secs(2), "a scrape took {took:?}");
    }
    let (rss_during, sockets_during) = (rss_kib(pid), sockets(pid));
    drop(flood);

    // Bounds: the agent holds at most the cap of the flood's connections (plus the listener and
    // one being admitted), and its memory grows by at most 64 connections' worth, not 800.
    assert!(
        sockets_during <= sockets_before + CAP + 1,
        "{sockets_during} sockets during the flood, {sockets_before} before, cap {CAP}"
    );
    let grown_kib = rss_during.saturating_sub(rss_before);
    assert!(
        grown_kib <= 4 << 10,
        "RSS grew by {grown_kib} KiB under {FLOOD} connections ({rss_before} -> {rss_during} KiB)"
    );
    eprintln!(
        "flood of {FLOOD} connections, cap {CAP}: RSS {rss_before} -> {rss_during} KiB, \
         sockets {sockets_before} -> {sockets_during}"
    );
}

/// Run futures concurrently and collect their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

/// The agent's socket count once it has stayed the same for 200 ms (connections a probe just
/// closed are gone from it).
async fn settled_sockets(pid: u32) -> usize {
    let mut last = sockets(pid);
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stable_since.elapsed() < Duration::from_millis(200) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = sockets(pid);
        if now != last {
            (last, stable_since) = (now, Instant::now());
        }
    }
    last
}
