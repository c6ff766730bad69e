//! The mock must reproduce what the real NVML backend reported on a real H200 (tests/data/h200,
//! recorded with scripts/nvml-probe.sh): `list`, the device series of `/metrics`, and the NFD
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
    let (code, out, err) = run_cli(&[
        "list",
        "--backend",
        "mock",
        "--mock-fixture",
        FIXTURE,
        "--node-name",
        "vm",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
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
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let features = dir.path().join("features");
    let features_arg = features.to_string_lossy().into_owned();
    let _agent = Agent::spawn(
        dir.path(),
        &[
            "--mock-fixture",
            FIXTURE,
            "--node-name",
            "vm",
            "--metrics-addr",
            &addr,
            "--nfd-features-file",
            &features_arg,
            "--collect-interval",
            "200ms",
        ],
    );
    kubelet.next_registration().await;

    let real = device_series(&data("metrics.prom"));
    assert!(real.len() >= 9, "{real:?}");
    let mut mock = BTreeMap::new();
    eventually("the device series", || {
        mock = http_get(&addr, "/metrics")
            .map(|(_, body)| device_series(&body))
            .unwrap_or_default();
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
