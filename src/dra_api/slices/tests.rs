use super::*;

fn target() -> PoolTarget {
    PoolTarget {
        driver: "gpu.gpu-agent.io".into(),
        node: "node-a".into(),
        node_uid: Some("6f1c3a52-8d0e-4a8e-9a53-3f6c2f1d2b10".into()),
    }
}

fn device(name: &str) -> DraDevice {
    let mut d = DraDevice {
        name: name.into(),
        uuid: format!("GPU-{name}"),
        attributes: BTreeMap::new(),
        capacity: BTreeMap::new(),
    };
    d.attributes
        .insert("type".into(), AttributeValue::String("gpu".into()));
    d.attributes.insert(
        "driverVersion".into(),
        AttributeValue::Version("580.95.5".into()),
    );
    d.capacity.insert("memory".into(), "80Gi".into());
    d
}

fn devices(n: usize) -> Vec<DraDevice> {
    (0..n).map(|i| device(&format!("gpu-{i}"))).collect()
}

/// What the API server would hold after `actions` (names → slices), given `current`.
fn apply(current: &[ResourceSlice], actions: &[Action]) -> Vec<ResourceSlice> {
    let mut stored: BTreeMap<String, ResourceSlice> = current
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap(), s.clone()))
        .collect();
    for action in actions {
        match action {
            Action::Create(s) | Action::Update(s) => {
                stored.insert(s.metadata.name.clone().unwrap(), s.clone());
            }
            Action::Delete { name, .. } => {
                stored.remove(name);
            }
        }
    }
    stored.into_values().collect()
}

#[test]
fn first_publication_creates_one_slice_at_generation_one() {
    let actions = plan(&target(), &devices(8), &[]);
    assert_eq!(actions.len(), 1);
    let Action::Create(slice) = &actions[0] else {
        panic!("{actions:?}")
    };
    assert_eq!(
        slice.metadata.name.as_deref(),
        Some("node-a-gpu.gpu-agent.io-0")
    );
    assert_eq!(slice.spec.driver, "gpu.gpu-agent.io");
    assert_eq!(slice.spec.node_name.as_deref(), Some("node-a"));
    assert_eq!(slice.spec.pool.name, "node-a");
    assert_eq!(slice.spec.pool.generation, 1);
    assert_eq!(slice.spec.pool.resource_slice_count, 1);
    assert_eq!(slice.spec.devices.as_ref().unwrap().len(), 8);
    let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Node", "node-a")
    );
    assert_eq!(owner.controller, Some(true));
    let attr = &slice.spec.devices.as_ref().unwrap()[0]
        .attributes
        .as_ref()
        .unwrap()["driverVersion"];
    assert_eq!(attr.version.as_deref(), Some("580.95.5"));
}

#[test]
fn nothing_to_do_when_the_server_has_it_and_one_update_when_a_device_leaves() {
    let t = target();
    let stored = apply(&[], &plan(&t, &devices(8), &[]));
    assert!(plan(&t, &devices(8), &stored).is_empty());
    let fewer = devices(8)
        .into_iter()
        .filter(|d| d.name != "gpu-3")
        .collect::<Vec<_>>();
    let actions = plan(&t, &fewer, &stored);
    assert_eq!(actions.len(), 1, "{actions:?}");
    let Action::Update(slice) = &actions[0] else {
        panic!("{actions:?}")
    };
    assert_eq!(slice.spec.pool.generation, 2);
    assert_eq!(slice.spec.devices.as_ref().unwrap().len(), 7);
}

#[test]
fn more_than_128_devices_are_split_and_every_slice_carries_the_generation() {
    let t = target();
    let actions = plan(&t, &devices(300), &[]);
    assert_eq!(actions.len(), 3);
    let stored = apply(&[], &actions);
    let sizes: Vec<usize> = stored
        .iter()
        .map(|s| s.spec.devices.as_ref().unwrap().len())
        .collect();
    assert_eq!(sizes, [128, 128, 44]);
    assert!(stored
        .iter()
        .all(|s| s.spec.pool.resource_slice_count == 3 && s.spec.pool.generation == 1));
    // Shrinking to one slice: two deletes first, then the update.
    let actions = plan(&t, &devices(10), &stored);
    assert!(matches!(actions[0], Action::Delete { .. }));
    assert!(matches!(actions[1], Action::Delete { .. }));
    assert!(matches!(actions[2], Action::Update(_)));
    let stored = apply(&stored, &actions);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].spec.pool.generation, 2);
    assert_eq!(stored[0].spec.pool.resource_slice_count, 1);
}

#[test]
fn an_empty_pool_is_still_one_slice_and_strangers_are_deleted() {
    let t = target();
    let mut stranger = apply(&[], &plan(&t, &devices(1), &[]))[0].clone();
    stranger.metadata.name = Some("node-a-gpu.gpu-agent.io-old".into());
    let actions = plan(&t, &[], &[stranger]);
    assert_eq!(actions.len(), 2);
    assert!(
        matches!(&actions[0], Action::Delete { name, .. } if name == "node-a-gpu.gpu-agent.io-old")
    );
    let Action::Create(slice) = &actions[1] else {
        panic!("{actions:?}")
    };
    assert_eq!(slice.spec.devices.as_deref(), Some(&[][..]));
    assert_eq!(slice.spec.pool.generation, 2, "above every generation seen");
}

#[test]
fn long_node_names_still_give_valid_unique_names() {
    let node = format!("{}.example.com", "n".repeat(240));
    let a = slice_name(&node, "gpu.gpu-agent.io", 0);
    let b = slice_name(&format!("{node}x"), "gpu.gpu-agent.io", 0);
    assert!(a.len() <= MAX_NAME_LEN && b.len() <= MAX_NAME_LEN);
    assert_ne!(a, b);
    assert!(a.ends_with("-gpu.gpu-agent.io-0"));
    assert_eq!(slice_name("n1", "d.io", 2), "n1-d.io-2");
}
