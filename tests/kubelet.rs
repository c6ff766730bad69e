//! The agent as the kubelet sees it: registration, ListAndWatch, Allocate, errors, restarts,
//! SIGTERM — over real unix sockets, against the real binary on the mock backend.

mod common;

use std::time::Duration;

use common::*;
use gpu_agent::proto::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, Empty, PreStartContainerRequest,
};

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
