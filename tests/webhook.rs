//! `gpu-agent webhook`, the real binary, over real TLS: AdmissionReview v1 in, JSON patch out,
//! pass-through and malformed requests, certificate and catalog reloads, start-up errors, and
//! the limits that keep it up under attack (slow and oversized bodies, connection floods, HTTP/2).

mod common;
#[path = "common/limits.rs"]
mod limits;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{
    arg, list_json_text, replace_file, run_cli, send_signal, wait_exit, write_file, WAIT,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use limits::{hwm_kib, raise_fd_limit, read_to_close, rss_kib, sockets};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A self-signed certificate for `localhost` / 127.0.0.1: (cert PEM, key PEM, cert DER).
fn self_signed() -> (String, String, CertificateDer<'static>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("generate a certificate");
    (cert.pem(), signing_key.serialize_pem(), cert.der().clone())
}

const CATALOG: &str = r#"
resources:
  - {name: nvidia.com/gpu, strategy: exclusive, memoryMiB: 81559, count: 8}
  - {name: nvidia.com/mig-1g.10gb, strategy: mig, memoryMiB: 9984, count: 14}
  - {name: nvidia.com/mig-3g.40gb, strategy: mig, memoryMiB: 40448, count: 2}
"#;

/// The webhook binary, running, with its files in a temp dir.
struct Webhook {
    child: Child,
    log: PathBuf,
    addr: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    catalog: PathBuf,
}

impl Webhook {
    /// Write a certificate (returned, to trust) and `catalog`, start the webhook on a free port.
    fn start(dir: &Path, catalog: &str) -> (Self, CertificateDer<'static>) {
        Self::start_with_env(dir, catalog, &[])
    }

    /// [`Webhook::start`] with `env` set (the test-only limit overrides).
    fn start_with_env(
        dir: &Path,
        catalog: &str,
        env: &[(&str, &str)],
    ) -> (Self, CertificateDer<'static>) {
        let (cert_pem, key_pem, der) = self_signed();
        let cert = write_file(dir, "tls.crt", &cert_pem);
        let key = write_file(dir, "tls.key", &key_pem);
        let catalog_path = write_file(dir, "catalog.yaml", catalog);
        let log = dir.join("webhook.log");
        let child = Command::new(env!("CARGO_BIN_EXE_gpu-agent"))
            .arg("webhook")
            .args(["--listen-addr", "127.0.0.1:0", "--log-format", "json"])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--catalog")
            .arg(&catalog_path)
            .env("RUST_LOG", "info")
            .env_remove("GPU_AGENT_WEBHOOK_CONFIG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn gpu-agent webhook");
        let mut webhook = Self {
            child,
            log,
            addr: "127.0.0.1:0".parse().unwrap(),
            cert,
            key,
            catalog: catalog_path,
        };
        webhook.addr = webhook.wait_listening();
        (webhook, der)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address from the `webhook listening` log line (JSON logs).
    fn wait_listening(&mut self) -> SocketAddr {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            for line in self.logs().lines() {
                let Ok(event) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                if let Some(addr) = event.get("addr").and_then(Value::as_str) {
                    return addr.parse().expect("a socket address");
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("webhook exited with {status}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("webhook did not start listening:\n{}", self.logs());
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- webhook log ---\n{}", self.logs());
        }
    }
}

struct Reply {
    status: u16,
    body: Vec<u8>,
    /// The leaf certificate the server presented.
    peer: CertificateDer<'static>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A TLS connection to `addr`, trusting only `trusted`, offering `alpn` (none when empty).
async fn connect_tls(
    addr: SocketAddr,
    trusted: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone()).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")?;
    tokio::time::timeout(
        WAIT,
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake timed out")
}

/// One HTTPS request on a fresh connection (so each sees the certificate current then),
/// trusting only `trusted`.
async fn send(
    addr: SocketAddr,
    trusted: &[CertificateDer<'static>],
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Reply {
    let tls = connect_tls(addr, trusted, &[])
        .await
        .expect("TLS handshake");
    let peer = tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("response timed out")
        .expect("response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Reply { status, body, peer }
}

/// `GET path` over HTTPS, trusting `trusted`.
async fn get(addr: SocketAddr, trusted: &CertificateDer<'static>, path: &str) -> Reply {
    send(addr, std::slice::from_ref(trusted), "GET", path, Vec::new()).await
}

async fn mutate(addr: SocketAddr, trusted: &CertificateDer<'static>, review: &Value) -> Value {
    let reply = send(
        addr,
        std::slice::from_ref(trusted),
        "POST",
        "/mutate",
        review.to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let doc = reply.json();
    assert_eq!(doc["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(doc["kind"], "AdmissionReview");
    doc["response"].clone()
}

fn review(uid: &str, pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "ml",
            "object": pod,
        }
    })
}

fn pod(annotations: Value, container: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "trainer", "namespace": "ml", "annotations": annotations},
        "spec": {"containers": [container, {"name": "sidecar", "image": "busybox"}]}
    })
}

fn patch_ops(response: &Value) -> Vec<Value> {
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a patch"))
        .expect("base64");
    serde_json::from_slice(&bytes).expect("a JSON patch")
}

#[tokio::test]
async fn mutates_annotated_pods_passes_others_and_refuses_malformed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (webhook, cert) = Webhook::start(dir.path(), CATALOG);
    let addr = webhook.addr;

    let health = get(addr, &cert, "/healthz").await;
    assert_eq!((health.status, health.body.as_slice()), (200, &b"ok\n"[..]));

    // Inference needing 8 GiB: MIG, smallest profile that holds it.
    let annotations =
        json!({"gpu.ml.io/workload-type": "inference", "gpu.ml.io/gpu-memory": "8Gi"});
    let r = mutate(
        addr,
        &cert,
        &review(
            "uid-1",
            pod(annotations.clone(), json!({"name": "main", "image": "x"})),
        ),
    )
    .await;
    assert_eq!(r["uid"], "uid-1");
    assert_eq!(r["allowed"], true);
    let ops = patch_ops(&r);
    assert_eq!(ops.len(), 2);
    assert_eq!(
        ops[0],
        json!({"op": "add", "path": "/spec/containers/0/resources",
               "value": {"limits": {"nvidia.com/mig-1g.10gb": "1"}}})
    );
    assert_eq!(ops[1]["op"], "add");
    assert_eq!(ops[1]["path"], "/metadata/annotations/gpu.ml.io~1decision");
    let decision: Value = serde_json::from_str(ops[1]["value"].as_str().unwrap()).unwrap();
    assert_eq!(decision["strategy"], "mig");
    assert_eq!(decision["resource"], "nvidia.com/mig-1g.10gb");
    assert_eq!(decision["fallback"], false);
    assert!(decision["reason"].as_str().unwrap().contains("rule 3"));

    // Training needing 24 GiB, with limits already there: one op into the existing map.
    let r = mutate(
        addr,
        &cert,
        &review(
            "uid-2",
            pod(
                json!({"gpu.ml.io/workload-type": "training", "gpu.ml.io/gpu-memory": "24Gi"}),
                json!({"name": "main", "resources": {"limits": {"memory": "64Gi"}}}),
            ),
        ),
    )
    .await;
    assert_eq!(
        patch_ops(&r)[0],
        json!({"op": "add", "path": "/spec/containers/0/resources/limits/nvidia.com~1gpu", "value": "1"})
    );

    // Pass-through: no annotations; annotations but a GPU already requested.
    for (uid, pod) in [
        ("uid-3", pod(json!({"team": "ml"}), json!({"name": "main"}))),
        (
            "uid-4",
            pod(
                annotations.clone(),
                json!({"name": "main", "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}),
            ),
        ),
    ] {
        let r = mutate(addr, &cert, &review(uid, pod)).await;
        assert_eq!(r["uid"], uid);
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none(), "{r}");
    }

    // A bad quantity is refused with the annotation named.
    let r = mutate(
        addr,
        &cert,
        &review(
            "uid-5",
            pod(
                json!({"gpu.ml.io/workload-type": "inference", "gpu.ml.io/gpu-memory": "eight"}),
                json!({"name": "main"}),
            ),
        ),
    )
    .await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 400);
    assert_eq!(
        r["status"]["message"],
        "metadata.annotations[gpu.ml.io/gpu-memory]: expected a number, e.g. 3Gi, got \"eight\""
    );

    // Nothing fits: refused with the reason.
    let r = mutate(
        addr,
        &cert,
        &review(
            "uid-6",
            pod(
                json!({"gpu.ml.io/workload-type": "training", "gpu.ml.io/gpu-memory": "200Gi"}),
                json!({"name": "main"}),
            ),
        ),
    )
    .await;
    assert_eq!(r["allowed"], false);
    assert!(r["status"]["message"]
        .as_str()
        .unwrap()
        .ends_with("nothing fits"));

    // Not JSON, and JSON that is not a v1 review: a well-formed refusal, HTTP 200.
    for (body, message) in [
        (&b"{\"apiVersion\": "[..], "the request body is not JSON"),
        (
            &br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "old"}}"#[..],
            "expected an AdmissionReview of apiVersion admission.k8s.io/v1",
        ),
    ] {
        let reply = send(addr, std::slice::from_ref(&cert), "POST", "/mutate", body.to_vec()).await;
        assert_eq!(reply.status, 200);
        let doc = reply.json();
        assert_eq!(doc["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(doc["response"]["allowed"], false);
        assert_eq!(doc["response"]["status"]["code"], 400);
        assert!(
            doc["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .starts_with(message),
            "{doc}"
        );
    }

    // Unknown paths are 404, and the server is still up after all of the above.
    assert_eq!(get(addr, &cert, "/metrics").await.status, 404);
    assert_eq!(get(addr, &cert, "/healthz").await.status, 200);
}

#[tokio::test]
async fn a_renewed_certificate_is_served_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (webhook, first) = Webhook::start(dir.path(), CATALOG);
    let (pem2, key2, second) = self_signed();
    let both = [first.clone(), second.clone()];

    let reply = send(webhook.addr, &both, "GET", "/healthz", Vec::new()).await;
    assert_eq!(reply.peer, first);

    // Renewal: key first, then the certificate (in between the pair does not match; the
    // webhook keeps the old pair until both are in place). Files are re-loaded in the
    // background: the new certificate is served within a few polls.
    replace_file(&webhook.key, &key2);
    replace_file(&webhook.cert, &pem2);
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = send(webhook.addr, &both, "GET", "/healthz", Vec::new()).await;
        assert_eq!(reply.status, 200);
        if reply.peer == second {
            break;
        }
        assert_eq!(reply.peer, first, "only the old or the renewed certificate");
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken certificate file: once the webhook has tried it (the log says so), the last
    // good one is still served.
    let refusals = || webhook.logs().matches("keeping the previous one").count();
    let before = refusals();
    replace_file(&webhook.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n");
    common::eventually("the broken certificate to be refused", || {
        refusals() > before
    })
    .await;
    let reply = send(webhook.addr, &both, "GET", "/healthz", Vec::new()).await;
    assert_eq!(reply.peer, second);
}

#[tokio::test]
async fn a_list_document_is_a_catalog_and_catalog_changes_apply() {
    // The catalog is what `gpu-agent list --output json` prints for a MIG node pool.
    let dir = tempfile::tempdir().unwrap();
    let fixture = write_file(
        dir.path(),
        "fixture.yaml",
        "gpus:\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb]}}\n",
    );
    let listed = list_json_text(&["--mock-fixture", arg(&fixture), "--mig-strategy", "mixed"]);
    let (webhook, cert) = Webhook::start(dir.path(), &listed);

    let small = review(
        "uid-1",
        pod(
            json!({"gpu.ml.io/workload-type": "data-processing", "gpu.ml.io/gpu-memory": "16Gi"}),
            json!({"name": "main"}),
        ),
    );
    let r = mutate(webhook.addr, &cert, &small).await;
    assert_eq!(
        patch_ops(&r)[0]["value"],
        json!({"limits": {"nvidia.com/mig-2g.20gb": "1"}})
    );

    // The pool loses MIG: once the catalog is re-loaded (in the background, within a few
    // polls), reviews fall back to whole GPUs, with a warning.
    replace_file(
        &webhook.catalog,
        "resources: [{name: nvidia.com/gpu, strategy: exclusive, memoryMiB: 81559, count: 2}]",
    );
    let deadline = Instant::now() + WAIT;
    let r = loop {
        let r = mutate(webhook.addr, &cert, &small).await;
        if patch_ops(&r)[0]["value"] != json!({"limits": {"nvidia.com/mig-2g.20gb": "1"}}) {
            break r;
        }
        assert!(Instant::now() < deadline, "the new catalog never applies");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        patch_ops(&r)[0]["value"],
        json!({"limits": {"nvidia.com/gpu": "1"}})
    );
    assert_eq!(
        r["warnings"],
        json!(["gpu.ml.io: no mig resource fits, using exclusive nvidia.com/gpu"])
    );
}

#[test]
fn start_up_errors_exit_2_with_the_file_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem, _) = self_signed();
    let cert = write_file(dir.path(), "tls.crt", &cert_pem);
    let key = write_file(dir.path(), "tls.key", &key_pem);
    let good = write_file(dir.path(), "catalog.yaml", CATALOG);
    let bad = write_file(
        dir.path(),
        "bad.yaml",
        "resources: [{name: nvidia.com/gpu, strategy: whole, memoryMiB: 1}]",
    );
    let missing = dir.path().join("missing.pem");
    let run = |catalog: &Path, cert: &Path| {
        run_cli(&[
            "webhook",
            "--listen-addr",
            "127.0.0.1:0",
            "--catalog",
            arg(catalog),
            "--tls-cert-file",
            arg(cert),
            "--tls-key-file",
            arg(&key),
        ])
    };

    let (code, _, err) = run(&bad, &cert);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("resources[0].strategy: must be exclusive, shared (or time-sliced), mig or vgpu, got \"whole\""),
        "{err}"
    );
    let (code, _, err) = run(&good, &missing);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot read TLS certificate"), "{err}");
    assert!(err.contains("missing.pem"), "{err}");
    // A key that belongs to another certificate.
    let (other_pem, _, _) = self_signed();
    let other = write_file(dir.path(), "other.crt", &other_pem);
    let (code, _, err) = run(&good, &other);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used together"), "{err}");
}

#[test]
fn sigterm_stops_it_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let (mut webhook, _) = Webhook::start(dir.path(), CATALOG);
    send_signal(&webhook.child, libc::SIGTERM);
    let status = wait_exit(&mut webhook.child, WAIT).expect("webhook did not stop on SIGTERM");
    assert!(status.success(), "{status}");
}

// ---- Limits (issue 15): one test per attack, each asserting the bound it proves. ----

/// The body timeout the limit tests give the webhook.
const BODY_TIMEOUT: Duration = Duration::from_millis(500);
/// Scheduling noise allowed past a timeout on a loaded CI machine.
const SLACK: Duration = Duration::from_secs(2);

/// A POST /mutate head declaring `length` bytes of body (chunked when None).
fn post_head(length: Option<usize>) -> Vec<u8> {
    let framing = match length {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_string(),
    };
    format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    )
    .into_bytes()
}

/// Send a chunked body of `total` bytes (64 KiB chunks) after the head, while reading the answer
/// until the webhook closes; the answer.
async fn post_chunked(addr: SocketAddr, cert: &CertificateDer<'static>, total: usize) -> Vec<u8> {
    let tls = connect_tls(addr, std::slice::from_ref(cert), &[])
        .await
        .expect("TLS handshake");
    let (mut reader, mut writer) = tokio::io::split(tls);
    let sender = tokio::spawn(async move {
        let chunk = vec![b' '; 64 << 10];
        let mut sent = 0;
        writer.write_all(&post_head(None)).await?;
        while sent < total {
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            writer.write_all(&chunk).await?;
            writer.write_all(b"\r\n").await?;
            sent += chunk.len();
        }
        writer.write_all(b"0\r\n\r\n").await?;
        writer.flush().await
    });
    let answer = read_to_close(&mut reader, WAIT).await;
    // The webhook stops reading at the cap: the rest of the upload fails, as it should.
    let _ = sender.await;
    answer
}

#[tokio::test]
async fn a_slow_body_is_answered_408_within_the_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (webhook, cert) = Webhook::start_with_env(
        dir.path(),
        CATALOG,
        &[("GPU_AGENT_TEST_HTTP_BODY_TIMEOUT_MS", "500")],
    );
    let tls = connect_tls(webhook.addr, &[cert], &[]).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    // A byte every 50 ms: never idle, never done. The timeout bounds the whole body.
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        writer.write_all(&post_head(Some(1000))).await?;
        loop {
            writer.write_all(b" ").await?;
            writer.flush().await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let answer = read_to_close(&mut reader, BODY_TIMEOUT + SLACK).await;
    let after = started.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("the request body did not arrive within 500ms"),
        "{text}"
    );
    assert!(
        after >= BODY_TIMEOUT.mul_f64(0.9),
        "answered after {after:?}"
    );
    assert!(after <= BODY_TIMEOUT + SLACK, "answered after {after:?}");
}

#[tokio::test]
async fn bodies_over_3_mib_get_413_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (webhook, cert) = Webhook::start(dir.path(), CATALOG);
    let pid = webhook.child.id();
    assert_eq!(get(webhook.addr, &cert, "/healthz").await.status, 200);

    // Declared 4 MiB: refused from the head, nothing read.
    let peak = hwm_kib(pid);
    let mut tls = connect_tls(webhook.addr, std::slice::from_ref(&cert), &[])
        .await
        .unwrap();
    tls.write_all(&post_head(Some(4 << 20))).await.unwrap();
    tls.flush().await.unwrap();
    let answer = read_to_close(&mut tls, WAIT).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.contains("over 3145728 bytes (3 MiB, the API server's own limit)"),
        "{text}"
    );
    let grown = hwm_kib(pid).saturating_sub(peak);
    assert!(
        grown <= 1024,
        "peak RSS grew {grown} KiB for a refused head"
    );
    eprintln!("declared 4 MiB: peak RSS +{grown} KiB");

    // 4 MiB without a declared length: read up to the cap, then refused.
    let peak = hwm_kib(pid);
    let answer = post_chunked(webhook.addr, &cert, 4 << 20).await;
    assert!(answer.starts_with(b"HTTP/1.1 413"), "{answer:?}");
    let grown = hwm_kib(pid).saturating_sub(peak);
    assert!(
        grown <= 5 << 10,
        "peak RSS grew {grown} KiB for one 4 MiB body (cap 3 MiB)"
    );
    eprintln!("chunked 4 MiB: peak RSS +{grown} KiB");

    // The issue's case: four 8 MiB bodies at once (334 MiB before). Each holds at most the cap.
    let peak = hwm_kib(pid);
    let answers = futures_join((0..4).map(|_| {
        let cert = cert.clone();
        let addr = webhook.addr;
        async move { post_chunked(addr, &cert, 8 << 20).await }
    }))
    .await;
    for answer in answers {
        assert!(answer.starts_with(b"HTTP/1.1 413"), "{answer:?}");
    }
    let grown = hwm_kib(pid).saturating_sub(peak);
    assert!(
        grown <= 16 << 10,
        "peak RSS grew {grown} KiB for four 8 MiB bodies (4 x 3 MiB cap)"
    );
    eprintln!("four chunked 8 MiB at once: peak RSS +{grown} KiB");
    eprintln!("RSS {} KiB, peak {} KiB", rss_kib(pid), hwm_kib(pid));

    // Still serving.
    assert_eq!(get(webhook.addr, &cert, "/healthz").await.status, 200);
}

#[tokio::test]
async fn a_review_just_under_the_cap_is_reviewed() {
    let dir = tempfile::tempdir().unwrap();
    let (webhook, cert) = Webhook::start(dir.path(), CATALOG);
    // A pod with a 2.5 MiB annotation: large, but within what the API server sends.
    let annotations = json!({
        "gpu.ml.io/workload-type": "inference",
        "gpu.ml.io/gpu-memory": "8Gi",
        "example.com/blob": "x".repeat(5 << 19),
    });
    let body = review("uid-big", pod(annotations, json!({"name": "main"})));
    assert!(body.to_string().len() > 5 << 19);
    let r = mutate(webhook.addr, &cert, &body).await;
    assert_eq!(r["uid"], "uid-big");
    assert_eq!(
        patch_ops(&r)[0]["value"],
        json!({"limits": {"nvidia.com/mig-1g.10gb": "1"}})
    );

    // Four of them at once (one 8 MiB body used to peak at 152 MiB, four at 334 MiB): every one
    // reviewed, and the webhook stays far inside its 128 Mi limit.
    let pid = webhook.child.id();
    let peak_before = hwm_kib(pid);
    let replies = futures_join((0..4).map(|i| {
        let (cert, addr) = (cert.clone(), webhook.addr);
        let mut body = body.clone();
        body["request"]["uid"] = json!(format!("uid-big-{i}"));
        async move { mutate(addr, &cert, &body).await }
    }))
    .await;
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["uid"], format!("uid-big-{i}"));
        assert_eq!(r["allowed"], true);
    }
    let peak = hwm_kib(pid);
    eprintln!(
        "four 2.5 MiB reviews at once: peak RSS {} KiB (before {peak_before} KiB)",
        peak
    );
    assert!(
        peak <= 64 << 10,
        "peak RSS {peak} KiB for four 2.5 MiB reviews"
    );
}

#[tokio::test]
async fn over_the_cap_reviews_still_answer() {
    raise_fd_limit();
    const CAP: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let (webhook, cert) = Webhook::start_with_env(
        dir.path(),
        CATALOG,
        &[("GPU_AGENT_TEST_HTTP_MAX_CONNECTIONS", "8")],
    );
    let pid = webhook.child.id();
    assert_eq!(get(webhook.addr, &cert, "/healthz").await.status, 200);
    let before = sockets(pid);
    // 200 connections that never start TLS, and 20 idle after it.
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(TcpStream::connect(webhook.addr).await.unwrap());
    }
    let mut idle = Vec::new();
    for _ in 0..20 {
        if let Ok(tls) = connect_tls(webhook.addr, std::slice::from_ref(&cert), &[]).await {
            idle.push(tls);
        }
    }
    let annotations =
        json!({"gpu.ml.io/workload-type": "inference", "gpu.ml.io/gpu-memory": "8Gi"});
    for i in 0..5 {
        let started = Instant::now();
        let uid = format!("uid-{i}");
        let r = mutate(
            webhook.addr,
            &cert,
            &review(&uid, pod(annotations.clone(), json!({"name": "main"}))),
        )
        .await;
        assert_eq!(r["uid"], uid.as_str());
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "a review took {took:?}");
    }
    let during = sockets(pid);
    assert!(
        during <= before + CAP + 1,
        "{during} sockets during the flood, {before} before, cap {CAP}"
    );
    drop((flood, idle));
}

#[tokio::test]
async fn only_http_1_1_is_negotiated() {
    let dir = tempfile::tempdir().unwrap();
    let (webhook, cert) = Webhook::start(dir.path(), CATALOG);
    let trusted = std::slice::from_ref(&cert);
    assert!(
        connect_tls(webhook.addr, trusted, &[b"h2"]).await.is_err(),
        "a client that only speaks HTTP/2 is refused at the handshake"
    );
    let tls = connect_tls(webhook.addr, trusted, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
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
