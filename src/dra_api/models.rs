//! What NVML would say about a GPU model that the inventory does not carry: brand, architecture,
//! CUDA compute capability (the strings go-nvlib's `Get*AsString` return, which NVIDIA's DRA
//! driver publishes) and the streaming-multiprocessor count of each MIG profile (`nvidia-smi mig
//! -lgip`, "SM" column, as collected in the project's MIG facts).
//!
//! Looked up by the exact NVML product name. A model not listed here gets no brand, architecture
//! or compute capability attribute (the device is still published), and a MIG profile not listed
//! gets no `multiprocessors` capacity.

/// Facts of one GPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFacts {
    /// `nvmlDeviceGetBrand` as go-nvlib spells it: `Nvidia`, `Tesla`, …
    pub brand: &'static str,
    /// `nvmlDeviceGetArchitecture` as go-nvlib spells it: `Ampere`, `Hopper`, …
    pub architecture: &'static str,
    /// `nvmlDeviceGetCudaComputeCapability` as `major.minor`.
    pub compute_capability: &'static str,
}

const AMPERE: ModelFacts = ModelFacts {
    brand: "Nvidia",
    architecture: "Ampere",
    compute_capability: "8.0",
};
const ADA: ModelFacts = ModelFacts {
    brand: "Nvidia",
    architecture: "Ada Lovelace",
    compute_capability: "8.9",
};
const HOPPER: ModelFacts = ModelFacts {
    brand: "Nvidia",
    architecture: "Hopper",
    compute_capability: "9.0",
};
const BLACKWELL: ModelFacts = ModelFacts {
    brand: "Nvidia",
    architecture: "Blackwell",
    compute_capability: "10.0",
};
const TURING_TESLA: ModelFacts = ModelFacts {
    brand: "Tesla",
    architecture: "Turing",
    compute_capability: "7.5",
};
const VOLTA_TESLA: ModelFacts = ModelFacts {
    brand: "Tesla",
    architecture: "Volta",
    compute_capability: "7.0",
};

/// Model facts by exact NVML name, then by name prefix (families whose variants share them).
const EXACT: &[(&str, ModelFacts)] = &[
    ("NVIDIA A100-SXM4-40GB", AMPERE),
    ("NVIDIA A100-SXM4-80GB", AMPERE),
    ("NVIDIA A100-PCIE-40GB", AMPERE),
    ("NVIDIA A100 80GB PCIe", AMPERE),
    ("NVIDIA A30", AMPERE),
    ("NVIDIA H100 80GB HBM3", HOPPER),
    ("NVIDIA H100 PCIe", HOPPER),
    ("NVIDIA H100 NVL", HOPPER),
    ("NVIDIA H200", HOPPER),
    ("NVIDIA H200 NVL", HOPPER),
    ("NVIDIA B200", BLACKWELL),
    ("NVIDIA L4", ADA),
    ("NVIDIA L40", ADA),
    ("NVIDIA L40S", ADA),
];
const PREFIX: &[(&str, ModelFacts)] = &[("Tesla T4", TURING_TESLA), ("Tesla V100", VOLTA_TESLA)];

/// The facts of `model`, if known.
pub fn facts(model: &str) -> Option<ModelFacts> {
    EXACT
        .iter()
        .find(|(name, _)| *name == model)
        .or_else(|| PREFIX.iter().find(|(prefix, _)| model.starts_with(prefix)))
        .map(|(_, facts)| *facts)
}

/// SMs per MIG profile, per model (`nvidia-smi mig -lgip`). B200's larger profiles are absent:
/// no public transcript shows them.
const MIG_SMS: &[(&str, &[(&str, u32)])] = &[
    ("NVIDIA A100-SXM4-40GB", A100_40),
    ("NVIDIA A100-SXM4-80GB", A100_80),
    ("NVIDIA A100 80GB PCIe", A100_80),
    ("NVIDIA A30", A30),
    ("NVIDIA H100 80GB HBM3", H100_SXM),
    ("NVIDIA H100 PCIe", H100_PCIE),
    ("NVIDIA H100 NVL", H100_NVL),
    ("NVIDIA H200", H200),
    ("NVIDIA H200 NVL", H200),
    ("NVIDIA B200", B200),
];
const A100_40: &[(&str, u32)] = &[
    ("1g.5gb", 14),
    ("1g.5gb+me", 14),
    ("1g.10gb", 14),
    ("2g.10gb", 28),
    ("3g.20gb", 42),
    ("4g.20gb", 56),
    ("7g.40gb", 98),
];
const A100_80: &[(&str, u32)] = &[
    ("1g.10gb", 14),
    ("1g.10gb+me", 14),
    ("1g.20gb", 14),
    ("2g.20gb", 28),
    ("3g.40gb", 42),
    ("4g.40gb", 56),
    ("7g.80gb", 98),
];
const A30: &[(&str, u32)] = &[
    ("1g.6gb", 14),
    ("1g.6gb+me", 14),
    ("2g.12gb", 28),
    ("2g.12gb+me", 28),
    ("4g.24gb", 56),
];
const H100_SXM: &[(&str, u32)] = &[
    ("1g.10gb", 16),
    ("1g.10gb+me", 16),
    ("1g.20gb", 26),
    ("2g.20gb", 32),
    ("3g.40gb", 60),
    ("4g.40gb", 64),
    ("7g.80gb", 132),
];
const H100_PCIE: &[(&str, u32)] = &[
    ("1g.10gb", 14),
    ("1g.10gb+me", 14),
    ("1g.20gb", 14),
    ("2g.20gb", 30),
    ("3g.40gb", 46),
    ("4g.40gb", 62),
    ("7g.80gb", 114),
];
const H100_NVL: &[(&str, u32)] = &[
    ("1g.12gb", 16),
    ("1g.12gb+me", 16),
    ("1g.24gb", 26),
    ("2g.24gb", 32),
    ("3g.47gb", 60),
    ("4g.47gb", 64),
    ("7g.94gb", 132),
];
const H200: &[(&str, u32)] = &[
    ("1g.18gb", 16),
    ("1g.18gb+me", 16),
    ("1g.35gb", 26),
    ("2g.35gb", 32),
    ("3g.71gb", 60),
    ("4g.71gb", 64),
    ("7g.141gb", 132),
];
const B200: &[(&str, u32)] = &[
    ("1g.23gb", 18),
    ("1g.23gb+me", 18),
    ("1g.45gb", 30),
    ("2g.45gb", 36),
];

/// Streaming multiprocessors of one instance of `profile` on `model`, if known.
pub fn mig_multiprocessors(model: &str, profile: &str) -> Option<u32> {
    MIG_SMS
        .iter()
        .find(|(name, _)| *name == model)
        .and_then(|(_, table)| table.iter().find(|(p, _)| *p == profile))
        .map(|(_, sms)| *sms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::mig_profiles;

    #[test]
    fn every_mig_model_has_facts_and_every_listed_profile_exists() {
        for model in mig_profiles::models() {
            assert!(facts(model.nvml_name).is_some(), "{}", model.nvml_name);
        }
        for (name, table) in MIG_SMS {
            let model = mig_profiles::model(name).unwrap_or_else(|| panic!("{name}"));
            for (profile, sms) in *table {
                assert!(model.profile(profile).is_some(), "{name} {profile}");
                assert!(*sms > 0);
            }
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(
            facts("NVIDIA H100 80GB HBM3").unwrap().architecture,
            "Hopper"
        );
        assert_eq!(facts("Tesla T4").unwrap().brand, "Tesla");
        assert_eq!(facts("Some Future GPU"), None);
        assert_eq!(
            mig_multiprocessors("NVIDIA H100 80GB HBM3", "3g.40gb"),
            Some(60)
        );
        assert_eq!(mig_multiprocessors("NVIDIA B200", "7g.180gb"), None);
    }
}
