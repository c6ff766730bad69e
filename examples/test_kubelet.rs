//! A kubelet stand-in for demos and hardware checks: serves `Registration` on
//! `<dir>/kubelet.sock`, and for every plugin that registers, opens ListAndWatch and prints each
//! device list as one JSON line. With `--allocate N` it then allocates the first N healthy devices
//! of each resource and prints the response.
//!
//! ```sh
//! cargo run --example test_kubelet -- --dir /tmp/gpu-agent-demo --allocate 1
//! ```

use std::path::PathBuf;
use std::time::Duration;

use gpu_agent::plugin::uds;
use gpu_agent::proto::v1beta1::{
    device_plugin_client::DevicePluginClient,
    registration_server::{Registration, RegistrationServer},
    AllocateRequest, ContainerAllocateRequest, Empty, RegisterRequest,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

struct Kubelet {
    dir: PathBuf,
    allocate: usize,
}

#[tonic::async_trait]
impl Registration for Kubelet {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        println!(
            "{}",
            serde_json::json!({"event": "register", "resource": r.resource_name, "endpoint": r.endpoint, "version": r.version})
        );
        let socket = self.dir.join(&r.endpoint);
        let allocate = self.allocate;
        tokio::spawn(async move { watch(socket, r.resource_name, allocate).await });
        Ok(Response::new(Empty {}))
    }
}

async fn watch(socket: PathBuf, resource: String, allocate: usize) {
    let channel = match uds::connect(&socket, Duration::from_secs(5), None).await {
        Ok(c) => c,
        Err(e) => return eprintln!("cannot connect to {}: {e}", socket.display()),
    };
    let mut client = DevicePluginClient::new(channel);
    let mut stream = match client.list_and_watch(Empty {}).await {
        Ok(s) => s.into_inner(),
        Err(e) => return eprintln!("ListAndWatch on {resource}: {e}"),
    };
    let mut allocated = false;
    while let Ok(Some(list)) = stream.message().await {
        let devices: Vec<_> = list
            .devices
            .iter()
            .map(|d| serde_json::json!({"id": d.id, "health": d.health}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"event": "list", "resource": resource, "devices": devices})
        );
        if allocate > 0 && !allocated {
            allocated = true;
            let ids: Vec<String> = list
                .devices
                .iter()
                .filter(|d| d.health == "Healthy")
                .take(allocate)
                .map(|d| d.id.clone())
                .collect();
            let request = AllocateRequest {
                container_requests: vec![ContainerAllocateRequest {
                    devices_ids: ids.clone(),
                }],
            };
            match client.allocate(request).await {
                Ok(r) => {
                    let c = &r.into_inner().container_responses[0];
                    println!(
                        "{}",
                        serde_json::json!({"event": "allocate", "resource": resource, "devices": ids, "envs": c.envs, "cdiDevices": c.cdi_devices.iter().map(|d| &d.name).collect::<Vec<_>>()})
                    );
                }
                Err(e) => println!(
                    "{}",
                    serde_json::json!({"event": "allocate-error", "resource": resource, "error": e.message()})
                ),
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({"event": "stream-closed", "resource": resource})
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut dir = PathBuf::from("/tmp/gpu-agent-demo");
    let mut allocate = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = PathBuf::from(args.next().ok_or("--dir needs a value")?),
            "--allocate" => allocate = args.next().ok_or("--allocate needs a value")?.parse()?,
            other => {
                return Err(
                    format!("unknown argument {other:?} (use --dir DIR, --allocate N)").into(),
                )
            }
        }
    }
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("kubelet.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    eprintln!("test kubelet listening on {}", socket.display());
    tonic::transport::Server::builder()
        .add_service(RegistrationServer::new(Kubelet { dir, allocate }))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
