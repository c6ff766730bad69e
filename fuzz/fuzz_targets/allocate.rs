//! Allocate request handling on a node with every kind of resource (whole GPUs, replicas, MIG
//! devices, vGPU slices, one GPU lost): the input picks a resource and a list of IDs, each either
//! a known device (by index) or raw text. Never panics; a refusal names the first bad ID.
#![no_main]

use std::sync::OnceLock;

use gpu_agent::allocate::{self, AllocateError};
use gpu_agent::config::{self, Config};
use gpu_agent::gpu::fixture;
use gpu_agent::health::HealthState;
use gpu_agent::resources::{self, Health, ResourceSet};
use libfuzzer_sys::fuzz_target;

fn node() -> &'static (ResourceSet, Config) {
    static NODE: OnceLock<(ResourceSet, Config)> = OnceLock::new();
    NODE.get_or_init(|| {
        let inventory = fixture::parse(
            "gpus:\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3}\n  - {model: NVIDIA H100 80GB HBM3, mig: {devices: [1g.10gb, 1g.10gb, 3g.40gb]}}\n",
        )
        .expect("fixture")
        .inventory;
        let config = config::parse(
            "version: v1\nflags: {migStrategy: mixed, plugin: {deviceListStrategy: [envvar, cdi-cri], passDeviceSpecs: true}}\nsharing:\n  timeSlicing:\n    failRequestsGreaterThanOne: true\n    resources:\n      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.shared, replicas: 4, devices: [1, 2]}\n      - {name: nvidia.com/mig-1g.10gb, replicas: 2}\n  vgpu: {resources: [{name: nvidia.com/gpu, memoryMiB: 20000, computePercent: 25, devices: [3]}]}\n",
        )
        .expect("config");
        let health = HealthState::default().with_lost([inventory.gpus[1].uuid.clone()]);
        let set = resources::build(&inventory, &config, &health)
            .expect("node")
            .resources;
        (set, config)
    })
}

fuzz_target!(|data: &[u8]| {
    let (set, config) = node();
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let names: Vec<&str> = set.names().collect();
    let resource = set
        .get(names[usize::from(which) % names.len()])
        .expect("resource");
    // Items separated by 0xff: one byte picks a known device, anything longer is a raw ID.
    let ids: Vec<String> = rest
        .split(|&b| b == 0xff)
        .take(16)
        .map(|item| match item {
            [i] => resource.devices[usize::from(*i) % resource.devices.len()]
                .id
                .clone(),
            raw => String::from_utf8_lossy(raw).into_owned(),
        })
        .collect();
    let ids = if rest.is_empty() { Vec::new() } else { ids };
    let first_bad = ids.iter().find(|id| {
        resource
            .device(id)
            .is_none_or(|d| d.health != Health::Healthy)
    });
    match allocate::container_response(resource, &ids, &config.plugin, &Default::default()) {
        Ok(_) => assert!(first_bad.is_none() && !ids.is_empty()),
        Err(
            AllocateError::UnknownDevice { id, .. } | AllocateError::UnhealthyDevice { id, .. },
        ) => {
            assert_eq!(Some(&id), first_bad)
        }
        Err(AllocateError::Empty { .. }) => assert!(ids.is_empty()),
        Err(AllocateError::TooManyReplicas { .. } | AllocateError::VgpuAcrossGpus { .. }) => {
            assert!(first_bad.is_none())
        }
    }
});
