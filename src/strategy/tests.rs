use super::*;
use WorkloadType::{DataProcessing, Inference, Training};

const GI: u64 = GIB;

fn defaults() -> StrategyThresholds {
    StrategyThresholds::default()
}

#[test]
fn classification_boundaries_with_default_thresholds() {
    // (workload, bytes, expected mode, expected rule)
    let cases: &[(WorkloadType, u64, Mode, u8)] = &[
        // Rule 1: training strictly above 16 GiB.
        (Training, 16 * GI, Mode::Mig, 3),
        (Training, 16 * GI + 1, Mode::Exclusive, 1),
        (Training, 16 * GI - 1, Mode::Mig, 3),
        (Training, 20 * GI, Mode::Exclusive, 1),
        (Training, 200 * GI, Mode::Exclusive, 1),
        // Below the MIG range training is not shared: rule 4.
        (Training, 4 * GI - 1, Mode::Exclusive, 4),
        (Training, 4 * GI, Mode::Mig, 3),
        (Training, 0, Mode::Exclusive, 4),
        // Rule 2: inference strictly below 4 GiB.
        (Inference, 0, Mode::Shared, 2),
        (Inference, 2 * GI, Mode::Shared, 2),
        (Inference, 4 * GI - 1, Mode::Shared, 2),
        (Inference, 4 * GI, Mode::Mig, 3),
        (Inference, 4 * GI + 1, Mode::Mig, 3),
        // Rule 3: 4 GiB <= memory <= 20 GiB, both ends inclusive.
        (Inference, 16 * GI + 1, Mode::Mig, 3),
        (Inference, 20 * GI - 1, Mode::Mig, 3),
        (Inference, 20 * GI, Mode::Mig, 3),
        (Inference, 20 * GI + 1, Mode::Exclusive, 4),
        (DataProcessing, 4 * GI - 1, Mode::Exclusive, 4),
        (DataProcessing, 4 * GI, Mode::Mig, 3),
        (DataProcessing, 20 * GI, Mode::Mig, 3),
        (DataProcessing, 20 * GI + 1, Mode::Exclusive, 4),
        (DataProcessing, 2 * GI, Mode::Exclusive, 4),
    ];
    for &(workload, bytes, mode, rule) in cases {
        let c = classify(workload, bytes, &defaults());
        assert_eq!(
            (c.mode, c.rule),
            (mode, rule),
            "{} with {bytes} bytes: {}",
            workload.as_str(),
            c.reason
        );
    }
}

#[test]
fn classification_follows_configured_thresholds() {
    let t = StrategyThresholds {
        training_exclusive_above_gib: 8.0,
        inference_shared_below_gib: 1.5,
        mig_range_gib: [2.0, 10.0],
    };
    let cases: &[(WorkloadType, u64, Mode, u8)] = &[
        (Training, 8 * GI, Mode::Mig, 3),
        (Training, 8 * GI + 1, Mode::Exclusive, 1),
        (Training, 16 * GI, Mode::Exclusive, 1),
        (Inference, 3 * GI / 2 - 1, Mode::Shared, 2),
        (Inference, 3 * GI / 2, Mode::Exclusive, 4),
        (Inference, 2 * GI - 1, Mode::Exclusive, 4),
        (Inference, 2 * GI, Mode::Mig, 3),
        (Inference, 10 * GI, Mode::Mig, 3),
        (Inference, 10 * GI + 1, Mode::Exclusive, 4),
        (Inference, 12 * GI, Mode::Exclusive, 4),
        (DataProcessing, 4 * GI, Mode::Mig, 3),
    ];
    for &(workload, bytes, mode, rule) in cases {
        let c = classify(workload, bytes, &t);
        assert_eq!(
            (c.mode, c.rule),
            (mode, rule),
            "{} with {bytes} bytes: {}",
            workload.as_str(),
            c.reason
        );
    }
    // An empty MIG range ([x, x]) matches exactly x and nothing else.
    let point = StrategyThresholds {
        mig_range_gib: [6.0, 6.0],
        ..defaults()
    };
    assert_eq!(classify(Inference, 6 * GI, &point).mode, Mode::Mig);
    assert_eq!(
        classify(Inference, 6 * GI + 1, &point).mode,
        Mode::Exclusive
    );
    assert_eq!(
        classify(Inference, 6 * GI - 1, &point).mode,
        Mode::Exclusive
    );
}

#[test]
fn classification_reasons_name_the_rule_and_values() {
    assert_eq!(
        classify(Training, 24 * GI, &defaults()).reason,
        "rule 1: training with 24 GiB > 16 GiB -> exclusive"
    );
    assert_eq!(
        classify(Inference, 512 * MIB, &defaults()).reason,
        "rule 2: inference with 512 MiB < 4 GiB -> shared"
    );
    assert_eq!(
        classify(Inference, 8 * GI, &defaults()).reason,
        "rule 3: 4 GiB <= 8 GiB <= 20 GiB -> mig"
    );
    assert_eq!(
        classify(DataProcessing, 30 * GI, &defaults()).reason,
        "rule 4: data-processing with 30 GiB matches no sharing rule -> exclusive"
    );
    // One byte over is visible in the reason, not rounded away.
    assert_eq!(
        classify(Training, 16 * GI + 1, &defaults()).reason,
        "rule 1: training with 17179869185 bytes (~16 GiB) > 16 GiB -> exclusive"
    );
}

/// An offer, for this module's tests and those of the catalog and the webhook.
pub(crate) fn offer(name: &str, mode: Mode, memory_mib: u64, count: u32) -> Offer {
    Offer {
        name: name.into(),
        mode,
        memory_mib,
        count,
    }
}

pub(crate) fn catalog(offers: &[Offer]) -> Catalog {
    Catalog {
        offers: offers.to_vec(),
    }
}

/// An H100 node with everything: whole GPUs, time-sliced replicas, vGPU slices, MIG profiles.
fn everything() -> Catalog {
    catalog(&[
        offer("nvidia.com/gpu", Mode::Exclusive, 81559, 2),
        offer("nvidia.com/gpu.shared", Mode::Shared, 81559, 8),
        offer("nvidia.com/gpu.vgpu", Mode::Vgpu, 20480, 3),
        offer("nvidia.com/mig-1g.10gb", Mode::Mig, 9984, 3),
        offer("nvidia.com/mig-1g.10gb.me", Mode::Mig, 9984, 1),
        offer("nvidia.com/mig-2g.20gb", Mode::Mig, 20096, 1),
        offer("nvidia.com/mig-1g.20gb", Mode::Mig, 20096, 1),
        offer("nvidia.com/mig-3g.40gb", Mode::Mig, 40448, 1),
    ])
}

fn resolved(workload: WorkloadType, bytes: u64, cat: &Catalog) -> (Mode, String, bool) {
    let d = plan(workload, bytes, &defaults(), cat)
        .unwrap_or_else(|e| panic!("{} {bytes}: {e}", workload.as_str()));
    assert_eq!(d.count, 1);
    (d.mode, d.resource, d.fallback)
}

#[test]
fn each_mode_resolves_to_the_smallest_fitting_resource() {
    let cat = everything();
    let cases: &[(WorkloadType, u64, Mode, &str)] = &[
        // MIG: smallest profile whose memory >= the request; ties by name.
        (Inference, 4 * GI, Mode::Mig, "nvidia.com/mig-1g.10gb"),
        (Inference, 8 * GI, Mode::Mig, "nvidia.com/mig-1g.10gb"),
        (Inference, 9984 * MIB, Mode::Mig, "nvidia.com/mig-1g.10gb"),
        (
            Inference,
            9984 * MIB + 1,
            Mode::Mig,
            "nvidia.com/mig-1g.20gb",
        ),
        (Training, 16 * GI, Mode::Mig, "nvidia.com/mig-1g.20gb"),
        (DataProcessing, 20 * GI, Mode::Mig, "nvidia.com/mig-3g.40gb"),
        // Shared: a replica sees the whole GPU's memory.
        (Inference, 2 * GI, Mode::Shared, "nvidia.com/gpu.shared"),
        // Exclusive: whole GPUs with enough memory.
        (Training, 17 * GI, Mode::Exclusive, "nvidia.com/gpu"),
        (Training, 79 * GI, Mode::Exclusive, "nvidia.com/gpu"),
        (Inference, 21 * GI, Mode::Exclusive, "nvidia.com/gpu"),
    ];
    for &(workload, bytes, mode, name) in cases {
        assert_eq!(
            resolved(workload, bytes, &cat),
            (mode, name.to_string(), false),
            "{} {bytes}",
            workload.as_str()
        );
    }
}

#[test]
fn shared_picks_the_smallest_device_that_holds_the_request() {
    let cat = catalog(&[
        offer("nvidia.com/a100.shared", Mode::Shared, 40960, 4),
        offer("nvidia.com/h100.shared", Mode::Shared, 81559, 4),
        offer("nvidia.com/t4.shared", Mode::Shared, 1024, 4),
    ]);
    assert_eq!(
        resolved(Inference, 3 * GI, &cat),
        (Mode::Shared, "nvidia.com/a100.shared".into(), false)
    );
    assert_eq!(
        resolved(Inference, 512 * MIB, &cat),
        (Mode::Shared, "nvidia.com/t4.shared".into(), false)
    );
}

#[test]
fn vgpu_picks_the_smallest_slice_that_fits() {
    let cat = catalog(&[
        offer("nvidia.com/vgpu-20g", Mode::Vgpu, 20480, 4),
        offer("nvidia.com/vgpu-10g", Mode::Vgpu, 10240, 8),
        offer("nvidia.com/gpu", Mode::Exclusive, 81559, 1),
    ]);
    // MIG asked, none offered: vGPU is the first fallback.
    let d = plan(Inference, 12 * GI, &defaults(), &cat).unwrap();
    assert_eq!(
        (d.mode, d.resource.as_str()),
        (Mode::Vgpu, "nvidia.com/vgpu-20g")
    );
    assert!(d.fallback);
    let d = plan(Inference, 10 * GI, &defaults(), &cat).unwrap();
    assert_eq!(d.resource, "nvidia.com/vgpu-10g");
    assert_eq!(
        pick(Mode::Vgpu, GI, &cat).unwrap().name,
        "nvidia.com/vgpu-10g"
    );
}

#[test]
fn fallback_chains() {
    let gpu = offer("nvidia.com/gpu", Mode::Exclusive, 81559, 8);
    let shared = offer("nvidia.com/gpu.shared", Mode::Shared, 81559, 4);
    let vgpu = offer("nvidia.com/gpu.vgpu", Mode::Vgpu, 10240, 8);
    let mig = offer("nvidia.com/mig-1g.10gb", Mode::Mig, 9984, 7);
    let tiny_shared = offer("nvidia.com/t4.shared", Mode::Shared, 1024, 4);
    // (offers, workload, bytes, expected mode, expected fallback)
    let cases: Vec<(Vec<Offer>, WorkloadType, u64, Mode, bool)> = vec![
        // shared → vGPU → MIG → exclusive
        (
            vec![shared.clone(), vgpu.clone(), mig.clone(), gpu.clone()],
            Inference,
            2 * GI,
            Mode::Shared,
            false,
        ),
        (
            vec![vgpu.clone(), mig.clone(), gpu.clone()],
            Inference,
            2 * GI,
            Mode::Vgpu,
            true,
        ),
        (
            vec![mig.clone(), gpu.clone()],
            Inference,
            2 * GI,
            Mode::Mig,
            true,
        ),
        (vec![gpu.clone()], Inference, 2 * GI, Mode::Exclusive, true),
        // A shared resource too small for the request does not count.
        (
            vec![tiny_shared.clone(), gpu.clone()],
            Inference,
            2 * GI,
            Mode::Exclusive,
            true,
        ),
        // MIG → vGPU → exclusive (never shared)
        (
            vec![shared.clone(), vgpu.clone(), mig.clone(), gpu.clone()],
            Inference,
            8 * GI,
            Mode::Mig,
            false,
        ),
        (
            vec![shared.clone(), vgpu.clone(), gpu.clone()],
            Inference,
            8 * GI,
            Mode::Vgpu,
            true,
        ),
        (
            vec![shared.clone(), gpu.clone()],
            Inference,
            8 * GI,
            Mode::Exclusive,
            true,
        ),
        // MIG too small (12 GiB > 9984 MiB), vGPU too small: exclusive.
        (
            vec![vgpu.clone(), mig.clone(), gpu.clone()],
            Inference,
            12 * GI,
            Mode::Exclusive,
            true,
        ),
        // Exclusive asked: exclusive found.
        (
            vec![shared.clone(), vgpu.clone(), mig.clone(), gpu.clone()],
            Training,
            40 * GI,
            Mode::Exclusive,
            false,
        ),
    ];
    for (offers, workload, bytes, mode, fallback) in cases {
        let d =
            plan(workload, bytes, &defaults(), &catalog(&offers)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.mode, d.fallback), (mode, fallback), "{}", d.reason);
    }
}

#[test]
fn exclusive_has_no_fallback_and_nothing_fitting_is_an_error() {
    // Plenty of shared and MIG capacity, but training above 16 GiB wants whole GPUs only.
    let cat = catalog(&[
        offer("nvidia.com/gpu.shared", Mode::Shared, 81559, 8),
        offer("nvidia.com/mig-3g.40gb", Mode::Mig, 40448, 2),
    ]);
    let e = plan(Training, 20 * GI, &defaults(), &cat).unwrap_err();
    assert_eq!(e.classified, Mode::Exclusive);
    assert_eq!(
        e.reason,
        "training needing 20 GiB: rule 1: training with 20 GiB > 16 GiB -> exclusive; \
         exclusive: no whole-GPU resource offered; nothing fits"
    );
    // 200 GiB fits on no single GPU.
    let e = plan(Training, 200 * GI, &defaults(), &everything()).unwrap_err();
    assert_eq!(
        e.reason,
        "training needing 200 GiB: rule 1: training with 200 GiB > 16 GiB -> exclusive; \
         exclusive: no whole-GPU resource has >= 200 GiB per device (largest is nvidia.com/gpu with 81559 MiB); \
         nothing fits"
    );
    // An empty catalog: every mode of the chain is reported.
    let e = plan(Inference, GI, &defaults(), &Catalog::default()).unwrap_err();
    assert_eq!(
        e.reason,
        "inference needing 1 GiB: rule 2: inference with 1 GiB < 4 GiB -> shared; \
         shared: no time-sliced resource offered; vgpu: no vGPU resource offered; \
         mig: no MIG resource offered; exclusive: no whole-GPU resource offered; nothing fits"
    );
}

#[test]
fn unhealthy_resources_are_skipped_with_a_reason() {
    let cat = catalog(&[
        offer("nvidia.com/mig-1g.10gb", Mode::Mig, 9984, 0),
        offer("nvidia.com/gpu", Mode::Exclusive, 81559, 1),
    ]);
    let d = plan(Inference, 8 * GI, &defaults(), &cat).unwrap();
    assert_eq!(d.resource, "nvidia.com/gpu");
    assert!(d.fallback);
    assert!(
        d.reason
            .contains("mig: nvidia.com/mig-1g.10gb has no healthy device"),
        "{}",
        d.reason
    );
}

#[test]
fn decision_reason_says_what_was_tried_and_what_was_chosen() {
    let d = plan(Inference, 8 * GI, &defaults(), &everything()).unwrap();
    assert_eq!(
        d.reason,
        "inference needing 8 GiB: rule 3: 4 GiB <= 8 GiB <= 20 GiB -> mig; \
         mig: nvidia.com/mig-1g.10gb (9984 MiB per device, 3 available)"
    );
    assert_eq!(d.device_memory_mib, 9984);
    assert_eq!(d.available, 3);
    let cat = catalog(&[offer("nvidia.com/gpu", Mode::Exclusive, 81559, 8)]);
    let d = plan(Inference, 2 * GI, &defaults(), &cat).unwrap();
    assert_eq!(
        d.reason,
        "inference needing 2 GiB: rule 2: inference with 2 GiB < 4 GiB -> shared; \
         shared: no time-sliced resource offered; vgpu: no vGPU resource offered; \
         mig: no MIG resource offered; fell back to exclusive: nvidia.com/gpu (81559 MiB per device, 8 available)"
    );
    assert_eq!((d.classified, d.mode), (Mode::Shared, Mode::Exclusive));
}

#[test]
fn workload_names_round_trip_and_bad_ones_are_explained() {
    for w in WorkloadType::ALL {
        assert_eq!(WorkloadType::parse(w.as_str()), Ok(w));
    }
    assert_eq!(
        WorkloadType::parse("gaming"),
        Err("must be training, inference or data-processing, got \"gaming\"".into())
    );
    assert!(WorkloadType::parse("Training").is_err());
}

#[test]
fn bytes_are_formatted_exactly() {
    assert_eq!(format_bytes(8 * GI), "8 GiB");
    assert_eq!(format_bytes(9984 * MIB), "9984 MiB");
    assert_eq!(
        format_bytes(20_000_000_000),
        "20000000000 bytes (~18.6 GiB)"
    );
    assert_eq!(format_bytes(4096), "4096 bytes");
    assert_eq!(format_bytes(0), "0 bytes");
}
