//! Real MIG profile tables (name, memory, instance limits, placements) per GPU model, and the
//! placement check that rejects MIG layouts the hardware could not hold.
//!
//! The numbers are copied from `nvidia-smi mig -lgip` / `-lgipp` output and NVIDIA's MIG user
//! guide, so the mock backend only ever shows layouts a real GPU could have. Memory sizes depend
//! on the driver branch; each table says which driver its numbers come from. Placement starts and
//! sizes are in memory slices, exactly as `-lgipp` prints them (`{0,4}:4`).

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
    /// The profile of this instance (points into the model's table).
    pub profile: &'static ProfileSpec,
    /// First memory slice.
    pub start: u8,
    /// GPU instance id, derived deterministically from the placement.
    pub gpu_instance_id: u32,
}

/// Why a MIG layout cannot exist on a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A name is not a GPU-instance profile of the model (typo, or a profile of another model).
    #[error("unknown MIG profile {profile:?} for {model} (known: {})", .known.join(", "))]
    UnknownProfile {
        profile: String,
        model: String,
        known: Vec<&'static str>,
    },
    /// More instances of one profile than `-lgip` "Instances Total" allows.
    #[error("{count} instances of {profile} exceed its limit of {max} on {model}")]
    TooManyInstances {
        profile: String,
        model: String,
        count: usize,
        max: u8,
    },
    /// More GPU instances in total than the model supports.
    #[error("{count} GPU instances exceed the limit of {max} on {model}")]
    TooManyGpuInstances {
        model: String,
        count: usize,
        max: u8,
    },
    /// The counts are fine, but no choice of start positions keeps the memory slices apart.
    #[error("layout [{}] does not fit on {model}: no combination of placements leaves the instances apart", .layout.join(", "))]
    NoPlacement { model: String, layout: Vec<String> },
}

/// Builds one table row; keeps the tables one line per profile.
const fn prof(
    name: &'static str,
    profile_id: u32,
    compute_slices: u8,
    memory_slices: u8,
    memory_mib: u64,
    max_instances: u8,
    starts: &'static [u8],
) -> ProfileSpec {
    ProfileSpec {
        name,
        profile_id,
        compute_slices,
        memory_slices,
        memory_mib,
        max_instances,
        starts,
    }
}

// Start positions shared by the 8-memory-slice models (A100, H100, H200, B200).
/// 1-slice profiles: 0..=6 (slice 7 is never a 1g start).
const S8_SIZE1: &[u8] = &[0, 1, 2, 3, 4, 5, 6];
/// `1g.<2 slices>` profiles (profile ID 15).
const S8_SIZE2_1G: &[u8] = &[0, 2, 4, 6];
/// `2g` profiles (profile ID 14): 6 is not a 2g start.
const S8_SIZE2_2G: &[u8] = &[0, 2, 4];
/// `3g` profiles: either half.
const S8_SIZE4_3G: &[u8] = &[0, 4];
/// `4g` and full-GPU profiles: only slice 0.
const S_ZERO: &[u8] = &[0];
// Start positions of the 4-memory-slice A30.
/// A30 1-slice profiles.
const S4_SIZE1: &[u8] = &[0, 1, 2, 3];
/// A30 2-slice profiles.
const S4_SIZE2: &[u8] = &[0, 2];

/// A100-SXM4-40GB: lgip/lgipp example in the MIG user guide (DGX A100, driver not stated);
/// total 40960 MiB and 3g.20gb = 19968 MiB seen on driver 535.104.12. 1g.10gb and 2g.10gb
/// (lgip 9.62 GiB) are snapped to 9.625 GiB. Do not reuse these for A100-PCIE-40GB.
const A100_SXM4_40GB: &[ProfileSpec] = &[
    prof("1g.5gb", 19, 1, 1, 4864, 7, S8_SIZE1),
    prof("1g.5gb+me", 20, 1, 1, 4864, 1, S8_SIZE1),
    prof("1g.10gb", 15, 1, 2, 9856, 4, S8_SIZE2_1G),
    prof("2g.10gb", 14, 2, 2, 9856, 3, S8_SIZE2_2G),
    prof("3g.20gb", 9, 3, 4, 19968, 2, S8_SIZE4_3G),
    prof("4g.20gb", 5, 4, 4, 19968, 1, S_ZERO),
    prof("7g.40gb", 0, 7, 8, 40192, 1, S_ZERO),
];

/// A100-SXM4-80GB: lgip from driver 590.48.01 (HAMi PR #1847) for 1g.10gb, 2g.20gb, 3g.40gb and
/// 7g.80gb; +me and 4g rows as on A100 80GB PCIe (515.86.01). The 1g.20gb row (R525+) is
/// inferred (same memory as 2g.20gb, ID 15 as on A100-40GB). Placements: A100 lgipp.
const A100_SXM4_80GB: &[ProfileSpec] = &[
    prof("1g.10gb", 19, 1, 1, 9728, 7, S8_SIZE1),
    prof("1g.10gb+me", 20, 1, 1, 9728, 1, S8_SIZE1),
    prof("1g.20gb", 15, 1, 2, 19968, 4, S8_SIZE2_1G), // inferred
    prof("2g.20gb", 14, 2, 2, 19968, 3, S8_SIZE2_2G),
    prof("3g.40gb", 9, 3, 4, 40192, 2, S8_SIZE4_3G),
    prof("4g.40gb", 5, 4, 4, 40192, 1, S_ZERO),
    prof("7g.80gb", 0, 7, 8, 80896, 1, S_ZERO),
];

/// A100 80GB PCIe: lgip and MIG device sizes from driver 515.86.01 (Azure). 1g.20gb was not
/// offered there (needs R525+); its row is inferred like on A100-SXM4-80GB. Placements: A100
/// lgipp.
const A100_80GB_PCIE: &[ProfileSpec] = &[
    prof("1g.10gb", 19, 1, 1, 9728, 7, S8_SIZE1),
    prof("1g.10gb+me", 20, 1, 1, 9728, 1, S8_SIZE1),
    prof("1g.20gb", 15, 1, 2, 19968, 4, S8_SIZE2_1G), // inferred
    prof("2g.20gb", 14, 2, 2, 19968, 3, S8_SIZE2_2G),
    prof("3g.40gb", 9, 3, 4, 40192, 2, S8_SIZE4_3G),
    prof("4g.40gb", 5, 4, 4, 40192, 1, S_ZERO),
    prof("7g.80gb", 0, 7, 8, 80896, 1, S_ZERO),
];

/// A30: lgip, lgipp and MIG device sizes from driver 535.183.01. 4g.24gb (lgip 23.44 GiB) is
/// snapped to 23.4375 GiB. Four memory slices, four compute slices.
const A30: &[ProfileSpec] = &[
    prof("1g.6gb", 14, 1, 1, 5952, 4, S4_SIZE1),
    prof("1g.6gb+me", 21, 1, 1, 5952, 1, S4_SIZE1),
    prof("2g.12gb", 5, 2, 2, 11968, 2, S4_SIZE2),
    prof("2g.12gb+me", 6, 2, 2, 11968, 1, S4_SIZE2),
    prof("4g.24gb", 0, 4, 4, 24000, 1, S_ZERO),
];

/// H100 80GB HBM3 (SXM5): lgip of recent drivers (same values in R570+ output), lgipp from a
/// recent driver; total 81559 MiB from 525.125.06. 19.62 GiB rows snapped to 19.625 GiB. With
/// R525 the sizes were smaller (9.62/19.50/39.25/79.00 GiB).
const H100_80GB_HBM3: &[ProfileSpec] = &[
    prof("1g.10gb", 19, 1, 1, 9984, 7, S8_SIZE1),
    prof("1g.10gb+me", 20, 1, 1, 9984, 1, S8_SIZE1),
    prof("1g.20gb", 15, 1, 2, 20096, 4, S8_SIZE2_1G),
    prof("2g.20gb", 14, 2, 2, 20096, 3, S8_SIZE2_2G),
    prof("3g.40gb", 9, 3, 4, 40448, 2, S8_SIZE4_3G),
    prof("4g.40gb", 5, 4, 4, 40448, 1, S_ZERO),
    prof("7g.80gb", 0, 7, 8, 81152, 1, S_ZERO),
];

/// H100 PCIe: lgip and MIG device sizes from driver 570.169 (Scaleway), lgipp from 525.125.06.
/// 19.62 GiB rows snapped to 19.625 GiB.
const H100_PCIE: &[ProfileSpec] = &[
    prof("1g.10gb", 19, 1, 1, 9984, 7, S8_SIZE1),
    prof("1g.10gb+me", 20, 1, 1, 9984, 1, S8_SIZE1),
    prof("1g.20gb", 15, 1, 2, 20096, 4, S8_SIZE2_1G),
    prof("2g.20gb", 14, 2, 2, 20096, 3, S8_SIZE2_2G),
    prof("3g.40gb", 9, 3, 4, 40448, 2, S8_SIZE4_3G),
    prof("4g.40gb", 5, 4, 4, 40448, 1, S_ZERO),
    prof("7g.80gb", 0, 7, 8, 81152, 1, S_ZERO),
];

/// H100 NVL (94GB): lgip, lgipp and MIG device sizes from driver 560.35.03 (Azure
/// NC40ads_H100_v5). 7g.94gb (lgip 93.12 GiB) is snapped to 93.125 GiB.
const H100_NVL: &[ProfileSpec] = &[
    prof("1g.12gb", 19, 1, 1, 11008, 7, S8_SIZE1),
    prof("1g.12gb+me", 20, 1, 1, 11008, 1, S8_SIZE1),
    prof("1g.24gb", 15, 1, 2, 22144, 4, S8_SIZE2_1G),
    prof("2g.24gb", 14, 2, 2, 22144, 3, S8_SIZE2_2G),
    prof("3g.47gb", 9, 3, 4, 47488, 2, S8_SIZE4_3G),
    prof("4g.47gb", 5, 4, 4, 47488, 1, S_ZERO),
    prof("7g.94gb", 0, 7, 8, 95360, 1, S_ZERO),
];

/// H200 (SXM, 141GB): `nvidia-smi mig -lgip` read on a real H200 with driver 580.159.04
/// (2026-11-28, gpu-agent's hardware check: 16.00 / 32.50 / 69.75 / 140.00 GiB; total 143771 MiB
/// as NVML reports it). An older driver (mig-parted issue #120, 2024-09) printed 32.25 / 69.50 /
/// 139.75. Profile ids and instance counts as read; placements follow H100 (same fractions).
const H200: &[ProfileSpec] = &[
    prof("1g.18gb", 19, 1, 1, 16384, 7, S8_SIZE1),
    prof("1g.18gb+me", 20, 1, 1, 16384, 1, S8_SIZE1),
    prof("1g.35gb", 15, 1, 2, 33280, 4, S8_SIZE2_1G),
    prof("2g.35gb", 14, 2, 2, 33280, 3, S8_SIZE2_2G),
    prof("3g.71gb", 9, 3, 4, 71424, 2, S8_SIZE4_3G),
    prof("4g.71gb", 5, 4, 4, 71424, 1, S_ZERO),
    prof("7g.141gb", 0, 7, 8, 143360, 1, S_ZERO),
];

/// H200 NVL: no lgip was found. The profile names appear in real MIG device names and
/// mig-parted groups the model with H200, so it shares the H200 table above: its sizes are the
/// ones read on the H200 with driver 580.159.04 and follow that table when it changes. Only the
/// total (143771 MiB on driver 580.126.20) was seen on an H200 NVL; all ids, sizes and
/// placements are inferred.
const H200_NVL: &[ProfileSpec] = H200;

/// B200: lgip from mig-parted PR #187 (2025-03) for the first four rows (PR #166, 2025-01,
/// showed 22.00 GiB for 1g.23gb); total 183359 MiB on driver 570.172.08. Placements are
/// inferred from H100 (same fractions and profile ids).
const B200: &[ProfileSpec] = &[
    prof("1g.23gb", 19, 1, 1, 20992, 7, S8_SIZE1),
    prof("1g.23gb+me", 20, 1, 1, 20992, 1, S8_SIZE1),
    prof("1g.45gb", 15, 1, 2, 45312, 4, S8_SIZE2_1G),
    prof("2g.45gb", 14, 2, 2, 45312, 3, S8_SIZE2_2G),
    // Inferred rows: no lgip line was readable. IDs and counts from GKE's partitioner and the
    // docs; memory_mib = 2x / 4x the 1g.45gb size.
    prof("3g.90gb", 9, 3, 4, 90624, 2, S8_SIZE4_3G),
    prof("4g.90gb", 5, 4, 4, 90624, 1, S_ZERO),
    prof("7g.180gb", 0, 7, 8, 181248, 1, S_ZERO),
];

/// Builds a model with the usual 7 compute / 8 memory slices and at most 7 GPU instances
/// (every model here except A30).
const fn model8(
    nvml_name: &'static str,
    memory_total_mib: u64,
    profiles: &'static [ProfileSpec],
) -> ModelSpec {
    ModelSpec {
        nvml_name,
        memory_total_mib,
        compute_slices: 7,
        memory_slices: 8,
        max_gpu_instances: 7,
        profiles,
    }
}

/// Every model, in no particular order (look-ups go by NVML name).
static MODELS: [ModelSpec; 10] = [
    model8("NVIDIA A100-SXM4-40GB", 40960, A100_SXM4_40GB),
    model8("NVIDIA A100-SXM4-80GB", 81920, A100_SXM4_80GB),
    model8("NVIDIA A100 80GB PCIe", 81920, A100_80GB_PCIE),
    ModelSpec {
        nvml_name: "NVIDIA A30",
        memory_total_mib: 24576,
        compute_slices: 4,
        memory_slices: 4,
        max_gpu_instances: 4,
        profiles: A30,
    },
    model8("NVIDIA H100 80GB HBM3", 81559, H100_80GB_HBM3),
    model8("NVIDIA H100 PCIe", 81559, H100_PCIE),
    model8("NVIDIA H100 NVL", 95830, H100_NVL),
    model8("NVIDIA H200", 143771, H200),
    model8("NVIDIA H200 NVL", 143771, H200_NVL),
    model8("NVIDIA B200", 183359, B200),
];

/// Every model with a MIG table.
pub fn models() -> &'static [ModelSpec] {
    &MODELS
}

/// The model whose NVML name is `nvml_name`.
pub fn model(nvml_name: &str) -> Option<&'static ModelSpec> {
    models().iter().find(|m| m.nvml_name == nvml_name)
}

/// Bit mask of memory slices `[start, start + size)`, or `None` when the range is empty or does
/// not lie inside `total` slices (a table error; such a start is simply never used).
fn slice_mask(start: u8, size: u8, total: u8) -> Option<u64> {
    let end = u32::from(start) + u32::from(size);
    if size == 0 || end > u32::from(total) || end > u64::BITS {
        return None;
    }
    let ones = u64::MAX >> (u64::BITS - u32::from(size));
    ones.checked_shl(u32::from(start))
}

impl ModelSpec {
    /// The profile named `name`.
    pub fn profile(&self, name: &str) -> Option<&'static ProfileSpec> {
        let profiles: &'static [ProfileSpec] = self.profiles;
        profiles.iter().find(|p| p.name == name)
    }

    /// Place `layout` (profile names, in the order given) on an empty GPU. The result is in the
    /// order of `layout` and is deterministic.
    ///
    /// Checks, in this order: every name is a profile of the model, no profile exceeds its
    /// `max_instances`, the total stays within `max_gpu_instances`, and some choice of `-lgipp`
    /// starts keeps the memory-slice ranges apart. The search takes the largest instances first
    /// (input order among equals) and the lowest start first, so a layout always lands on the
    /// same slices and gets the same GPU instance ids. No compute-slice check is needed: with
    /// these placement tables non-overlapping memory never exceeds the compute slices.
    pub fn place(&self, layout: &[&str]) -> Result<Vec<Placement>, LayoutError> {
        let profiles: &'static [ProfileSpec] = self.profiles;
        // One counter per profile; the layout itself is never copied before it passed the limits.
        let mut counts = vec![0usize; profiles.len()];
        for name in layout {
            let Some(idx) = profiles.iter().position(|p| p.name == *name) else {
                return Err(LayoutError::UnknownProfile {
                    profile: (*name).to_string(),
                    model: self.nvml_name.to_string(),
                    known: profiles.iter().map(|p| p.name).collect(),
                });
            };
            if let Some(count) = counts.get_mut(idx) {
                *count = count.saturating_add(1);
            }
        }
        // Report the first over-limit profile in input order, so the message follows the user.
        for name in layout {
            let over = profiles
                .iter()
                .zip(&counts)
                .find(|(p, count)| p.name == *name && **count > usize::from(p.max_instances));
            if let Some((p, count)) = over {
                return Err(LayoutError::TooManyInstances {
                    profile: p.name.to_string(),
                    model: self.nvml_name.to_string(),
                    count: *count,
                    max: p.max_instances,
                });
            }
        }
        if layout.len() > usize::from(self.max_gpu_instances) {
            return Err(LayoutError::TooManyGpuInstances {
                model: self.nvml_name.to_string(),
                count: layout.len(),
                max: self.max_gpu_instances,
            });
        }

        // At most max_gpu_instances entries from here on.
        let resolved: Vec<&'static ProfileSpec> = layout
            .iter()
            .filter_map(|name| profiles.iter().find(|p| p.name == *name))
            .collect();
        let mut order: Vec<usize> = (0..resolved.len()).collect();
        // Stable: equal sizes keep input order.
        order.sort_by_key(|&i| std::cmp::Reverse(resolved.get(i).map_or(0, |p| p.memory_slices)));
        let items: Vec<&'static ProfileSpec> = order
            .iter()
            .filter_map(|&i| resolved.get(i).copied())
            .collect();

        let mut starts = vec![0u8; items.len()];
        if !self.search(&items, 0, 0, &mut starts) {
            return Err(LayoutError::NoPlacement {
                model: self.nvml_name.to_string(),
                layout: layout.iter().map(|s| (*s).to_string()).collect(),
            });
        }

        let mut placed: Vec<Option<Placement>> = vec![None; resolved.len()];
        for ((&input_idx, &profile), &start) in order.iter().zip(&items).zip(&starts) {
            if let Some(slot) = placed.get_mut(input_idx) {
                *slot = Some(Placement {
                    profile,
                    start,
                    gpu_instance_id: self.gpu_instance_id(profile.memory_slices, start),
                });
            }
        }
        Ok(placed.into_iter().flatten().collect())
    }

    /// Depth-first search: place `items[depth..]` on the slices not in `used`, lowest start first.
    /// Writes the chosen starts into `starts` and reports success. Depth is bounded by
    /// `max_gpu_instances`, and every step only tries the few `-lgipp` starts.
    fn search(&self, items: &[&ProfileSpec], depth: usize, used: u64, starts: &mut [u8]) -> bool {
        let Some(profile) = items.get(depth) else {
            return true;
        };
        for &start in profile.starts {
            let Some(mask) = slice_mask(start, profile.memory_slices, self.memory_slices) else {
                continue;
            };
            if used & mask != 0 {
                continue;
            }
            if self.search(items, depth + 1, used | mask, starts) {
                if let Some(slot) = starts.get_mut(depth) {
                    *slot = start;
                }
                return true;
            }
        }
        false
    }

    /// GPU instance id of an instance of `size` memory slices at `start`: the ids count the
    /// possible positions, largest sizes first (for 8 slices: 8→0, 4→1..2, 2→3..6, 1→7..13).
    /// It depends on the placement only, so the same fixture always gets the same ids, and no
    /// two non-overlapping instances share one. (The real driver hands ids out in its own order;
    /// the mock only needs them stable and unique.)
    fn gpu_instance_id(&self, size: u8, start: u8) -> u32 {
        let total = u32::from(self.memory_slices);
        let mut base = 0u32;
        for (i, p) in self.profiles.iter().enumerate() {
            let s = p.memory_slices;
            let first_of_size = !self.profiles.iter().take(i).any(|q| q.memory_slices == s);
            if s > size && first_of_size {
                base = base.saturating_add(total.checked_div(u32::from(s)).unwrap_or(0));
            }
        }
        base.saturating_add(u32::from(start).checked_div(u32::from(size)).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const H100: &str = "NVIDIA H100 80GB HBM3";

    fn m(name: &str) -> &'static ModelSpec {
        model(name).expect("model in table")
    }

    /// `(name, start, gpu_instance_id)` of a placement result, for compact asserts.
    fn summary(placed: &[Placement]) -> Vec<(&'static str, u8, u32)> {
        placed
            .iter()
            .map(|p| (p.profile.name, p.start, p.gpu_instance_id))
            .collect()
    }

    /// The result is a real configuration: names in input order, allowed starts, no overlap,
    /// compute within the GPU, unique ids.
    fn assert_sound(model: &ModelSpec, layout: &[&str], placed: &[Placement]) {
        assert_eq!(
            placed.iter().map(|p| p.profile.name).collect::<Vec<_>>(),
            layout,
            "order of {layout:?}"
        );
        let mut used = 0u64;
        let mut compute = 0u32;
        let mut ids = BTreeSet::new();
        for p in placed {
            assert!(p.profile.starts.contains(&p.start), "{p:?}");
            let mask = slice_mask(p.start, p.profile.memory_slices, model.memory_slices)
                .expect("start inside GPU");
            assert_eq!(used & mask, 0, "overlap in {layout:?}");
            used |= mask;
            compute += u32::from(p.profile.compute_slices);
            assert!(ids.insert(p.gpu_instance_id), "duplicate id in {layout:?}");
        }
        assert!(compute <= u32::from(model.compute_slices), "{layout:?}");
    }

    /// Independent oracle: the set of reachable occupancy masks, instance by instance in input
    /// order, plus the count limits.
    fn fits_oracle(model: &ModelSpec, layout: &[&str]) -> bool {
        if layout.len() > usize::from(model.max_gpu_instances) {
            return false;
        }
        for p in model.profiles {
            let n = layout.iter().filter(|n| **n == p.name).count();
            if n > usize::from(p.max_instances) {
                return false;
            }
        }
        let mut reachable = BTreeSet::from([0u64]);
        for name in layout {
            let p = model.profile(name).expect("known");
            let mut next = BTreeSet::new();
            for used in &reachable {
                for &s in p.starts {
                    let mask = slice_mask(s, p.memory_slices, model.memory_slices).unwrap();
                    if used & mask == 0 {
                        next.insert(used | mask);
                    }
                }
            }
            reachable = next;
        }
        !reachable.is_empty()
    }

    /// Every multiset of profiles of at most `max` instances, as name lists.
    fn multisets(profiles: &[&'static str], max: usize) -> Vec<Vec<&'static str>> {
        let mut out = vec![vec![]];
        let mut frontier = vec![(0usize, vec![])];
        for _ in 0..max {
            let mut next = vec![];
            for (from, set) in &frontier {
                for (i, name) in profiles.iter().enumerate().skip(*from) {
                    let mut s: Vec<&'static str> = set.clone();
                    s.push(name);
                    out.push(s.clone());
                    next.push((i, s));
                }
            }
            frontier = next;
        }
        out
    }

    #[test]
    fn all_models_are_present() {
        let names: Vec<&str> = models().iter().map(|m| m.nvml_name).collect();
        assert_eq!(
            names,
            [
                "NVIDIA A100-SXM4-40GB",
                "NVIDIA A100-SXM4-80GB",
                "NVIDIA A100 80GB PCIe",
                "NVIDIA A30",
                "NVIDIA H100 80GB HBM3",
                "NVIDIA H100 PCIe",
                "NVIDIA H100 NVL",
                "NVIDIA H200",
                "NVIDIA H200 NVL",
                "NVIDIA B200",
            ]
        );
        assert!(model("NVIDIA H100").is_none());
        assert!(model("").is_none());
    }

    #[test]
    fn known_values() {
        let h200 = m("NVIDIA H200");
        assert_eq!(h200.memory_total_mib, 143771);
        assert!(h200.profile("7g.141gb").is_some());
        assert!(h200.profile("1g.18gb").is_some());
        // Read on a real H200 with driver 580.159.04 (`nvidia-smi mig -lgip`: 32.50, 69.75, 140.00 GiB).
        assert_eq!(h200.profile("2g.35gb").unwrap().memory_mib, 33280);
        assert_eq!(h200.profile("3g.71gb").unwrap().memory_mib, 71424);
        assert_eq!(h200.profile("7g.141gb").unwrap().memory_mib, 143360);
        assert_eq!(m(H100).profile("3g.40gb").unwrap().memory_mib, 40448);
        assert_eq!(m(H100).profile("1g.10gb").unwrap().profile_id, 19);
        assert_eq!(m("NVIDIA A30").profile("1g.6gb+me").unwrap().profile_id, 21);
        assert_eq!(
            m("NVIDIA H100 NVL").profile("3g.47gb").unwrap().memory_mib,
            47488
        );
        assert_eq!(
            m("NVIDIA A100-SXM4-80GB")
                .profile("7g.80gb")
                .unwrap()
                .memory_mib,
            80896
        );
        assert!(m(H100).profile("MIG 3g.40gb").is_none());
    }

    #[test]
    fn tables_are_sane() {
        for model in models() {
            let who = model.nvml_name;
            assert!(model.memory_slices >= 1 && u32::from(model.memory_slices) <= u64::BITS);
            assert!(model.max_gpu_instances >= 1, "{who}");
            let full = model
                .profiles
                .iter()
                .find(|p| p.memory_slices == model.memory_slices)
                .unwrap_or_else(|| panic!("{who}: no full-GPU profile"));
            assert_eq!(full.compute_slices, model.compute_slices, "{who}");
            assert_eq!(full.starts, [0], "{who}");
            assert_eq!(full.max_instances, 1, "{who}");
            let mut names = BTreeSet::new();
            let mut ids = BTreeSet::new();
            for p in model.profiles {
                assert!(names.insert(p.name), "{who}: duplicate {}", p.name);
                assert!(
                    ids.insert(p.profile_id),
                    "{who}: duplicate id {}",
                    p.profile_id
                );
                assert!(
                    p.name.starts_with(&format!("{}g.", p.compute_slices)),
                    "{who}: {}",
                    p.name
                );
                assert!(
                    p.memory_slices >= 1 && p.compute_slices >= 1,
                    "{who}: {}",
                    p.name
                );
                assert!(p.compute_slices <= p.memory_slices, "{who}: {}", p.name);
                assert!(
                    p.memory_mib > 0 && p.memory_mib <= model.memory_total_mib,
                    "{who}"
                );
                assert!(p.max_instances >= 1, "{who}: {}", p.name);
                assert!(
                    p.max_instances <= model.max_gpu_instances,
                    "{who}: {}",
                    p.name
                );
                assert!(!p.starts.is_empty(), "{who}: {}", p.name);
                assert!(
                    p.starts.windows(2).all(|w| w[0] < w[1]),
                    "{who}: {}",
                    p.name
                );
                for &s in p.starts {
                    assert!(
                        u32::from(s) + u32::from(p.memory_slices) <= u32::from(model.memory_slices),
                        "{who}: {} @{s}",
                        p.name
                    );
                    assert_eq!(s % p.memory_slices, 0, "{who}: {} @{s} unaligned", p.name);
                }
                // At least one start per allowed instance.
                assert!(
                    p.starts.len() >= usize::from(p.max_instances),
                    "{who}: {}",
                    p.name
                );
            }
        }
    }

    /// The yaml's `rules.compute_check`: any set of non-overlapping placements of these tables
    /// stays within the compute slices and the GI limit, so `place` need not count compute.
    #[test]
    fn memory_bound_implies_compute_bound() {
        fn walk(model: &ModelSpec, used: u64, compute: u32, count: u32, next_slice: u8) {
            assert!(
                compute <= u32::from(model.compute_slices),
                "{}",
                model.nvml_name
            );
            assert!(
                count <= u32::from(model.max_gpu_instances),
                "{}",
                model.nvml_name
            );
            for slice in next_slice..model.memory_slices {
                for p in model.profiles {
                    if !p.starts.contains(&slice) {
                        continue;
                    }
                    let mask = slice_mask(slice, p.memory_slices, model.memory_slices).unwrap();
                    if used & mask == 0 {
                        let c = compute + u32::from(p.compute_slices);
                        walk(model, used | mask, c, count + 1, slice + p.memory_slices);
                    }
                }
            }
        }
        for model in models() {
            walk(model, 0, 0, 0, 0);
        }
    }

    #[test]
    fn h100_search_result_is_exact() {
        let layout = ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"];
        let placed = m(H100).place(&layout).unwrap();
        assert_eq!(
            summary(&placed),
            [
                ("3g.40gb", 4, 2),
                ("2g.20gb", 0, 3),
                ("1g.10gb", 2, 9),
                ("1g.10gb", 3, 10),
            ]
        );
    }

    #[test]
    fn h100_valid_examples() {
        let valid: &[&[&str]] = &[
            &["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"],
            &["4g.40gb", "3g.40gb"],
            &["3g.40gb", "3g.40gb"],
            &["1g.10gb"; 7],
            &[
                "1g.10gb+me",
                "1g.10gb",
                "1g.10gb",
                "1g.10gb",
                "1g.10gb",
                "1g.10gb",
                "1g.10gb",
            ],
            &[
                "1g.20gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb",
            ],
            &["4g.40gb", "2g.20gb", "1g.10gb"],
            &["4g.40gb", "1g.10gb", "1g.10gb", "1g.10gb"],
            &["4g.40gb", "1g.20gb", "1g.20gb"],
            &["2g.20gb", "2g.20gb", "2g.20gb", "1g.10gb"],
            &["3g.40gb", "2g.20gb", "2g.20gb"],
            &["3g.40gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb"],
            &["1g.20gb"; 4],
            &["7g.80gb"],
        ];
        let model = m(H100);
        for layout in valid {
            let placed = model
                .place(layout)
                .unwrap_or_else(|e| panic!("{layout:?}: {e}"));
            assert_sound(model, layout, &placed);
        }
        // Two witnesses the search reproduces exactly.
        let placed = model
            .place(&[
                "1g.20gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb",
            ])
            .unwrap();
        assert_eq!(
            placed.iter().map(|p| p.start).collect::<Vec<_>>(),
            [6, 0, 1, 2, 3, 4, 5]
        );
        let placed = model.place(&["4g.40gb", "2g.20gb", "1g.10gb"]).unwrap();
        assert_eq!(
            summary(&placed),
            [("4g.40gb", 0, 1), ("2g.20gb", 4, 5), ("1g.10gb", 6, 13)]
        );
    }

    #[test]
    fn h100_invalid_examples() {
        let model = m(H100);
        let too_many = |layout: &[&str], profile: &str, count: usize, max: u8| {
            assert_eq!(
                model.place(layout),
                Err(LayoutError::TooManyInstances {
                    profile: profile.to_string(),
                    model: H100.to_string(),
                    count,
                    max,
                }),
                "{layout:?}"
            );
        };
        too_many(&["1g.10gb"; 8], "1g.10gb", 8, 7);
        too_many(&["4g.40gb", "4g.40gb"], "4g.40gb", 2, 1);
        too_many(&["2g.20gb"; 4], "2g.20gb", 4, 3);
        too_many(&["1g.10gb+me", "1g.10gb+me"], "1g.10gb+me", 2, 1);

        let no_placement: &[&[&str]] = &[
            &["3g.40gb", "3g.40gb", "1g.10gb"],
            &["4g.40gb", "3g.40gb", "1g.10gb"],
            &["3g.40gb", "2g.20gb", "2g.20gb", "1g.10gb"],
            &["4g.40gb", "1g.10gb", "1g.10gb", "1g.10gb", "1g.10gb"],
            &["1g.20gb", "1g.20gb", "1g.20gb", "1g.20gb", "1g.10gb"],
            &["7g.80gb", "1g.10gb"],
        ];
        for layout in no_placement {
            let err = model.place(layout).unwrap_err();
            assert_eq!(
                err,
                LayoutError::NoPlacement {
                    model: H100.to_string(),
                    layout: layout.iter().map(|s| s.to_string()).collect(),
                }
            );
            assert!(err
                .to_string()
                .contains("does not fit on NVIDIA H100 80GB HBM3"));
        }
    }

    #[test]
    fn too_many_gpu_instances() {
        let mut layout = vec!["1g.10gb"; 7];
        layout.push("1g.10gb+me");
        assert_eq!(
            m(H100).place(&layout),
            Err(LayoutError::TooManyGpuInstances {
                model: H100.to_string(),
                count: 8,
                max: 7
            })
        );
        let a30 = ["1g.6gb", "1g.6gb", "1g.6gb", "1g.6gb", "1g.6gb+me"];
        assert!(matches!(
            m("NVIDIA A30").place(&a30),
            Err(LayoutError::TooManyGpuInstances {
                count: 5,
                max: 4,
                ..
            })
        ));
    }

    #[test]
    fn unknown_profile_names_profile_and_model() {
        let err = m(H100).place(&["1g.10gb", "3g.20gb"]).unwrap_err();
        let LayoutError::UnknownProfile {
            profile,
            model,
            known,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(profile, "3g.20gb");
        assert_eq!(model, H100);
        assert_eq!(known.len(), 7);
        assert!(known.contains(&"3g.40gb"));
        let text = err.to_string();
        assert!(text.contains("\"3g.20gb\""), "{text}");
        assert!(text.contains(H100), "{text}");
        assert!(text.contains("1g.10gb+me"), "{text}");
        // Unknown names win over count errors.
        let mut layout = vec!["1g.10gb"; 9];
        layout.push("bogus");
        assert!(matches!(
            m(H100).place(&layout),
            Err(LayoutError::UnknownProfile { .. })
        ));
    }

    #[test]
    fn empty_and_hostile_inputs() {
        for model in models() {
            assert_eq!(model.place(&[]), Ok(vec![]));
            assert!(model.place(&[""]).is_err());
            assert!(model.place(&["\u{0}", "7g"]).is_err());
        }
        // A huge layout is rejected on counts without copying it.
        let huge = vec!["1g.10gb"; 1_000_000];
        assert!(matches!(
            m(H100).place(&huge),
            Err(LayoutError::TooManyInstances {
                count: 1_000_000,
                max: 7,
                ..
            })
        ));
    }

    #[test]
    fn result_follows_input_order() {
        let placed = m(H100).place(&["1g.10gb", "7g.80gb"]);
        assert!(matches!(placed, Err(LayoutError::NoPlacement { .. })));
        let placed = m(H100).place(&["1g.10gb", "4g.40gb", "1g.20gb"]).unwrap();
        assert_eq!(
            summary(&placed),
            [("1g.10gb", 6, 13), ("4g.40gb", 0, 1), ("1g.20gb", 4, 5)]
        );
    }

    #[test]
    fn a100_40gb_seven_1g_get_ids_7_to_13() {
        let placed = m("NVIDIA A100-SXM4-40GB").place(&["1g.5gb"; 7]).unwrap();
        assert_eq!(
            placed
                .iter()
                .map(|p| (p.start, p.gpu_instance_id))
                .collect::<Vec<_>>(),
            (0u8..7).zip(7u32..14).collect::<Vec<_>>()
        );
        let full = m("NVIDIA A100-SXM4-40GB").place(&["7g.40gb"]).unwrap();
        assert_eq!(summary(&full), [("7g.40gb", 0, 0)]);
    }

    #[test]
    fn a30_layouts() {
        let a30 = m("NVIDIA A30");
        let ok = |layout: &[&str]| summary(&a30.place(layout).unwrap());
        assert_eq!(ok(&["4g.24gb"]), [("4g.24gb", 0, 0)]);
        assert_eq!(
            ok(&["2g.12gb", "2g.12gb"]),
            [("2g.12gb", 0, 1), ("2g.12gb", 2, 2)]
        );
        assert_eq!(
            ok(&["1g.6gb"; 4]),
            [
                ("1g.6gb", 0, 3),
                ("1g.6gb", 1, 4),
                ("1g.6gb", 2, 5),
                ("1g.6gb", 3, 6)
            ]
        );
        assert_eq!(
            ok(&["1g.6gb", "2g.12gb+me", "1g.6gb"]),
            [("1g.6gb", 2, 5), ("2g.12gb+me", 0, 1), ("1g.6gb", 3, 6)]
        );
        assert_eq!(
            ok(&["1g.6gb+me", "1g.6gb", "2g.12gb"]),
            [("1g.6gb+me", 2, 5), ("1g.6gb", 3, 6), ("2g.12gb", 0, 1)]
        );
        assert!(matches!(
            a30.place(&["1g.6gb"; 5]),
            Err(LayoutError::TooManyInstances {
                count: 5,
                max: 4,
                ..
            })
        ));
        assert!(matches!(
            a30.place(&["2g.12gb+me", "2g.12gb+me"]),
            Err(LayoutError::TooManyInstances {
                count: 2,
                max: 1,
                ..
            })
        ));
        assert!(matches!(
            a30.place(&["4g.24gb", "1g.6gb"]),
            Err(LayoutError::NoPlacement { .. })
        ));
        assert!(matches!(
            a30.place(&["2g.12gb", "2g.12gb", "1g.6gb"]),
            Err(LayoutError::NoPlacement { .. })
        ));
        // A30 has no 7g profile.
        assert!(matches!(
            a30.place(&["7g.80gb"]),
            Err(LayoutError::UnknownProfile { .. })
        ));
    }

    #[test]
    fn gpu_instance_ids_are_a_function_of_placement() {
        for model in models() {
            // Every (size, start) the tables allow maps to its own id below the driver's 15.
            let mut by_slot = std::collections::BTreeMap::new();
            for p in model.profiles {
                for &s in p.starts {
                    let id = model.gpu_instance_id(p.memory_slices, s);
                    assert!(id < 15, "{}: {} @{s} -> {id}", model.nvml_name, p.name);
                    let prev = by_slot.insert(id, (p.memory_slices, s));
                    assert!(
                        prev.is_none() || prev == Some((p.memory_slices, s)),
                        "{}: id {id} used twice",
                        model.nvml_name
                    );
                }
            }
        }
        let expected8: &[(u8, u8, u32)] = &[
            (8, 0, 0),
            (4, 0, 1),
            (4, 4, 2),
            (2, 0, 3),
            (2, 2, 4),
            (2, 4, 5),
            (2, 6, 6),
            (1, 0, 7),
            (1, 6, 13),
        ];
        for model in models().iter().filter(|m| m.memory_slices == 8) {
            for &(size, start, id) in expected8 {
                assert_eq!(
                    model.gpu_instance_id(size, start),
                    id,
                    "{}",
                    model.nvml_name
                );
            }
        }
        // Same layout, same ids, whatever was placed before.
        let layout = ["2g.20gb", "1g.10gb", "3g.40gb"];
        let first = m(H100).place(&layout).unwrap();
        let _ = m(H100).place(&["7g.80gb"]).unwrap();
        assert_eq!(m(H100).place(&layout).unwrap(), first);
        assert_eq!(
            summary(&first),
            [("2g.20gb", 4, 5), ("1g.10gb", 6, 13), ("3g.40gb", 0, 1)]
        );
    }

    /// Every layout up to the GI limit, on every model: `place` agrees with an independent
    /// reachable-set oracle, and what it returns is a real configuration.
    #[test]
    fn place_agrees_with_oracle_on_all_small_layouts() {
        for model in models() {
            let names: Vec<&'static str> = model.profiles.iter().map(|p| p.name).collect();
            for layout in multisets(&names, usize::from(model.max_gpu_instances) + 1) {
                let result = model.place(&layout);
                assert_eq!(result.is_ok(), fits_oracle(model, &layout), "{layout:?}");
                if let Ok(placed) = result {
                    assert_sound(model, &layout, &placed);
                }
            }
        }
    }
}
