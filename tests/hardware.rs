//! The mock must reproduce what the real NVML backend reported on a real H200 (tests/data/h200,
//! recorded with scripts/nvml-probe.sh): `list`, the device series of `/metrics` (every family
//! the recording has; families added since take the fixture's idle defaults), and the NFD
//! labels, field for field.

mod common;

use std::collections::BTreeMap;

use common::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/h200-real.yaml");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/h200");

fn data(name: &str) -> String {
    std::fs::read_to_string(format!("{DATA}/{name}")).unwrap()
}

/// Device series (`gpu_*`, not the agent's own `gpu_agent_*`): series → value.
fn device_series(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|l| l.starts_with("gpu_") && !l.starts_with("gpu_agent_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn mock_reproduces_the_real_list() {
    let out = list_json_text(&["--mock-fixture", FIXTURE, "--node-name", "vm"]);
    let mock: serde_json::Value = serde_json::from_str(&out).unwrap();
    let real: serde_json::Value = serde_json::from_str(&data("list.json")).unwrap();
    assert_eq!(real["backend"], "nvml");
    let mut mock = mock;
    mock["backend"] = real["backend"].clone();
    assert_eq!(mock, real, "mock:\n{out}");
}

#[tokio::test]
async fn mock_reproduces_the_real_scrape_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let features = dir.path().join("features");
    let args = [
        "--mock-fixture",
        FIXTURE,
        "--node-name",
        "vm",
        "--metrics-addr",
        &addr,
        "--nfd-features-file",
        arg(&features),
        "--collect-interval",
        "200ms",
    ];
    let (_kubelet, _agent, _) = start_registered(dir.path(), &args).await;

    let real = device_series(&data("metrics.prom"));
    assert!(real.len() >= 9, "{real:?}");
    let recorded: std::collections::BTreeSet<&str> = real
        .keys()
        .filter_map(|series| series.split('{').next())
        .collect();
    let mut mock = BTreeMap::new();
    eventually("the device series", || {
        mock = scrape(&addr)
            .map(|body| device_series(&body))
            .unwrap_or_default();
        mock.retain(|series, _| recorded.contains(series.split('{').next().unwrap_or("")));
        mock.len() >= real.len()
    })
    .await;
    assert_eq!(mock, real);

    eventually("the NFD feature file", || features.exists()).await;
    assert_eq!(
        std::fs::read_to_string(&features).unwrap(),
        data("features")
    );
}
