//! Node labels through a Node Feature Discovery feature file (`--nfd-features-file`), with the
//! keys GPU Feature Discovery (GFD) uses, so node selectors written for GFD keep working.
//!
//! [`node_labels`] is a pure function of the snapshot; [`run`] rewrites the file (through
//! [`hostfs::write`]: a hidden temp file + rename, so NFD never reads half a file, and a symlink
//! planted in `features.d` is never followed) only when its content changes: on an inventory
//! change (MIG re-partition) or a config change, not on health or telemetry changes.
//!
//! Choices where GFD has no answer: `gpu.sharing-strategy` is `none`, `time-slicing`, `vgpu`, or
//! `mixed` when the node advertises both time-sliced replicas and vGPU slices; `gpu.replicas` of
//! GPUs cut into vGPU slices is the number of slices per GPU; `mig.strategy` is written for every
//! strategy (GFD omits it for `none`); a node without GPUs gets only `nvidia.com/gpu.present=false`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::MigStrategy;
use crate::gpu::{mig_profiles, Gpu};
use crate::hostfs;
use crate::resources::names::{self, GPU};
use crate::resources::Strategy;
use crate::snapshot::Snapshot;

/// Wait before retrying a failed write.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// A label value as GFD makes it from NVML names: spaces become `-`. Characters Kubernetes does
/// not allow in a label value also become `-`, and the value is cut to 63 characters, so that NFD
/// never rejects the file.
pub fn sanitize(value: &str) -> String {
    let replaced: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cut: String = replaced.chars().take(63).collect();
    cut.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn product(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .map(|p| p.replace(' ', "-"))
        .collect::<Vec<_>>()
        .join("-");
    sanitize(&joined)
}

/// The most common model (ties: the one on the lowest index) and its GPUs.
fn main_model(gpus: &[Gpu]) -> (&str, Vec<&Gpu>) {
    let mut counts: Vec<(&str, Vec<&Gpu>)> = Vec::new();
    for gpu in gpus {
        match counts.iter_mut().find(|(m, _)| *m == gpu.model) {
            Some((_, list)) => list.push(gpu),
            None => counts.push((&gpu.model, vec![gpu])),
        }
    }
    counts
        .into_iter()
        .rev()
        .max_by_key(|(_, list)| list.len())
        .unwrap_or(("", Vec::new()))
}

fn split_version(
    labels: &mut BTreeMap<String, String>,
    prefix: &str,
    version: &str,
    parts: &[&str],
) {
    let version = sanitize(version);
    if version.is_empty() {
        return;
    }
    for (name, value) in parts.iter().zip(version.split('.')) {
        labels.insert(format!("{prefix}.{name}"), value.to_string());
    }
    labels.insert(format!("{prefix}.full"), version);
}

/// The labels for this node. Pure.
pub fn node_labels(snapshot: &Snapshot) -> BTreeMap<String, String> {
    let inventory = &snapshot.inventory;
    let config = &snapshot.config;
    let resources = &snapshot.resources;
    let mut labels = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        labels.insert(k.to_string(), v);
    };
    if inventory.gpus.is_empty() {
        set("nvidia.com/gpu.present", "false".into());
        return labels;
    }
    set("nvidia.com/gpu.present", "true".into());

    // Whole GPUs: GFD counts every GPU of the model, MIG-enabled or not.
    let (model, gpus) = main_model(&inventory.gpus);
    let gpu_resource = resources.get(GPU);
    let shared =
        gpu_resource.is_some_and(|r| matches!(r.strategy, Strategy::TimeSliced | Strategy::Mps));
    let mut name = vec![model];
    if shared {
        name.push("SHARED");
    }
    // Replicas of a resource's time-slicing or MPS entry, if it has one.
    let time_sliced = |resource: &str| {
        config
            .time_slicing
            .resources
            .iter()
            .chain(&config.mps.resources)
            .find(|r| r.name == resource)
            .map(|r| r.replicas)
    };
    let full = gpus.iter().find(|g| !g.mig_enabled);
    let replicas = match full {
        // Only MIG-enabled GPUs: GFD labels them without sharing.
        None => 0,
        Some(gpu) => time_sliced(GPU)
            .or_else(|| {
                config
                    .vgpu
                    .iter()
                    .find(|r| r.name == GPU && r.memory_mib > 0)
                    .map(|r| (gpu.memory_mib / r.memory_mib) as u32)
            })
            .filter(|&r| r > 1)
            .unwrap_or(1),
    };
    set("nvidia.com/gpu.product", product(&name));
    set("nvidia.com/gpu.count", gpus.len().to_string());
    set(
        "nvidia.com/gpu.memory",
        gpus.first().map_or(0, |g| g.memory_mib).to_string(),
    );
    set("nvidia.com/gpu.replicas", replicas.to_string());

    let strategies: Vec<Strategy> = resources.resources.values().map(|r| r.strategy).collect();
    let time_slicing = strategies.contains(&Strategy::TimeSliced);
    let vgpu = strategies.contains(&Strategy::Vgpu);
    let mps = strategies.contains(&Strategy::Mps);
    let sharing = match (time_slicing, vgpu) {
        // MPS is refused together with time-slicing; GFD's label for it is "mps".
        (false, false) if mps => "mps",
        (false, false) => "none",
        (true, false) => "time-slicing",
        (false, true) => "vgpu",
        (true, true) => "mixed",
    };
    set("nvidia.com/gpu.sharing-strategy", sharing.into());

    let mig_capable = inventory
        .gpus
        .iter()
        .any(|g| g.mig_enabled || mig_profiles::model(&g.model).is_some());
    set("nvidia.com/mig.capable", mig_capable.to_string());
    set(
        "nvidia.com/mig.strategy",
        config.mig_strategy.as_str().into(),
    );

    // MIG devices by profile: (parent model, memory, count).
    let mut profiles: BTreeMap<&str, (&str, u64, usize)> = BTreeMap::new();
    for gpu in inventory.gpus.iter().filter(|g| g.mig_enabled) {
        for mig in &gpu.mig_devices {
            let entry = profiles.entry(mig.profile.as_str()).or_insert((
                gpu.model.as_str(),
                mig.memory_mib,
                0,
            ));
            entry.2 += 1;
        }
    }
    let replicas_of = |resource: &str| time_sliced(resource).unwrap_or(1);
    match config.mig_strategy {
        MigStrategy::None => {}
        MigStrategy::Single => {
            let mig_enabled = inventory.gpus.iter().find(|g| g.mig_enabled);
            let advertised =
                gpu_resource.is_some_and(|r| r.devices.iter().any(|d| d.target.mig.is_some()));
            match (mig_enabled, advertised, profiles.iter().next()) {
                (None, _, _) => {}
                (Some(_), true, Some((profile, (parent, memory, count)))) => {
                    let mut name = vec![*parent, "MIG", profile];
                    if shared {
                        name.push("SHARED");
                    }
                    set("nvidia.com/gpu.product", product(&name));
                    set("nvidia.com/gpu.count", count.to_string());
                    set("nvidia.com/gpu.memory", memory.to_string());
                    set("nvidia.com/gpu.replicas", replicas_of(GPU).to_string());
                }
                // The layout does not fit `single`: GFD's "invalid" labels.
                (Some(gpu), _, _) => {
                    set(
                        "nvidia.com/gpu.product",
                        product(&[&gpu.model, "MIG", "INVALID"]),
                    );
                    set("nvidia.com/gpu.count", "0".into());
                    set("nvidia.com/gpu.memory", "0".into());
                    set("nvidia.com/gpu.replicas", "0".into());
                }
            }
        }
        MigStrategy::Mixed => {
            for (profile, (parent, memory, count)) in &profiles {
                let resource = names::mig_resource(profile);
                let mut name = vec![*parent, "MIG", profile];
                if resources
                    .get(&resource)
                    .is_some_and(|r| r.strategy == Strategy::TimeSliced)
                {
                    name.push("SHARED");
                }
                set(&format!("{resource}.product"), product(&name));
                set(&format!("{resource}.count"), count.to_string());
                set(&format!("{resource}.memory"), memory.to_string());
                set(
                    &format!("{resource}.replicas"),
                    replicas_of(&resource).to_string(),
                );
            }
        }
    }

    if let Some(v) = inventory.driver_version.as_deref() {
        split_version(
            &mut labels,
            "nvidia.com/cuda.driver-version",
            v,
            &["major", "minor", "revision"],
        );
    }
    if let Some(v) = inventory.cuda_driver_version.as_deref() {
        split_version(
            &mut labels,
            "nvidia.com/cuda.runtime-version",
            v,
            &["major", "minor"],
        );
    }
    labels
}

/// The feature file text: `key=value` lines, sorted.
pub fn render(labels: &BTreeMap<String, String>) -> String {
    let mut out =
        String::from("# Written by gpu-agent; rewritten when the GPUs or the config change.\n");
    for (k, v) in labels {
        out.push_str(k);
        out.push('=');
        out.push_str(v);
        out.push('\n');
    }
    out
}

/// Keep `path` in step with the snapshots until `shutdown` turns true. The file is left in place
/// on exit, so an agent restart (an upgrade) does not make the labels flap.
pub async fn run(
    path: PathBuf,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut written: Option<String> = None;
    let mut failed = false;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let content = render(&node_labels(&snapshot));
        if written.as_ref() != Some(&content) {
            let (p, c) = (path.clone(), content.clone());
            let result = tokio::task::spawn_blocking(move || hostfs::write(&p, c.as_bytes())).await;
            match result {
                Ok(Ok(())) => {
                    tracing::info!(path = %path.display(), "node feature labels written");
                    written = Some(content);
                    failed = false;
                }
                Ok(Err(e)) => {
                    if !failed {
                        tracing::warn!(path = %path.display(), error = %e, "cannot write the node feature file; retrying");
                    }
                    failed = true;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "node feature file writer failed; retrying");
                    failed = true;
                }
            }
        }
        let retry = async {
            if failed {
                tokio::time::sleep(RETRY_AFTER).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = retry => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
