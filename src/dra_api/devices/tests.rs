use super::*;
use crate::gpu::fixture;
use crate::health::Unhealthy;

const NODE: &str = r#"
driverVersion: "580.95.05"
cudaDriverVersion: "13.0"
gpus:
  - model: NVIDIA H100 80GB HBM3
    pciBusId: "0000:18:00.0"
  - model: NVIDIA H100 80GB HBM3
    pciBusId: "0000:2a:00.0"
    mig:
      devices: [3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb]
  - model: Some Future GPU
    memoryMiB: 40960
"#;

fn inventory(text: &str) -> Inventory {
    fixture::parse(text).unwrap().inventory
}

fn all(inv: &Inventory, health: &HealthState) -> DeviceList {
    build(inv, health, &PcieRoots::new(), |_| true)
}

fn string(d: &DraDevice, name: &str) -> Option<String> {
    match d.attributes.get(name) {
        Some(AttributeValue::String(s)) => Some(s.clone()),
        _ => None,
    }
}

#[test]
fn gpus_and_mig_devices_get_names_attributes_and_capacity() {
    let inv = inventory(NODE);
    let list = all(&inv, &HealthState::default());
    let names: Vec<&str> = list.devices.iter().map(|d| d.name.as_str()).collect();
    // GPU 1 is MIG-enabled: only its MIG devices, ordered by GPU-instance id.
    assert_eq!(names.len(), 6, "{names:?}");
    assert_eq!(names[0], "gpu-0");
    assert!(
        names[1..5].iter().all(|n| n.starts_with("gpu-1-mig-")),
        "{names:?}"
    );
    assert_eq!(names[5], "gpu-2");
    assert!(names.iter().all(|n| is_dns_label(n)));
    assert!(duplicate_names(&list).is_empty());

    let gpu0 = &list.devices[0];
    assert_eq!(string(gpu0, "type").as_deref(), Some("gpu"));
    assert_eq!(string(gpu0, "uuid"), Some(inv.gpus[0].uuid.clone()));
    assert_eq!(
        string(gpu0, "productName").as_deref(),
        Some("NVIDIA H100 80GB HBM3")
    );
    assert_eq!(string(gpu0, "brand").as_deref(), Some("Nvidia"));
    assert_eq!(string(gpu0, "architecture").as_deref(), Some("Hopper"));
    assert_eq!(string(gpu0, "pcieBusID").as_deref(), Some("0000:18:00.0"));
    assert_eq!(string(gpu0, "pciBusID").as_deref(), Some("0000:18:00.0"));
    assert_eq!(string(gpu0, PCI_BUS_ID).as_deref(), Some("0000:18:00.0"));
    let version = |d: &DraDevice, n: &str| d.attributes.get(n).cloned();
    assert_eq!(
        version(gpu0, "driverVersion"),
        Some(AttributeValue::Version("580.95.5".into()))
    );
    assert_eq!(
        version(gpu0, "cudaDriverVersion"),
        Some(AttributeValue::Version("13.0.0".into()))
    );
    assert_eq!(
        version(gpu0, "cudaComputeCapability"),
        Some(AttributeValue::Version("9.0.0".into()))
    );
    assert_eq!(gpu0.attributes.get("index"), Some(&AttributeValue::Int(0)));
    assert_eq!(gpu0.attributes.get("minor"), Some(&AttributeValue::Int(0)));
    assert_eq!(
        gpu0.capacity.get("memory").map(String::as_str),
        Some("81559Mi")
    );
    // No sysfs in the mock: no PCIe root.
    assert!(!gpu0.attributes.contains_key(PCIE_ROOT));

    let mig = list.devices[1..5]
        .iter()
        .find(|d| string(d, "profile").as_deref() == Some("3g.40gb"))
        .expect("3g.40gb");
    let parent = &inv.gpus[1];
    let spec = parent
        .mig_devices
        .iter()
        .find(|m| m.profile == "3g.40gb")
        .unwrap();
    assert_eq!(
        mig.name,
        format!(
            "gpu-1-mig-{}-{}",
            spec.gpu_instance_id, spec.compute_instance_id
        )
    );
    assert_eq!(string(mig, "type").as_deref(), Some("mig"));
    assert_eq!(string(mig, "uuid"), Some(spec.uuid.clone()));
    assert_eq!(string(mig, "parentUUID"), Some(parent.uuid.clone()));
    assert_eq!(
        mig.attributes.get("parentIndex"),
        Some(&AttributeValue::Int(1))
    );
    assert_eq!(string(mig, "pcieBusID").as_deref(), Some("0000:2a:00.0"));
    assert_eq!(
        mig.capacity.get("multiprocessors").map(String::as_str),
        Some("60")
    );
    assert_eq!(
        mig.capacity.get("memory"),
        Some(&binary_quantity_mib(spec.memory_mib))
    );
    // The API's limit: 32 attributes and capacities per device.
    for d in &list.devices {
        assert!(d.attributes.len() + d.capacity.len() <= 32, "{}", d.name);
    }
}

#[test]
fn an_unknown_model_is_published_without_the_facts_it_lacks() {
    let list = all(&inventory(NODE), &HealthState::default());
    let unknown = list.devices.iter().find(|d| d.name == "gpu-2").unwrap();
    assert!(!unknown.attributes.contains_key("architecture"));
    assert_eq!(
        unknown.capacity.get("memory").map(String::as_str),
        Some("40Gi")
    );
    let omitted: Vec<&str> = list
        .omitted
        .iter()
        .filter(|o| o.device == "gpu-2")
        .map(|o| o.attribute)
        .collect();
    assert_eq!(omitted, ["brand", "architecture", "cudaComputeCapability"]);
}

#[test]
fn a_version_that_is_not_semver_is_omitted_with_its_reason() {
    let inv = inventory("driverVersion: \"580.95.05.1\"\ngpus: [{model: NVIDIA H100 80GB HBM3}]");
    let list = all(&inv, &HealthState::default());
    let gpu = &list.devices[0];
    assert!(!gpu.attributes.contains_key("driverVersion"));
    assert!(!gpu.attributes.contains_key("cudaDriverVersion"));
    let reasons: Vec<String> = list
        .omitted
        .iter()
        .map(|o| format!("{} {}", o.attribute, o.reason))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("driverVersion") && r.contains("more than three")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "cudaDriverVersion unknown"),
        "{reasons:?}"
    );
}

#[test]
fn unhealthy_devices_leave_and_selection_is_honoured() {
    let inv = inventory(NODE);
    let bad = Unhealthy {
        reason: "XID 79".into(),
    };
    let mut health = HealthState::default();
    health.gpus.insert(inv.gpus[0].uuid.clone(), bad.clone());
    let mig = &inv.gpus[1].mig_devices[0];
    health.migs.insert(mig.uuid.clone(), bad.clone());
    let list = all(&inv, &health);
    assert!(list.devices.iter().all(|d| d.name != "gpu-0"));
    assert!(list.devices.iter().all(|d| d.uuid != mig.uuid));
    assert_eq!(list.devices.len(), 4);
    // A lost parent takes every MIG device with it.
    health.gpus.insert(inv.gpus[1].uuid.clone(), bad);
    assert_eq!(all(&inv, &health).devices.len(), 1);
    // Only GPU 2 handed to DRA.
    let only = build(&inv, &HealthState::default(), &PcieRoots::new(), |g| {
        g.index == 2
    });
    assert_eq!(only.devices.len(), 1);
    assert_eq!(only.devices[0].name, "gpu-2");
}

#[test]
fn pcie_roots_are_published_where_known() {
    let inv = inventory(NODE);
    let mut roots = PcieRoots::new();
    roots.insert("0000:18:00.0".into(), "pci0000:15".into());
    let list = build(&inv, &HealthState::default(), &roots, |_| true);
    assert_eq!(
        string(&list.devices[0], PCIE_ROOT).as_deref(),
        Some("pci0000:15")
    );
    assert!(!list.devices[1].attributes.contains_key(PCIE_ROOT));
}

#[test]
fn quantities_are_canonical() {
    assert_eq!(binary_quantity_mib(81559), "81559Mi");
    assert_eq!(binary_quantity_mib(40960), "40Gi");
    assert_eq!(binary_quantity_mib(1024 * 1024), "1Ti");
    assert_eq!(binary_quantity_mib(0), "0");
    assert_eq!(decimal_quantity(132), "132");
    assert_eq!(decimal_quantity(2000), "2k");
    assert_eq!(decimal_quantity(1500), "1500");
}

#[test]
fn dns_labels() {
    assert!(is_dns_label("gpu-0"));
    assert!(is_dns_label("gpu-7-mig-13-0"));
    for bad in [
        "",
        "-gpu",
        "gpu-",
        "GPU-0",
        "gpu_0",
        "gpu.0",
        &"a".repeat(64),
    ] {
        assert!(!is_dns_label(bad), "{bad}");
    }
}
