//! The agent as the kubelet sees it: registration, ListAndWatch, Allocate, errors, restarts,
//! SIGTERM — over real unix sockets, against the real binary on the mock backend.

mod common;

use std::time::Duration;

use common::*;
use gpu_agent::proto::v1beta1::{
    device_plugin_client::DevicePluginClient, AllocateRequest, ContainerAllocateRequest, Empty,
    PreStartContainerRequest,
};
use tonic::transport::Channel;

const GPU: &str = "nvidia.com/gpu";
const GPU_ENDPOINT: &str = "gpu-agent-nvidia.com_gpu.sock";

#[tokio::test]
async fn registers_lists_and_allocates_whole_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let (kubelet, _agent, reg) = start_registered(dir.path(), &[]).await;
    assert_eq!(reg.version, "v1beta1");
    assert_eq!(reg.resource_name, "nvidia.com/gpu");
    assert_eq!(reg.endpoint, GPU_ENDPOINT);
    let options = reg.options.expect("options");
    assert!(options.get_preferred_allocation_available);
    assert!(!options.pre_start_required);

    let mut plugin = kubelet.plugin(&reg.endpoint).await;
    let served = plugin
        .get_device_plugin_options(Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served, options);

    let mut stream = list_and_watch(&mut plugin).await;
    let first = next_list(&mut stream).await;
    assert_eq!(first.devices.len(), 8);
    assert!(first.devices.iter().all(|d| d.health == "Healthy"));
    assert!(first.devices.iter().all(|d| d.id.starts_with("GPU-")));
    let numa: Vec<i64> = first
        .devices
        .iter()
        .map(|d| d.topology.as_ref().unwrap().nodes[0].id)
        .collect();
    assert_eq!(numa, [0, 0, 0, 0, 1, 1, 1, 1]);

    let ids: Vec<String> = first.devices.iter().map(|d| d.id.clone()).collect();
    let response = plugin
        .allocate(AllocateRequest {
            container_requests: vec![
                ContainerAllocateRequest {
                    devices_ids: vec![ids[0].clone(), ids[3].clone()],
                },
                ContainerAllocateRequest {
                    devices_ids: vec![ids[7].clone()],
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.container_responses.len(), 2);
    assert_eq!(
        response.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"],
        format!("{},{}", ids[0], ids[3])
    );
    assert_eq!(
        response.container_responses[1].envs["NVIDIA_VISIBLE_DEVICES"],
        ids[7]
    );

    let chosen = preferred(&mut plugin, &ids, &ids[5..6], 2).await;
    assert_eq!(chosen.len(), 2);
    assert!(chosen.contains(&ids[5]));
    assert!(chosen.iter().all(|id| ids.contains(id)));

    plugin
        .pre_start_container(PreStartContainerRequest {
            devices_ids: vec![ids[0].clone()],
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn unknown_device_ids_are_invalid_argument_naming_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let (kubelet, _agent, reg) = start_registered(dir.path(), &[]).await;
    let mut plugin = kubelet.plugin(&reg.endpoint).await;

    let status = allocate(&mut plugin, &["GPU-nope"]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("GPU-nope"),
        "{}",
        status.message()
    );

    // The server is still there afterwards.
    plugin.get_device_plugin_options(Empty {}).await.unwrap();
}

#[tokio::test]
async fn sigterm_removes_the_socket_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (kubelet, mut agent, reg) = start_registered(dir.path(), &[]).await;
    let plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    let socket = kubelet.dir().join(GPU_ENDPOINT);
    assert!(socket.exists());

    agent.signal(libc::SIGTERM);
    // The kubelet's stream ends cleanly (status OK), not with a broken connection.
    let end = plugin.ended().await;
    assert_eq!(end, Ok(()), "the stream did not end cleanly");
    let status = agent
        .wait_exit(WAIT)
        .expect("agent did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "logs:\n{}", agent.logs());
    assert!(!socket.exists(), "plugin socket left behind");
    assert!(
        kubelet.violations().is_empty(),
        "{:?}",
        kubelet.violations()
    );
}

/// The quick start's order: the agent first, before the kubelet has even created the
/// device-plugin directory. One warning, no error, and it registers once the kubelet starts.
#[tokio::test]
async fn waits_for_a_kubelet_that_starts_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut kubelet = TestKubelet::absent(dir.path());
    let agent = Agent::spawn(dir.path(), &[]);
    eventually("the agent to find no device-plugin directory", || {
        agent
            .logs()
            .contains("waiting for the kubelet to create it")
    })
    .await;
    assert!(kubelet
        .registration_within(Duration::from_millis(500))
        .await
        .is_none());
    kubelet.serve();
    let reg = kubelet.next_registration().await;
    assert_eq!(reg.resource_name, "nvidia.com/gpu");
    kubelet.until_healthy(&[("nvidia.com/gpu", 8)]).await;
    let logs = agent.logs();
    assert_eq!(logs.matches(" WARN ").count(), 1, "one warning:\n{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
    assert!(
        kubelet.violations().is_empty(),
        "{:?}",
        kubelet.violations()
    );
}

/// The other order on a node: the directory exists, the kubelet is not up yet.
#[tokio::test]
async fn waits_quietly_for_a_kubelet_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut kubelet = TestKubelet::absent(dir.path());
    std::fs::create_dir_all(kubelet.dir()).unwrap();
    let agent = Agent::spawn(dir.path(), &[]);
    eventually("the agent to find no kubelet", || {
        agent.logs().contains("kubelet not reachable")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    kubelet.serve();
    kubelet.next_registration().await;
    kubelet.until_healthy(&[("nvidia.com/gpu", 8)]).await;
    let logs = agent.logs();
    assert_eq!(
        logs.matches("kubelet not reachable").count(),
        1,
        "one line while waiting, not one per retry:\n{logs}"
    );
    assert!(!logs.contains("ERROR"), "{logs}");
}

#[tokio::test]
async fn re_registers_after_kubelet_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut kubelet, _agent, _) = start_registered(dir.path(), &[]).await;
    for _ in 0..3 {
        kubelet.restart().await;
        let reg = kubelet.next_registration_from_current().await;
        let plugin = Plugin::open(&kubelet, &reg.endpoint).await;
        assert_eq!(plugin.devices.len(), 8);
    }
    assert!(
        kubelet.violations().is_empty(),
        "{:?}",
        kubelet.violations()
    );
}

/// The kubelet's own checks (`server.go` `Register`), as the stand-in applies them.
#[test]
fn the_stand_in_judges_resource_names_as_the_kubelet_does() {
    assert!(is_extended_resource_name("nvidia.com/gpu"));
    assert!(is_extended_resource_name("nvidia.com/mig-1g.10gb"));
    assert!(is_extended_resource_name("nvidia.com/gpu.shared"));
    assert!(!is_extended_resource_name("gpu"));
    assert!(!is_extended_resource_name("kubernetes.io/gpu"));
    assert!(!is_extended_resource_name("requests.nvidia.com/gpu"));
    assert!(!is_extended_resource_name("nvidia.com/"));
    assert!(!is_extended_resource_name("Nvidia.com/gpu"));
}

/// A client other than the kubelet on the plugin socket: its own connection each time.
async fn other_client(socket: &std::path::Path) -> DevicePluginClient<Channel> {
    let channel = gpu_agent::plugin::uds::connect(socket, WAIT, None)
        .await
        .expect("connect to the plugin socket");
    DevicePluginClient::new(channel)
}

/// `n` times: another client opens ListAndWatch, reads the device list and goes away; every
/// other time on a fresh connection, else a second stream on the same one.
async fn other_streams_come_and_go(socket: &std::path::Path, n: usize) {
    let mut client = other_client(socket).await;
    for i in 0..n {
        if i % 2 == 0 {
            client = other_client(socket).await;
        }
        let mut stream = list_and_watch(&mut client).await;
        assert_eq!(next_list(&mut stream).await.devices.len(), 8);
        drop(stream);
    }
}

/// Anyone who can reach the socket could open a ListAndWatch stream and close it; before, the
/// first stream after a registration counted as the kubelet's, and its end re-registered (20
/// open/close cycles: 20 registrations, each ending the kubelet's real stream). Only the stream
/// on the connection the kubelet dialled inside Register counts now: other clients' streams,
/// before the kubelet's or after it, cost nothing.
#[tokio::test]
async fn other_clients_streams_never_cost_a_registration() {
    let dir = tempfile::tempdir().unwrap();
    // The kubelet opens its stream 2 s after Register: room for other clients to go first.
    let mut kubelet = TestKubelet::absent(dir.path()).with_list_delay(Duration::from_secs(2));
    kubelet.serve();
    let agent = Agent::spawn(dir.path(), &[]);
    let reg = kubelet.next_registration().await;
    let socket = kubelet.dir().join(&reg.endpoint);
    other_streams_come_and_go(&socket, 20).await;
    assert!(
        kubelet.view(GPU).healthy.is_empty(),
        "the 20 streams came before the kubelet's first list"
    );
    kubelet.until_healthy(&[(GPU, 8)]).await;
    let mut plugin = Plugin::open(&kubelet, &reg.endpoint).await;
    other_streams_come_and_go(&socket, 20).await;
    // Enough for a re-registration to have shown (a dropped stream re-registers in ms).
    let extra = kubelet.registration_within(Duration::from_secs(1)).await;
    assert!(extra.is_none(), "registered again: {extra:?}");
    plugin
        .assert_quiet(Duration::ZERO, "the kubelet's stream")
        .await;
    let view = kubelet.view(GPU);
    assert!(view.live && view.healthy.len() == 8, "{view:?}");
    assert!(
        kubelet.violations().is_empty(),
        "{:?}",
        kubelet.violations()
    );
    let logs = agent.logs();
    assert!(!logs.contains("re-serving"), "{logs}");
    // The kubelet's stream, opened once and still open.
    assert_eq!(
        logs.matches("ListAndWatch stream opened").count(),
        1,
        "{logs}"
    );
}

/// At most 8 streams besides the kubelet's; the kubelet's own is admitted even when they are
/// all taken.
#[tokio::test]
async fn other_clients_get_at_most_eight_streams_and_never_the_kubelets() {
    let dir = tempfile::tempdir().unwrap();
    let mut kubelet = TestKubelet::absent(dir.path()).with_list_delay(Duration::from_secs(1));
    kubelet.serve();
    let _agent = Agent::spawn(dir.path(), &[]);
    let reg = kubelet.next_registration().await;
    let socket = kubelet.dir().join(&reg.endpoint);
    let mut client = other_client(&socket).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = list_and_watch(&mut client).await;
        next_list(&mut stream).await;
        held.push(stream);
    }
    let refused = client.list_and_watch(Empty {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    let elsewhere = other_client(&socket)
        .await
        .list_and_watch(Empty {})
        .await
        .unwrap_err();
    assert_eq!(
        elsewhere.code(),
        tonic::Code::ResourceExhausted,
        "per plugin, not per connection"
    );
    // The kubelet's stream comes after all eight.
    assert!(kubelet.view(GPU).healthy.is_empty());
    kubelet.until_healthy(&[(GPU, 8)]).await;
    // A slot freed is a slot to take.
    drop(held.pop());
    eventually_async("a freed slot to be taken", || {
        let socket = socket.clone();
        async move {
            let mut client = other_client(&socket).await;
            client.list_and_watch(Empty {}).await.is_ok()
        }
    })
    .await;
    assert!(kubelet
        .registration_within(Duration::from_millis(500))
        .await
        .is_none());
}

/// Poll the async `f` until it returns true or `WAIT` passes.
async fn eventually_async<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Connecting to a unix socket needs write permission on it: 0600, root's (the kubelet's) only.
#[tokio::test]
async fn the_plugin_socket_is_for_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (kubelet, _agent, reg) = start_registered(dir.path(), &[]).await;
    let socket = kubelet.dir().join(&reg.endpoint);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o600, "{mode:o}");
}

/// A 1 MiB ID a client made up is refused with a short message, logged once, short: before, it
/// came back whole in the error and was logged twice (2 MiB of log per call).
#[tokio::test]
async fn a_huge_unknown_id_is_refused_short_and_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let (kubelet, agent, reg) = start_registered(dir.path(), &[]).await;
    let mut plugin = kubelet.plugin(&reg.endpoint).await;
    let huge = format!("GPU-{}", "x".repeat(1 << 20));
    let status = allocate(&mut plugin, &[&huge]).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let message = status.message();
    assert!(
        message.len() < 300,
        "{} bytes: {}",
        message.len(),
        message.chars().take(300).collect::<String>()
    );
    assert!(message.contains("GPU-xxxx"), "{message}");
    assert!(message.contains("…(1048580 bytes)"), "{message}");
    eventually("the refusal to be logged", || {
        agent.logs().contains("allocation refused")
    })
    .await;
    let logs = agent.logs();
    let refusals: Vec<&str> = logs.lines().filter(|l| l.contains("xxxx")).collect();
    assert_eq!(refusals.len(), 1, "logged once");
    assert!(refusals[0].len() < 600, "{}", refusals[0]);
    assert!(logs.len() < 64 * 1024, "{} bytes of log", logs.len());
    // And nothing else broke.
    plugin.get_device_plugin_options(Empty {}).await.unwrap();
}
