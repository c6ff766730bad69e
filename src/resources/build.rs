//! Inventory + Config + Health → ResourceSet. Pure.
//!
//! 1. Base units per source resource, by MIG strategy: whole GPUs under `nvidia.com/gpu`, MIG
//!    devices under `nvidia.com/gpu` (single) or `nvidia.com/mig-<profile>` (mixed).
//! 2. Sharing rules (time-slicing, vGPU) claim units of their source resource; a unit belongs to
//!    at most one rule.
//! 3. Unclaimed units stay exclusive under their source name; claimed ones become replicas or
//!    slices under the rule's advertised name. A name may hold only one kind of device.

use std::collections::BTreeMap;

use super::names;
use super::{ids, Device, Health, MigTarget, Resource, ResourceSet, Strategy, Target, VgpuSlice};
use crate::config::{Config, DeviceIdStrategy, DeviceRef, DeviceSelector, MigStrategy};
use crate::gpu::{Gpu, Inventory, MigDevice};
use crate::health::HealthState;

/// Why the resources could not be built on this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The MIG layout does not fit the MIG strategy (names the GPU).
    #[error("MIG: {0}")]
    Mig(String),
    /// A config rule that only fails on this node (a count overlapping a list, a missing device).
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    /// A device the config requires is not on this node (`imex.required`).
    #[error("IMEX: {0}")]
    Imex(#[from] crate::extras::MissingImexChannel),
}

impl BuildError {
    /// True when the node, not the config, is at fault (MIG layout, a missing required device):
    /// `run` exits 1 for these, 2 for config rules.
    pub fn is_node_problem(&self) -> bool {
        matches!(self, BuildError::Mig(_) | BuildError::Imex(_))
    }
}

/// The resources, plus problems that were tolerated (`failOnInitError: false`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Built {
    pub resources: ResourceSet,
    /// Tolerated problems, to log.
    pub warnings: Vec<String>,
}

/// A device the node offers before sharing: a whole GPU or a MIG device.
#[derive(Debug, Clone, Copy)]
struct Unit<'a> {
    gpu: &'a Gpu,
    mig: Option<&'a MigDevice>,
}

impl Unit<'_> {
    /// The ID the kubelet sees (before any replica / slice suffix): always the GPU or MIG UUID,
    /// whatever `deviceIDStrategy` says, as in NVIDIA's plugin. An index is no stable identity:
    /// it moves when a GPU is lost or the driver renumbers, and the kubelet's checkpoint would
    /// then bind a running pod to a different GPU.
    fn id(&self) -> String {
        self.mig
            .map_or_else(|| self.gpu.uuid.clone(), |m| m.uuid.clone())
    }

    /// The name the container is handed (`NVIDIA_VISIBLE_DEVICES`, volume-mount paths, CDI
    /// device names): the UUID, or under `deviceIDStrategy: index` `<gpu>` / `<gpu>:<mig>`.
    fn visible_id(&self, strategy: DeviceIdStrategy) -> String {
        match strategy {
            DeviceIdStrategy::Uuid => self.id(),
            DeviceIdStrategy::Index => ids::index_name(self.gpu.index, self.mig.map(|m| m.index)),
        }
    }

    fn describe(&self) -> String {
        match self.mig {
            Some(m) => format!("MIG device {}:{} ({})", self.gpu.index, m.index, m.uuid),
            None => format!("GPU {} ({})", self.gpu.index, self.gpu.uuid),
        }
    }

    fn memory_mib(&self) -> u64 {
        self.mig.map_or(self.gpu.memory_mib, |m| m.memory_mib)
    }

    fn matches(&self, r: &DeviceRef) -> bool {
        match (r, self.mig) {
            (DeviceRef::Index(i), _) => self.gpu.index == *i,
            (DeviceRef::MigIndex(g, m), Some(mig)) => self.gpu.index == *g && mig.index == *m,
            (DeviceRef::MigIndex(..), None) => false,
            (DeviceRef::Uuid(u), Some(mig)) => mig.uuid == *u || self.gpu.uuid == *u,
            (DeviceRef::Uuid(u), None) => self.gpu.uuid == *u,
        }
    }

    fn target(&self, replica: Option<u32>, vgpu: Option<VgpuSlice>) -> Target {
        Target {
            gpu_index: self.gpu.index,
            gpu_uuid: self.gpu.uuid.clone(),
            gpu_minor: self.gpu.minor_number,
            mig: self.mig.map(|m| {
                let (gi_cap, ci_cap) = m.cap_minors(self.gpu.minor_number);
                MigTarget {
                    uuid: m.uuid.clone(),
                    profile: m.profile.clone(),
                    index: m.index,
                    gpu_instance_id: m.gpu_instance_id,
                    compute_instance_id: m.compute_instance_id,
                    memory_mib: m.memory_mib,
                    gpu_instance_cap_minor: gi_cap,
                    compute_instance_cap_minor: ci_cap,
                }
            }),
            replica,
            vgpu,
        }
    }

    fn health(&self, health: &HealthState) -> Health {
        Health::from_healthy(match self.mig {
            Some(m) => health.mig_healthy(&self.gpu.uuid, &m.uuid),
            None => health.gpu_healthy(&self.gpu.uuid),
        })
    }
}

/// A sharing rule, whichever section it came from.
struct Rule<'a> {
    path: String,
    source: &'a str,
    advertised: String,
    devices: &'a DeviceSelector,
    kind: RuleKind,
}

enum RuleKind {
    TimeSliced {
        replicas: u32,
    },
    /// Replicas served by one MPS control daemon per resource.
    Mps {
        replicas: u32,
    },
    Vgpu {
        memory_mib: u64,
        compute_percent: Option<u32>,
    },
}

/// Build what the node advertises. With `failOnInitError: false`, MIG problems are tolerated
/// (the MIG GPUs concerned are left out and the problem is returned as a warning); every other
/// problem is an error.
pub fn build(
    inventory: &Inventory,
    config: &Config,
    health: &HealthState,
) -> Result<Built, Vec<BuildError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let units = base_units(inventory, config, &mut errors, &mut warnings);
    let rules = rules(config);
    let id_strategy = config.plugin.device_id_strategy;

    // Which rule (by position) claims each unit of each source.
    let mut claims: BTreeMap<&str, Vec<Option<usize>>> = units
        .iter()
        .map(|(source, list)| (source.as_str(), vec![None; list.len()]))
        .collect();
    let mut selections: Vec<Vec<usize>> = Vec::with_capacity(rules.len());
    for (r, rule) in rules.iter().enumerate() {
        let list = units.get(rule.source).map(Vec::as_slice).unwrap_or(&[]);
        let selected = select(rule, list, &mut warnings);
        let claim = claims.entry(rule.source).or_default();
        for &u in &selected {
            if let Some(other) = claim.get(u).copied().flatten() {
                errors.push(BuildError::Config {
                    path: rule.path.clone(),
                    message: format!(
                        "selects {} which {} already selects; a device belongs to one sharing mode",
                        list[u].describe(),
                        rules[other].path
                    ),
                });
            } else if let Some(slot) = claim.get_mut(u) {
                *slot = Some(r);
            }
            if matches!(rule.kind, RuleKind::Vgpu { .. }) && list[u].mig.is_some() {
                errors.push(BuildError::Config {
                    path: rule.path.clone(),
                    message: format!(
                        "{} is a MIG device; vGPU slices are cut from whole GPUs (use migStrategy none or mixed)",
                        list[u].describe()
                    ),
                });
            }
        }
        selections.push(selected);
    }

    let mut resources: BTreeMap<String, Resource> = BTreeMap::new();
    let mut insert = |resource: Resource, origin: &str, errors: &mut Vec<BuildError>| {
        if resource.devices.is_empty() {
            return;
        }
        if let Some(existing) = resources.get(&resource.name) {
            errors.push(BuildError::Config {
                path: origin.to_string(),
                message: format!(
                    "{} would hold both {} and {} devices; a resource name cannot mix them (set rename, e.g. {}.shared)",
                    resource.name,
                    existing.strategy.as_str(),
                    resource.strategy.as_str(),
                    resource.name
                ),
            });
            return;
        }
        resources.insert(resource.name.clone(), resource);
    };

    // Unclaimed units stay under their source name.
    for (source, list) in &units {
        let claim = &claims[source.as_str()];
        let devices: Vec<Device> = list
            .iter()
            .zip(claim)
            .filter(|(_, c)| c.is_none())
            .map(|(unit, _)| Device {
                id: unit.id(),
                visible_id: unit.visible_id(id_strategy),
                health: unit.health(health),
                numa_node: unit.gpu.numa_node,
                target: unit.target(None, None),
            })
            .collect();
        let strategy = if list.iter().any(|u| u.mig.is_some()) {
            Strategy::Mig
        } else {
            Strategy::Exclusive
        };
        insert(
            Resource::new(source.clone(), strategy, devices, false),
            source,
            &mut errors,
        );
    }

    // Claimed units become replicas or slices.
    for (rule, selected) in rules.iter().zip(&selections) {
        let list = units.get(rule.source).map(Vec::as_slice).unwrap_or(&[]);
        let mut devices = Vec::new();
        for &u in selected {
            let unit = list[u];
            let base = unit.id();
            let visible = unit.visible_id(id_strategy);
            match rule.kind {
                RuleKind::Mps { .. } if unit.mig.is_some() => {
                    // migStrategy single advertises MIG devices as nvidia.com/gpu; NVIDIA's
                    // plugin refuses to start MPS on them.
                    errors.push(BuildError::Config {
                        path: format!("{}.name", rule.path),
                        message: format!(
                            "sharing using MPS is not supported for MIG devices ({})",
                            unit.describe()
                        ),
                    });
                }
                RuleKind::TimeSliced { replicas } | RuleKind::Mps { replicas } => {
                    // An MPS resource whose daemon is not ready has no usable replica.
                    let usable = if health.resource_healthy(&rule.advertised) {
                        unit.health(health)
                    } else {
                        Health::Unhealthy
                    };
                    for n in 0..replicas {
                        devices.push(Device {
                            id: ids::replica(&base, n),
                            health: usable,
                            numa_node: unit.gpu.numa_node,
                            target: unit.target(Some(n), None),
                            visible_id: visible.clone(),
                        });
                    }
                }
                RuleKind::Vgpu {
                    memory_mib,
                    compute_percent,
                } => {
                    let slices = unit.memory_mib() / memory_mib;
                    if slices == 0 {
                        errors.push(BuildError::Config {
                            path: format!("{}.memoryMiB", rule.path),
                            message: format!(
                                "{memory_mib} MiB is more than {} has ({} MiB): no slice fits",
                                unit.describe(),
                                unit.memory_mib()
                            ),
                        });
                    }
                    for n in 0..slices.min(u64::from(u32::MAX)) as u32 {
                        devices.push(Device {
                            id: ids::vgpu_slice(&base, n),
                            health: unit.health(health),
                            numa_node: unit.gpu.numa_node,
                            target: unit.target(
                                None,
                                Some(VgpuSlice {
                                    slice: n,
                                    memory_mib,
                                    compute_percent,
                                }),
                            ),
                            visible_id: visible.clone(),
                        });
                    }
                }
            }
        }
        let (strategy, fail_gt_one) = match rule.kind {
            RuleKind::TimeSliced { .. } => (
                Strategy::TimeSliced,
                config.time_slicing.fail_requests_greater_than_one,
            ),
            RuleKind::Mps { .. } => (Strategy::Mps, config.mps.fail_requests_greater_than_one),
            RuleKind::Vgpu { .. } => (Strategy::Vgpu, false),
        };
        insert(
            Resource::new(rule.advertised.clone(), strategy, devices, fail_gt_one),
            &rule.path,
            &mut errors,
        );
    }

    if errors.is_empty() {
        Ok(Built {
            resources: ResourceSet { resources },
            warnings,
        })
    } else {
        Err(errors)
    }
}

/// Units per source resource name, in GPU / MIG index order.
fn base_units<'a>(
    inventory: &'a Inventory,
    config: &Config,
    errors: &mut Vec<BuildError>,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, Vec<Unit<'a>>> {
    let mut units: BTreeMap<String, Vec<Unit<'a>>> = BTreeMap::new();
    let whole = |gpu: &'a Gpu| Unit { gpu, mig: None };
    let lenient = !config.fail_on_init_error;
    match config.mig_strategy {
        MigStrategy::None => {
            for gpu in &inventory.gpus {
                units.entry(names::GPU.into()).or_default().push(whole(gpu));
            }
        }
        MigStrategy::Single => {
            let problems = single_strategy_problems(inventory);
            let any_mig = inventory.gpus.iter().any(|g| g.mig_enabled);
            if problems.is_empty() {
                for gpu in &inventory.gpus {
                    let list = units.entry(names::GPU.into()).or_default();
                    if any_mig {
                        list.extend(gpu.mig_devices.iter().map(|m| Unit { gpu, mig: Some(m) }));
                    } else {
                        list.push(whole(gpu));
                    }
                }
            } else if lenient {
                warnings.extend(problems.into_iter().map(|p| {
                    format!("MIG: {p}; continuing without MIG resources (failOnInitError: false)")
                }));
                for gpu in inventory.gpus.iter().filter(|g| !g.mig_enabled) {
                    units.entry(names::GPU.into()).or_default().push(whole(gpu));
                }
            } else {
                errors.extend(problems.into_iter().map(BuildError::Mig));
            }
        }
        MigStrategy::Mixed => {
            for gpu in &inventory.gpus {
                if !gpu.mig_enabled {
                    units.entry(names::GPU.into()).or_default().push(whole(gpu));
                    continue;
                }
                if gpu.mig_devices.is_empty() {
                    warnings.push(format!(
                        "MIG: GPU {} ({}) has MIG enabled but no MIG devices; it advertises nothing",
                        gpu.index, gpu.uuid
                    ));
                }
                for mig in &gpu.mig_devices {
                    units
                        .entry(names::mig_resource(&mig.profile))
                        .or_default()
                        .push(Unit {
                            gpu,
                            mig: Some(mig),
                        });
                }
            }
        }
    }
    units
}

/// Why `migStrategy: single` cannot be applied, one message per GPU / profile problem.
fn single_strategy_problems(inventory: &Inventory) -> Vec<String> {
    let mut problems = Vec::new();
    if !inventory.gpus.iter().any(|g| g.mig_enabled) {
        return problems;
    }
    let mut profiles: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for gpu in &inventory.gpus {
        if !gpu.mig_enabled {
            problems.push(format!(
                "migStrategy single needs every GPU in MIG mode, but GPU {} ({}) has MIG disabled while others have it enabled; use migStrategy mixed",
                gpu.index, gpu.uuid
            ));
        } else if gpu.mig_devices.is_empty() {
            problems.push(format!(
                "migStrategy single: GPU {} ({}) has MIG enabled but no MIG devices; create MIG instances or disable MIG on it",
                gpu.index, gpu.uuid
            ));
        }
        for mig in &gpu.mig_devices {
            let list = profiles.entry(&mig.profile).or_default();
            if !list.contains(&gpu.index) {
                list.push(gpu.index);
            }
        }
    }
    if profiles.len() > 1 {
        let detail: Vec<String> = profiles
            .iter()
            .map(|(p, gpus)| {
                let gpus: Vec<String> = gpus.iter().map(ToString::to_string).collect();
                format!("{p} on GPU {}", gpus.join(", "))
            })
            .collect();
        problems.push(format!(
            "migStrategy single needs one MIG profile on the node, found {}; use migStrategy mixed",
            detail.join(", ")
        ));
    }
    problems
}

fn rules(config: &Config) -> Vec<Rule<'_>> {
    let mut out = Vec::new();
    for (i, r) in config.time_slicing.resources.iter().enumerate() {
        out.push(Rule {
            path: format!("sharing.timeSlicing.resources[{i}]"),
            source: &r.name,
            advertised: r.advertised(config.time_slicing.rename_by_default),
            devices: &r.devices,
            kind: RuleKind::TimeSliced {
                replicas: r.replicas,
            },
        });
    }
    for (i, r) in config.mps.resources.iter().enumerate() {
        out.push(Rule {
            path: format!("sharing.mps.resources[{i}]"),
            source: &r.name,
            advertised: r.advertised(config.mps.rename_by_default),
            devices: &r.devices,
            kind: RuleKind::Mps {
                replicas: r.replicas,
            },
        });
    }
    for (i, r) in config.vgpu.iter().enumerate() {
        out.push(Rule {
            path: format!("sharing.vgpu.resources[{i}]"),
            source: &r.name,
            advertised: r.advertised(),
            devices: &r.devices,
            kind: RuleKind::Vgpu {
                memory_mib: r.memory_mib,
                compute_percent: r.compute_percent,
            },
        });
    }
    out
}

/// Positions in `units` that `rule.devices` selects. One ConfigMap serves many nodes: a
/// reference to a device this node does not have selects nothing here, and a count larger than
/// the node's devices takes them all; both with a warning, not an error.
fn select(rule: &Rule<'_>, units: &[Unit<'_>], warnings: &mut Vec<String>) -> Vec<usize> {
    match rule.devices {
        DeviceSelector::All => (0..units.len()).collect(),
        DeviceSelector::Count(n) => {
            let n = *n as usize;
            if n > units.len() {
                warnings.push(format!(
                    "{}.devices: asks for {n} {} device(s), this node has {}: taking them all",
                    rule.path,
                    rule.source,
                    units.len()
                ));
            }
            (0..n.min(units.len())).collect()
        }
        DeviceSelector::List(refs) => {
            let mut out = Vec::new();
            for (k, r) in refs.iter().enumerate() {
                let matched: Vec<usize> =
                    (0..units.len()).filter(|&u| units[u].matches(r)).collect();
                if matched.is_empty() {
                    warnings.push(format!(
                        "{}.devices[{k}]: {r} matches no {} device on this node; it selects nothing here",
                        rule.path, rule.source
                    ));
                }
                for u in matched {
                    if !out.contains(&u) {
                        out.push(u);
                    }
                }
            }
            out.sort_unstable();
            out
        }
    }
}

#[cfg(test)]
mod tests;
