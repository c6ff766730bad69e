//! Soak of the real binary (the release build `cargo bench` makes): start-to-registered time and
//! resident memory over 100 000 `/metrics` scrapes and 10 000 Allocate calls.
//! Targets: registered ≤ 100 ms after start; RSS ≤ 12 MiB and flat.
//!
//! The agent runs on the mock backend with the bench node (8 × H100, each cut into 7 × 1g.10gb
//! MIG devices, every MIG device time-sliced 4 ways: 224 devices of `nvidia.com/mig-1g.10gb`),
//! with a test kubelet (Registration on `kubelet.sock`, the agent's DevicePlugin socket dialled
//! back, one ListAndWatch stream held open) and a pod-resources stub reporting 200 containers,
//! collecting every 100 ms (the shortest interval) so that scrapes keep rendering new samples.
//!
//! 1. Start → registered, STARTS times (default 5): spawn the binary, wait for its Register
//!    call at the test kubelet, SIGTERM it (it must exit 0).
//! 2. The soak: SCRAPES scrapes (default 100 000) with one Allocate of a replica after every
//!    SCRAPES / ALLOCATIONS of them (default 10 000 Allocates); RSS every 10 %, then peak
//!    (the kernel's VmHWM) and final. The allocation counter in `/metrics` must match.
//!
//! The fixture has every telemetry field on every device (dcgm-exporter's default list and GPM
//! profiling); NAMES (`gpu-agent`, the default, `dcgm` or `both`) picks `--metrics-names`.
//!
//! `cargo bench --bench soak` (SCRAPES, ALLOCATIONS, STARTS to change the counts; NAMES)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu_agent::plugin::uds;
use gpu_agent::proto::podresources_v1::{
    pod_resources_lister_server::{PodResourcesLister, PodResourcesListerServer},
    AllocatableResourcesRequest, AllocatableResourcesResponse, GetPodResourcesRequest,
    GetPodResourcesResponse, ListPodResourcesRequest, ListPodResourcesResponse,
};
use gpu_agent::proto::v1beta1::{
    device_plugin_client::DevicePluginClient,
    registration_server::{Registration, RegistrationServer},
    AllocateRequest, ContainerAllocateRequest, Empty, RegisterRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

const TARGET_RSS_MIB: f64 = 12.0;
const TARGET_REGISTERED: Duration = Duration::from_millis(100);
/// Generous bound for anything expected within milliseconds.
const WAIT: Duration = Duration::from_secs(30);

struct PodResourcesStub(Arc<ListPodResourcesResponse>);

#[tonic::async_trait]
impl PodResourcesLister for PodResourcesStub {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        Ok(Response::new((*self.0).clone()))
    }
    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn get(
        &self,
        _: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
}

/// The test kubelet's Registration service: every Register call with the moment it arrived.
struct Kubelet(mpsc::UnboundedSender<(Instant, RegisterRequest)>);

#[tonic::async_trait]
impl Registration for Kubelet {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let _ = self.0.send((Instant::now(), request.into_inner()));
        Ok(Response::new(Empty {}))
    }
}

/// `VmRSS` or `VmHWM` (peak) of `pid`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A keep-alive HTTP/1.1 client for one path.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: &str) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    fn get(&mut self, path: &str, body: &mut Vec<u8>) -> std::io::Result<u16> {
        write!(
            self.reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n"
        )?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        body.resize(length, 0);
        self.reader.read_exact(body)?;
        Ok(status)
    }
}

fn scrape(addr: &str) -> String {
    let mut body = Vec::new();
    Client::connect(addr)
        .and_then(|mut c| c.get("/metrics", &mut body))
        .map(|_| String::from_utf8_lossy(&body).into_owned())
        .unwrap_or_default()
}

/// `--metrics-names` for the soak: NAMES, else gpu-agent's.
fn names() -> String {
    std::env::var("NAMES").unwrap_or_else(|_| "gpu-agent".to_string())
}

fn spawn_agent(dir: &Path, addr: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gpu-agent"))
        .arg("run")
        .args(["--backend", "mock", "--mock-fixture"])
        .arg(dir.join("fixture.yaml"))
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .arg("--device-plugin-dir")
        .arg(dir)
        .arg("--pod-resources-socket")
        .arg(dir.join("pod-resources.sock"))
        .arg("--cdi-spec-dir")
        .arg(dir.join("cdi"))
        .args([
            "--metrics-addr",
            addr,
            "--nfd-features-file",
            "",
            "--collect-interval",
            "100ms",
            "--metrics-names",
            &names(),
        ])
        // The default log level (info: a line per Allocate), written to /dev/null.
        .env_remove("RUST_LOG")
        .env_remove("CONFIG_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gpu-agent")
}

/// SIGTERM, then the exit status (killed after `WAIT`).
fn stop(mut agent: Child) -> Option<i32> {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe {
        libc::kill(agent.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = agent.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    None
}

fn main() {
    if !common::selected("soak") {
        return;
    }
    let scrapes = common::env_count("SCRAPES", 100_000).max(1);
    let allocations = common::env_count("ALLOCATIONS", 10_000).min(scrapes);
    let starts = common::env_count("STARTS", 5);

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("fixture.yaml"), common::fixture()).expect("write fixture");
    std::fs::write(dir.path().join("config.yaml"), common::CONFIG).expect("write config");

    // The stubs (kubelet, pod-resources) on a worker thread; this thread drives the client side.
    let (stubs, client_rt) = common::plugin::runtimes(1);
    let (registered_tx, mut registrations) = mpsc::unbounded_channel();
    {
        let _guard = stubs.enter();
        let answer = Arc::new(common::pods(&common::replica_ids()));
        let pods = tokio::net::UnixListener::bind(dir.path().join("pod-resources.sock"))
            .expect("bind pod-resources socket");
        stubs.spawn(
            tonic::transport::Server::builder()
                .add_service(PodResourcesListerServer::new(PodResourcesStub(answer)))
                .serve_with_incoming(UnixListenerStream::new(pods)),
        );
        let kubelet = tokio::net::UnixListener::bind(dir.path().join("kubelet.sock"))
            .expect("bind kubelet.sock");
        stubs.spawn(
            tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(Kubelet(registered_tx)))
                .serve_with_incoming(UnixListenerStream::new(kubelet)),
        );
    }
    let mut next_registration = || {
        client_rt
            .block_on(async { tokio::time::timeout(WAIT, registrations.recv()).await })
            .expect("no Register call from the agent")
            .expect("kubelet stub gone")
    };

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let addr = format!("127.0.0.1:{port}");

    // 1. Start -> registered.
    println!(
        "start -> Register call at the test kubelet ({starts} starts, release binary, mock backend, 8 GPUs x 7 MIG x 4 replicas, --metrics-names {}):",
        names()
    );
    let mut start_times = Vec::new();
    for _ in 0..starts {
        let started = Instant::now();
        let agent = spawn_agent(dir.path(), &addr);
        let (at, request) = next_registration();
        let took = at - started;
        start_times.push(took);
        let code = stop(agent);
        println!(
            "  {:>7.1} ms  ({}; exit {code:?} after SIGTERM)",
            took.as_secs_f64() * 1e3,
            request.resource_name
        );
        assert_eq!(code, Some(0), "the agent must exit 0 on SIGTERM");
    }

    // 2. The soak.
    let started = Instant::now();
    let agent = spawn_agent(dir.path(), &addr);
    let pid = agent.id();
    let (at, request) = next_registration();
    start_times.push(at - started);
    let mut plugin = client_rt
        .block_on(uds::connect(
            &dir.path().join(&request.endpoint),
            Duration::from_secs(5),
            None,
        ))
        .map(DevicePluginClient::new)
        .expect("dial the agent's plugin socket");
    let (mut stream, ids) = client_rt.block_on(async {
        let mut stream = plugin
            .list_and_watch(Empty {})
            .await
            .expect("ListAndWatch")
            .into_inner();
        let first = stream
            .message()
            .await
            .expect("ListAndWatch message")
            .expect("a first message");
        let ids: Vec<String> = first.devices.into_iter().map(|d| d.id).collect();
        (stream, ids)
    });
    assert!(!ids.is_empty(), "no devices advertised");

    let deadline = Instant::now() + WAIT;
    let mut text;
    loop {
        text = scrape(&addr);
        // gpu-agent's allocation series, or dcgm's device series carrying a pod.
        let ours = text
            .lines()
            .filter(|l| l.starts_with("gpu_container_allocation{"))
            .count();
        let dcgm = text
            .lines()
            .filter(|l| l.starts_with("DCGM_FI_DEV_SM_CLOCK{") && l.contains(",pod=\""))
            .count();
        if ours.max(dcgm) == common::CONTAINERS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never attributed {} containers",
            common::CONTAINERS
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    println!(
        "soak: {scrapes} scrapes of http://{addr}/metrics ({series} series, {} bytes each; a new connection every 1000) and {allocations} Allocates of 1 of {} {} devices, ListAndWatch held open",
        text.len(),
        ids.len(),
        request.resource_name,
    );
    println!("{:>8}  {:>8}  {:>9}", "scrapes", "allocs", "RSS MiB");
    let start_rss = status_kib(pid, "VmRSS:");
    println!("{:>8}  {:>8}  {:>9.2}", 0, 0, mib(start_rss));

    let every = (scrapes / allocations.max(1)).max(1);
    let mut allocated = 0usize;
    let mut samples = Vec::new();
    let mut body = Vec::new();
    let soak_started = Instant::now();
    let mut client = Client::connect(&addr).expect("connect");
    for i in 1..=scrapes {
        if i % 1000 == 0 {
            client = Client::connect(&addr).expect("reconnect");
        }
        let status = client.get("/metrics", &mut body).expect("scrape");
        assert_eq!(status, 200);
        if allocated < allocations && i % every == 0 {
            let id = ids[allocated % ids.len()].clone();
            client_rt
                .block_on(plugin.allocate(AllocateRequest {
                    container_requests: vec![ContainerAllocateRequest {
                        devices_ids: vec![id],
                    }],
                }))
                .expect("Allocate");
            allocated += 1;
        }
        if i % (scrapes / 10).max(1) == 0 {
            let rss = status_kib(pid, "VmRSS:");
            samples.push(rss);
            println!("{i:>8}  {allocated:>8}  {:>9.2}", mib(rss));
        }
    }
    let elapsed = soak_started.elapsed();
    let end_rss = status_kib(pid, "VmRSS:");
    let peak = status_kib(pid, "VmHWM:");

    // The agent counted every Allocate, and the kubelet's stream is still open.
    let text = scrape(&addr);
    let counted = text
        .lines()
        .find(|l| {
            l.starts_with("gpu_agent_allocations_total{")
                && l.contains(&format!("resource=\"{}\"", request.resource_name))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(-1.0);
    assert_eq!(
        counted as usize, allocated,
        "gpu_agent_allocations_total disagrees"
    );
    let stream_state = match client_rt
        .block_on(async { tokio::time::timeout(Duration::from_millis(50), stream.message()).await })
    {
        Err(_) => "still open",
        Ok(Ok(Some(_))) => "open (sent an update)",
        Ok(_) => "ENDED",
    };

    start_times.sort();
    let median = start_times[start_times.len() / 2];
    let first_tenth = samples.first().copied().unwrap_or(start_rss);
    println!(
        "RSS: start {:.2} MiB, after 10% {:.2} MiB, final {:.2} MiB, peak (VmHWM) {:.2} MiB; growth from 10% to the end {:+.2} MiB (target <= {TARGET_RSS_MIB} MiB and flat: {})",
        mib(start_rss),
        mib(first_tenth),
        mib(end_rss),
        mib(peak),
        mib(end_rss) - mib(first_tenth),
        if mib(peak) <= TARGET_RSS_MIB { "met" } else { "MISSED" },
    );
    println!(
        "start -> registered: median {:.1} ms, min {:.1} ms, max {:.1} ms over {} starts (target <= {TARGET_REGISTERED:?}: {})",
        median.as_secs_f64() * 1e3,
        start_times[0].as_secs_f64() * 1e3,
        start_times[start_times.len() - 1].as_secs_f64() * 1e3,
        start_times.len(),
        if median <= TARGET_REGISTERED { "met" } else { "MISSED" },
    );
    println!(
        "{:.1} µs per scrape over HTTP (with the Allocates); {allocated} allocations counted by the agent; ListAndWatch stream {}",
        elapsed.as_secs_f64() * 1e6 / scrapes as f64,
        stream_state,
    );
    let code = stop(agent);
    println!("exit after SIGTERM: {code:?}");
    assert_eq!(code, Some(0), "the agent must exit 0 on SIGTERM");
}
