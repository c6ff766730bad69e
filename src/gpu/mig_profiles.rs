//! Real MIG profile tables (name, memory, instance limits, placements) per GPU model, and the
//! placement check that rejects MIG layouts the hardware could not hold.
//!
//! STUB: the tables and the placement search are being written (see the helper task).

/// One GPU-instance profile of a model (a row of `nvidia-smi mig -lgip`).
#[derive(Debug, PartialEq, Eq)]
pub struct ProfileSpec {
    /// Short name without the `MIG ` prefix, e.g. `3g.40gb`, `1g.10gb+me`.
    pub name: &'static str,
    /// `nvidia-smi mig -lgip` ID column (`nvmlGpuInstanceProfileInfo_t.id`).
    pub profile_id: u32,
    /// SM slices used (the `g` count).
    pub compute_slices: u8,
    /// Memory slices used; also the placement size.
    pub memory_slices: u8,
    /// Memory of one instance in MiB.
    pub memory_mib: u64,
    /// Most instances of this profile on an empty GPU.
    pub max_instances: u8,
    /// Memory-slice positions an instance may start at (`-lgipp`).
    pub starts: &'static [u8],
}

/// A GPU model with MIG support.
#[derive(Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// Exact `nvmlDeviceGetName()` string.
    pub nvml_name: &'static str,
    /// Total memory in MiB as NVML reports it.
    pub memory_total_mib: u64,
    /// Compute (SM) slices of the whole GPU.
    pub compute_slices: u8,
    /// Memory slices of the whole GPU.
    pub memory_slices: u8,
    /// Most GPU instances at once.
    pub max_gpu_instances: u8,
    /// GPU-instance profiles.
    pub profiles: &'static [ProfileSpec],
}

/// Where one instance of a layout was placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub profile: &'static ProfileSpec,
    /// First memory slice.
    pub start: u8,
    /// GPU instance id, derived deterministically from the placement.
    pub gpu_instance_id: u32,
}

/// Why a MIG layout cannot exist on a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("unknown MIG profile {profile:?} for {model} (known: {})", .known.join(", "))]
    UnknownProfile {
        profile: String,
        model: String,
        known: Vec<&'static str>,
    },
    #[error("{count} instances of {profile} exceed its limit of {max} on {model}")]
    TooManyInstances {
        profile: String,
        model: String,
        count: usize,
        max: u8,
    },
    #[error("{count} GPU instances exceed the limit of {max} on {model}")]
    TooManyGpuInstances { model: String, count: usize, max: u8 },
    #[error("layout [{}] does not fit on {model}: no combination of placements leaves the instances apart", .layout.join(", "))]
    NoPlacement { model: String, layout: Vec<String> },
}

/// Every model with a MIG table.
pub fn models() -> &'static [ModelSpec] {
    &[]
}

/// The model whose NVML name is `nvml_name`.
pub fn model(nvml_name: &str) -> Option<&'static ModelSpec> {
    models().iter().find(|m| m.nvml_name == nvml_name)
}

impl ModelSpec {
    /// The profile named `name`.
    pub fn profile(&self, name: &str) -> Option<&'static ProfileSpec> {
        let profiles: &'static [ProfileSpec] = self.profiles;
        profiles.iter().find(|p| p.name == name)
    }

    /// Place `layout` (profile names, in the order given) on an empty GPU. The result is in the
    /// order of `layout` and is deterministic.
    pub fn place(&self, layout: &[&str]) -> Result<Vec<Placement>, LayoutError> {
        let _ = layout;
        Err(LayoutError::NoPlacement {
            model: self.nvml_name.to_string(),
            layout: vec![],
        })
    }
}
