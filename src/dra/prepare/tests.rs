use super::*;
use crate::dra::claims::AllocatedDevice;
use crate::dra::partition::DraDevices;
use crate::gpu::fixture;
use crate::health::Unhealthy;

const DRIVER: &str = "gpu.gpu-agent.io";
const POOL: &str = "node-1";
const UID: &str = "6a1d9a57-8d53-4a57-9d4e-0d8f1c1e2b3a";

fn inventory() -> Inventory {
    fixture::parse(
        "gpus:\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [3g.40gb, 1g.10gb]}}\n",
    )
    .unwrap()
    .inventory
}

fn result(request: &str, device: &str) -> AllocatedDevice {
    AllocatedDevice {
        request: request.into(),
        driver: DRIVER.into(),
        pool: POOL.into(),
        device: device.into(),
    }
}

fn claim(results: Vec<AllocatedDevice>) -> Claim {
    Claim {
        uid: UID.into(),
        namespace: "ns".into(),
        name: "c".into(),
        results,
        configs: Vec::new(),
    }
}

struct World {
    inventory: Inventory,
    partition: Partition,
    health: HealthState,
    plugin: PluginSettings,
    extras: crate::extras::NodeExtras,
}

impl World {
    fn new() -> Self {
        let inventory = inventory();
        let partition = Partition::new(&inventory, &DraDevices::All);
        Self {
            inventory,
            partition,
            health: HealthState::default(),
            plugin: PluginSettings::default(),
            extras: crate::extras::NodeExtras::default(),
        }
    }

    fn node(&self) -> Node<'_> {
        Node {
            driver_name: DRIVER,
            pool: POOL,
            inventory: &self.inventory,
            partition: &self.partition,
            health: &self.health,
            plugin: &self.plugin,
            driver_files: None,
            extras: &self.extras,
        }
    }

    fn prepare(&self, claim: &Claim) -> Result<Prepared, PrepareError> {
        prepare(claim, UID, &self.node())
    }
}

fn nodes(edits: &ContainerEdits) -> Vec<&str> {
    edits.device_nodes.iter().map(|n| n.path.as_str()).collect()
}

#[test]
fn whole_gpus_and_mig_devices_get_their_nodes_and_cdi_ids() {
    let w = World::new();
    let mig = &w.inventory.gpus[2].mig_devices[1];
    let mig_name = names::of_mig(&w.inventory.gpus[2], mig);
    let p = w
        .prepare(&claim(vec![result("a", "gpu-1"), result("b", &mig_name)]))
        .unwrap();
    assert_eq!(
        p.devices,
        [
            PreparedDevice {
                requests: vec!["a".into()],
                pool: POOL.into(),
                device: "gpu-1".into(),
                cdi_ids: vec![format!("k8s.gpu-agent.io/claim={UID}-gpu-1")],
            },
            PreparedDevice {
                requests: vec!["b".into()],
                pool: POOL.into(),
                device: mig_name.clone(),
                cdi_ids: vec![format!("k8s.gpu-agent.io/claim={UID}-{mig_name}")],
            },
        ]
    );
    assert_eq!(p.spec.kind, "k8s.gpu-agent.io/claim");
    assert_eq!(nodes(&p.spec.devices[0].container_edits), ["/dev/nvidia1"]);
    let (gi, ci) = mig.cap_minors(2);
    assert_eq!(
        nodes(&p.spec.devices[1].container_edits),
        [
            "/dev/nvidia2".to_string(),
            format!("/dev/nvidia-caps/nvidia-cap{gi}"),
            format!("/dev/nvidia-caps/nvidia-cap{ci}")
        ]
    );
    // The same spec-wide edits as the device plugin's CDI spec.
    assert_eq!(p.spec.container_edits, spec::common_edits(&w.plugin, None));
    assert_eq!(p.spec.container_edits.env, [spec::VISIBLE_DEVICES_VOID]);
}

#[test]
fn other_drivers_and_pools_are_left_alone_and_shared_devices_listed_once() {
    let w = World::new();
    let mut other = result("net", "eth0");
    other.driver = "net.example.com".into();
    let mut elsewhere = result("a", "gpu-0");
    elsewhere.pool = "node-2".into();
    let p = w
        .prepare(&claim(vec![
            other,
            result("a", "gpu-0"),
            elsewhere,
            result("b", "gpu-0"),
        ]))
        .unwrap();
    assert_eq!(p.devices.len(), 1);
    assert_eq!(p.devices[0].requests, ["a", "b"]);
    assert_eq!(p.spec.devices.len(), 1);
    // A claim with nothing of ours prepares to nothing.
    let p = w.prepare(&claim(Vec::new())).unwrap();
    assert!(p.devices.is_empty() && p.spec.devices.is_empty());
}

#[test]
fn per_claim_errors() {
    let mut w = World::new();
    let mut c = claim(vec![result("a", "gpu-0")]);
    c.uid = "another".into();
    assert!(matches!(
        w.prepare(&c),
        Err(PrepareError::UidMismatch { .. })
    ));
    assert!(matches!(
        prepare(&claim(Vec::new()), "../../etc", &w.node()),
        Err(PrepareError::InvalidUid { .. })
    ));
    for unknown in ["gpu-9", "gpu-0-mig-1-0", "eth0", "gpu-2"] {
        let err = w.prepare(&claim(vec![result("a", unknown)])).unwrap_err();
        assert!(
            matches!(err, PrepareError::UnknownDevice { .. }),
            "{unknown}: {err}"
        );
    }
    w.partition = Partition::new(&w.inventory, &DraDevices::List(vec!["1".into()]));
    assert!(matches!(
        w.prepare(&claim(vec![result("a", "gpu-0")])),
        Err(PrepareError::NotDra { .. })
    ));
    w.partition = Partition::new(&w.inventory, &DraDevices::All);
    let uuid = w.inventory.gpus[0].uuid.clone();
    w.health.gpus.insert(
        uuid,
        Unhealthy {
            reason: "XID 79".into(),
        },
    );
    let err = w.prepare(&claim(vec![result("a", "gpu-0")])).unwrap_err();
    assert_eq!(err.to_string(), "device gpu-0 is unhealthy: XID 79");
    let mig_uuid = w.inventory.gpus[2].mig_devices[0].uuid.clone();
    let mig_name = names::of_mig(&w.inventory.gpus[2], &w.inventory.gpus[2].mig_devices[0]);
    w.health.migs.insert(
        mig_uuid,
        Unhealthy {
            reason: "XID 94".into(),
        },
    );
    assert!(matches!(
        w.prepare(&claim(vec![result("a", &mig_name)])),
        Err(PrepareError::Unhealthy { .. })
    ));
}

#[test]
fn opaque_configs_set_hami_limits_on_their_requests() {
    let w = World::new();
    let mut c = claim(vec![result("small", "gpu-0"), result("big/h100", "gpu-1")]);
    c.configs = vec![
        OpaqueConfig {
            driver: DRIVER.into(),
            requests: Vec::new(),
            parameters: serde_json::json!({"apiVersion": "gpu.gpu-agent.io/v1alpha1", "kind": "GpuConfig", "computePercent": 25}),
        },
        OpaqueConfig {
            driver: DRIVER.into(),
            requests: vec!["small".into()],
            parameters: serde_json::json!({"memory": "10Gi"}),
        },
        OpaqueConfig {
            driver: "other.example.com".into(),
            requests: Vec::new(),
            parameters: serde_json::json!({"anything": true}),
        },
    ];
    let p = w.prepare(&c).unwrap();
    assert_eq!(
        p.spec.devices[0].container_edits.env,
        ["CUDA_DEVICE_MEMORY_LIMIT=10240m", "CUDA_DEVICE_SM_LIMIT=25"]
    );
    assert_eq!(
        p.spec.devices[1].container_edits.env,
        ["CUDA_DEVICE_SM_LIMIT=25"]
    );
    for bad in [
        serde_json::json!({"memory": "lots"}),
        serde_json::json!({"computePercent": 0}),
        serde_json::json!({"computePercent": 101}),
        serde_json::json!({"memroy": "1Gi"}),
        serde_json::json!("10Gi"),
    ] {
        c.configs = vec![OpaqueConfig {
            driver: DRIVER.into(),
            requests: Vec::new(),
            parameters: bad.clone(),
        }];
        assert!(
            matches!(w.prepare(&c), Err(PrepareError::BadConfig { .. })),
            "{bad}"
        );
    }
}

/// A claim's container gets the node extras the device plugin's Allocate gives: GDS device nodes
/// and its env, the IMEX channel, in the claim's own spec.
#[test]
fn node_extras_are_in_the_claims_spec() {
    use crate::config::ImexSettings;
    use crate::extras::{Feature, FeatureFiles};
    let mut w = World::new();
    w.plugin.gds_enabled = true;
    w.plugin.imex = ImexSettings {
        channel_ids: vec![0],
        required: false,
    };
    w.extras = crate::extras::NodeExtras {
        dev_root: "/".into(),
        features: std::collections::BTreeMap::from([(
            Feature::Gds,
            FeatureFiles {
                device_nodes: vec!["/dev/nvidia-fs0".into()],
                mounts: Vec::new(),
            },
        )]),
        imex_channels: vec![0],
        imex_missing: Vec::new(),
    };
    let p = w.prepare(&claim(vec![result("a", "gpu-1")])).unwrap();
    let common = &p.spec.container_edits;
    let paths = nodes(common);
    assert!(paths.contains(&"/dev/nvidia-fs0"), "{paths:?}");
    assert!(
        paths.contains(&"/dev/nvidia-caps-imex-channels/channel0"),
        "{paths:?}"
    );
    assert!(
        common.env.contains(&"NVIDIA_GDS=enabled".to_string()),
        "{:?}",
        common.env
    );
    // Without extras, none of it.
    let plain = World::new()
        .prepare(&claim(vec![result("a", "gpu-1")]))
        .unwrap();
    assert!(!nodes(&plain.spec.container_edits).contains(&"/dev/nvidia-fs0"));
    assert!(!plain
        .spec
        .container_edits
        .env
        .iter()
        .any(|e| e.starts_with("NVIDIA_GDS")));
}
