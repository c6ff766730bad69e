//! Resident memory of the running agent over 100 000 scrapes of `/metrics` (target: ≤ 12 MiB,
//! flat). The agent runs on the mock backend with the bench node (8 GPUs × 7 MIG devices) and a
//! pod-resources stub reporting 200 containers, collecting every 100 ms (the shortest interval)
//! so that scrapes keep rendering new samples.
//!
//! `cargo bench --bench scrape_rss` (SCRAPES=n to change the count)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu_agent::proto::podresources_v1::{
    pod_resources_lister_server::{PodResourcesLister, PodResourcesListerServer},
    AllocatableResourcesRequest, AllocatableResourcesResponse, GetPodResourcesRequest,
    GetPodResourcesResponse, ListPodResourcesRequest, ListPodResourcesResponse,
};
use tonic::{Request, Response, Status};

struct Stub(Arc<ListPodResourcesResponse>);

#[tonic::async_trait]
impl PodResourcesLister for Stub {
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

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
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

fn spawn_agent(dir: &Path, addr: &str) -> Child {
    let fixture = dir.join("fixture.yaml");
    let config = dir.join("config.yaml");
    std::fs::write(&fixture, common::fixture()).expect("write fixture");
    std::fs::write(&config, common::CONFIG).expect("write config");
    Command::new(env!("CARGO_BIN_EXE_gpu-agent"))
        .arg("run")
        .args(["--backend", "mock", "--mock-fixture"])
        .arg(&fixture)
        .arg("--config")
        .arg(&config)
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
        ])
        .env("RUST_LOG", "warn")
        .env_remove("CONFIG_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gpu-agent")
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that does not name us means another bench was asked for.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "scrape_rss".contains(a.as_str())) {
        return;
    }
    let scrapes: usize = std::env::var("SCRAPES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let answer = Arc::new(common::pods(&common::replica_ids()));
    let socket = dir.path().join("pod-resources.sock");
    let listener = runtime
        .block_on(async { tokio::net::UnixListener::bind(&socket) })
        .expect("bind pod-resources socket");
    let server = runtime.spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(PodResourcesListerServer::new(Stub(answer)))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await;
    });
    // Serve the stub from a thread while this one scrapes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let stub_thread = std::thread::spawn(move || {
        runtime.block_on(async {
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            server.abort();
        })
    });

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let addr = format!("127.0.0.1:{port}");
    let mut agent = spawn_agent(dir.path(), &addr);
    let pid = agent.id();

    let mut body = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attributed = Client::connect(&addr)
            .and_then(|mut c| c.get("/metrics", &mut body))
            .map(|_| {
                String::from_utf8_lossy(&body)
                    .lines()
                    .filter(|l| l.starts_with("gpu_container_allocation{"))
                    .count()
            })
            .unwrap_or(0);
        if attributed == common::CONTAINERS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never attributed {} containers",
            common::CONTAINERS
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let series = String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    println!(
        "scraping {addr} {scrapes} times: {series} series, {} bytes per scrape; a new connection every 1000 scrapes",
        body.len()
    );
    println!("{:>8}  {:>9}", "scrapes", "RSS MiB");
    let start_rss = rss_kib(pid);
    println!("{:>8}  {:>9.2}", 0, start_rss as f64 / 1024.0);
    let mut peak = start_rss;
    let started = Instant::now();
    let mut client = Client::connect(&addr).expect("connect");
    for i in 1..=scrapes {
        if i % 1000 == 0 {
            client = Client::connect(&addr).expect("reconnect");
        }
        let status = client.get("/metrics", &mut body).expect("scrape");
        assert_eq!(status, 200);
        if i % (scrapes / 10).max(1) == 0 {
            let rss = rss_kib(pid);
            peak = peak.max(rss);
            println!("{i:>8}  {:>9.2}", rss as f64 / 1024.0);
        }
    }
    let elapsed = started.elapsed();
    let end_rss = rss_kib(pid);
    println!(
        "RSS start {:.2} MiB, end {:.2} MiB, peak {:.2} MiB (target <= 12 MiB, flat); {:.1} us per scrape over HTTP",
        start_rss as f64 / 1024.0,
        end_rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        elapsed.as_secs_f64() * 1e6 / scrapes as f64
    );
    let _ = agent.kill();
    let _ = agent.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = stub_thread.join();
}
