use super::super::{check_hook_path, parse, read, read_strict};
use super::*;

/// Every error `check-config` would print (unknown fields included).
fn errors(text: &str) -> Vec<String> {
    read_strict(text)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// `path: message` of every warning `run` would log.
fn warnings(text: &str) -> Vec<String> {
    read(text)
        .unwrap_or_else(|e| panic!("{text}: {e:?}"))
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn empty_and_nvidia_examples_are_accepted() {
    assert_eq!(parse("version: v1").unwrap(), Config::default());
    // NVIDIA's config-manager points the file at /dev/null for its "empty" config.
    for empty in ["", "  \n", "# only a comment\n", "---\n", "null"] {
        assert_eq!(parse(empty).unwrap(), Config::default(), "{empty:?}");
    }
    let nvidia = r#"
version: v1
flags:
  migStrategy: "none"
  failOnInitError: true
  nvidiaDriverRoot: "/"
  plugin:
    passDeviceSpecs: false
    deviceListStrategy: envvar
    deviceIDStrategy: uuid
  gfd:
    oneshot: false
    noTimestamp: false
    outputFile: /etc/kubernetes/node-feature-discovery/features.d/gfd
    sleepInterval: 60s
sharing:
  timeSlicing:
    resources:
    - name: nvidia.com/gpu
      replicas: 4
"#;
    let c = parse(nvidia).unwrap();
    assert_eq!(c.time_slicing.resources[0].replicas, 4);
    assert_eq!(c.time_slicing.resources[0].devices, DeviceSelector::All);
}

#[test]
fn replicas_error_names_path_and_value() {
    let e = errors("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 1}]}}");
    assert_eq!(
        e,
        ["sharing.timeSlicing.resources[0].replicas: number of replicas must be >= 2, got 1"]
    );
}

#[test]
fn unknown_fields_are_warnings_for_run_and_errors_for_check_config() {
    let text = "flags: {migStrategy: mixed, colour: red}";
    let e = errors(text);
    assert!(e[0].starts_with("flags.colour: unknown field"), "{e:?}");
    let w = warnings(text);
    assert!(w[0].starts_with("flags.colour: unknown field"), "{w:?}");
    assert_eq!(parse(text).unwrap().mig_strategy, MigStrategy::Mixed);
}

#[test]
fn an_empty_key_is_named_quoted() {
    // Found by tests/properties.rs: an empty key used to give an error with an empty path.
    assert_eq!(
            errors("!!str : 1"),
            ["\"\": unknown field, expected one of version, flags, resources, sharing, imex, health, strategy, dra"]
        );
    assert!(errors("flags: {\"\": 1}")[0].starts_with("flags.\"\": unknown field"));
}

#[test]
fn all_errors_at_once() {
    let text = r#"
version: v2
flags: {migStrategy: weird, plugin: {deviceListStrategy: [envvar, nope], deviceIDStrategy: name}}
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, replicas: 0, devices: [0, 1]}
  vgpu:
    resources:
      - {name: nvidia.com/gpu, memoryMiB: 0, computePercent: 101}
health: {recoverAfter: soon}
strategy: {migRangeGiB: [20, 4]}
"#;
    let e = errors(text);
    for needle in [
            "version: unknown version \"v2\": must be v1",
            "flags.migStrategy: must be none, single or mixed, got \"weird\"",
            "flags.plugin.deviceListStrategy: must be envvar, volume-mounts, cdi-annotations or cdi-cri, got \"nope\"",
            "flags.plugin.deviceIDStrategy: must be uuid or index, got \"name\"",
            "sharing.timeSlicing.resources[0].replicas: number of replicas must be >= 2, got 0",
            "sharing.vgpu.resources[0].memoryMiB: must be >= 1, got 0",
            "sharing.vgpu.resources[0].computePercent: must be within 1..=100, got 101",
            "health.recoverAfter:",
            "strategy.migRangeGiB:",
        ] {
            assert!(e.iter().any(|m| m.starts_with(needle)), "missing {needle:?} in {e:#?}");
        }
}

#[test]
fn unknown_fields_and_type_errors_are_all_reported_with_paths() {
    let text = r#"
version: 1
colour: red
flags:
  foo: 1
  failOnInitError: "perhaps"
  plugin: {passDeviceSpecs: maybe, extra: true}
sharing:
  timeSlicing:
    renameByDefault: 3
    resources:
      - {name: nvidia.com/gpu, replicas: four}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.b, replicas: 1, devices: [0]}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.c, replicas: 0, colour: blue, devices: [1]}
      - {replicas: 2}
      - just-a-string
  vgpu:
    resources:
      - {name: nvidia.com/gpu, memoryMiB: lots, computePercent: 200}
health: {ignoredXids: [13, x, ~], recoverAfter: soon}
strategy: {trainingExclusiveAboveGiB: big, migRangeGiB: 4}
"#;
    let e = errors(text);
    let expected = [
            "version: expected a string, got an integer 1",
            "colour: unknown field, expected one of version, flags, resources, sharing, imex, health, strategy",
            "flags.foo: unknown field, expected one of migStrategy, failOnInitError,",
            "flags.failOnInitError: expected true or false, got a string \"perhaps\"",
            "flags.plugin.passDeviceSpecs: expected true or false, got a string \"maybe\"",
            "flags.plugin.extra: unknown field, expected one of passDeviceSpecs,",
            "sharing.timeSlicing.renameByDefault: expected true or false, got an integer 3",
            "sharing.timeSlicing.resources[0].replicas: expected an integer, got a string \"four\"",
            "sharing.timeSlicing.resources[1].replicas: number of replicas must be >= 2, got 1",
            "sharing.timeSlicing.resources[2].colour: unknown field, expected one of name, rename, devices, replicas",
            "sharing.timeSlicing.resources[2].replicas: number of replicas must be >= 2, got 0",
            "sharing.timeSlicing.resources[3].name: no resource name specified",
            "sharing.timeSlicing.resources[4]: expected a mapping, got a string \"just-a-string\"",
            "sharing.vgpu.resources[0].memoryMiB: expected an integer, got a string \"lots\"",
            "health.ignoredXids[1]: expected an integer, got a string \"x\"",
            "health.ignoredXids[2]: expected an integer, got nothing",
            "health.recoverAfter:",
            "strategy.trainingExclusiveAboveGiB: expected a number, got a string \"big\"",
            "strategy.migRangeGiB: expected a list, got an integer 4",
        ];
    for needle in expected {
        assert!(
            e.iter().any(|m| m.starts_with(needle)),
            "missing {needle:?} in {e:#?}"
        );
    }
    // Nothing is reported twice, and nothing beyond these (the vGPU entry lost its required
    // memoryMiB, so its computePercent is not judged on top).
    assert_eq!(e.len(), expected.len(), "{e:#?}");
}

#[test]
fn a_config_with_every_field_parses() {
    // Guards the agreement of `schema` and `file`: every field both know.
    let text = r#"
version: v1
flags:
  migStrategy: mixed
  failOnInitError: false
  mpsRoot: /run/nvidia/mps
  nvidiaDriverRoot: /run/nvidia/driver
  nvidiaDevRoot: /
  gdrcopyEnabled: true
  gdsEnabled: true
  mofedEnabled: true
  useNodeFeatureAPI: false
  deviceDiscoveryStrategy: auto
  plugin:
    passDeviceSpecs: true
    deviceListStrategy: [envvar, cdi-cri]
    deviceIDStrategy: index
    cdiAnnotationPrefix: cdi.example.com/
    nvidiaCTKPath: /usr/bin/nvidia-ctk
    containerDriverRoot: /driver-root
    sharedDevicesAllocationPolicy: packed
  gfd: {oneshot: false, sleepInterval: 60s}
resources: {}
sharing:
  timeSlicing:
    renameByDefault: true
    failRequestsGreaterThanOne: true
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.ts, replicas: 2, devices: [0]}
  mps:
  vgpu:
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/vgpu, memoryMiB: 1024, computePercent: 10, devices: [1]}
  placement: packed
imex: {channelIDs: [0], required: true}
health: {ignoredXids: [13], recoverAfter: 1m}
strategy: {trainingExclusiveAboveGiB: 16, inferenceSharedBelowGiB: 4.5, migRangeGiB: [4, 20]}
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.mig_strategy, MigStrategy::Mixed);
    assert!(c.plugin.pass_device_specs);
    assert_eq!(c.plugin.nvidia_driver_root, "/run/nvidia/driver");
    assert_eq!(c.plugin.nvidia_dev_root, "/");
    assert_eq!(
        c.plugin.container_driver_root.as_deref(),
        Some("/driver-root")
    );
    assert_eq!(c.plugin.driver_root_readable_at(), "/driver-root");
    assert_eq!(
        c.plugin.nvidia_ctk_path.as_deref(),
        Some("/usr/bin/nvidia-ctk")
    );
    assert_eq!(c.plugin.cdi_annotation_prefix, "cdi.example.com/");
    assert_eq!(c.shared_placement, SharedPlacement::Packed);
    assert_eq!(c.strategy.inference_shared_below_gib, 4.5);
    assert_eq!(c.vgpu[0].compute_percent, Some(10));
    assert!(c.plugin.gds_enabled && c.plugin.mofed_enabled && c.plugin.gdrcopy_enabled);
    assert_eq!(
        c.plugin.imex,
        ImexSettings {
            channel_ids: vec![0],
            required: true
        }
    );
    assert_eq!(c.plugin.mps_root.as_deref(), Some("/run/nvidia/mps"));
}

#[test]
fn driver_paths_must_be_absolute_and_an_empty_ctk_path_turns_the_hook_off() {
    assert_eq!(
        errors(
            "flags: {nvidiaDriverRoot: run/nvidia/driver, nvidiaDevRoot: dev, \
                 plugin: {containerDriverRoot: driver-root, nvidiaCTKPath: bin/nvidia-ctk}}"
        ),
        [
            r#"flags.nvidiaDriverRoot: must be an absolute path, got "run/nvidia/driver""#,
            r#"flags.nvidiaDevRoot: must be an absolute path, got "dev""#,
            r#"flags.plugin.containerDriverRoot: must be an absolute path, got "driver-root""#,
            r#"flags.plugin.nvidiaCTKPath: must be an absolute path, got "bin/nvidia-ctk""#,
        ]
    );
    let c = parse("flags: {plugin: {nvidiaCTKPath: \"\"}}").unwrap();
    assert_eq!(c.plugin.nvidia_ctk_path.as_deref(), Some(""));
    let c = parse("flags: {nvidiaDriverRoot: /run/nvidia/driver}").unwrap();
    assert_eq!(c.plugin.container_driver_root, None);
    assert_eq!(c.plugin.driver_root_readable_at(), "/run/nvidia/driver");
    assert_eq!(c.plugin.nvidia_ctk_path, None);
}

#[test]
fn whole_document_shape_errors() {
    assert_eq!(
            errors("- version: v1"),
            ["config: expected a mapping of sections (version, flags, sharing, …), got a list - version: v1"]
        );
    // A YAML syntax error stops everything: there is no tree to walk.
    let e = errors("flags: {migStrategy: [");
    assert_eq!(e.len(), 1, "{e:?}");
}

#[test]
fn a_rejected_entry_does_not_shift_later_paths() {
    let e = errors(
        r#"
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, replicas: x}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.a, replicas: 2, devices: [0]}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.a, replicas: 2, devices: [1]}
"#,
    );
    assert!(
            e.iter().any(|m| m.starts_with(
                "sharing.timeSlicing.resources[2]: advertises nvidia.com/gpu.a which sharing.timeSlicing.resources[1]"
            )),
            "{e:#?}"
        );
}

#[test]
fn devices_without_rename_are_ignored_as_nvidia_ignores_them() {
    let text =
        "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2, devices: [0]}]}}";
    let parsed = read(text).unwrap();
    assert_eq!(
        parsed.config.time_slicing.resources[0].devices,
        DeviceSelector::All
    );
    let w = warnings(text);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("sharing.timeSlicing.resources[0].devices: ignored without a rename"),
        "{w:?}"
    );
    assert!(w[0].contains("nvidia.com/gpu.shared"), "{w:?}");
    // With renameByDefault it is honoured, and the difference from NVIDIA is said.
    let text = "sharing: {timeSlicing: {renameByDefault: true, resources: [{name: nvidia.com/gpu, replicas: 2, devices: 2}]}}";
    assert_eq!(
        parse(text).unwrap().time_slicing.resources[0].devices,
        DeviceSelector::Count(2)
    );
    let w = warnings(text);
    assert!(w[0].contains("NVIDIA's plugin ignores devices and would share every nvidia.com/gpu device as nvidia.com/gpu.shared"), "{w:?}");
}

#[test]
fn a_rename_is_honoured_and_the_difference_said() {
    let text =
        "sharing: {timeSlicing: {resources: [{name: gpu, rename: gpu-shared, replicas: 2}]}}";
    let c = parse(text).unwrap();
    assert_eq!(c.time_slicing.resources[0].name, "nvidia.com/gpu");
    assert_eq!(
        c.time_slicing.resources[0].rename.as_deref(),
        Some("nvidia.com/gpu-shared")
    );
    assert_eq!(
            warnings(text),
            ["sharing.timeSlicing.resources[0].rename: gpu-agent advertises these replicas as \
              nvidia.com/gpu-shared; NVIDIA's plugin ignores rename and would advertise them as nvidia.com/gpu"]
        );
}

#[test]
fn nvidia_s_sharing_rules() {
    for (text, needle) in [
            ("sharing: {timeSlicing: {}}", "sharing.timeSlicing.resources: no resources specified"),
            ("sharing: {timeSlicing: {resources: []}}", "sharing.timeSlicing.resources: no resources specified"),
            ("sharing: {timeSlicing: }", "sharing.timeSlicing: no resources specified"),
            ("sharing: {timeSlicing: {resources: [{name: GPU, replicas: 2}]}}", "resources[0].name: incorrect format for resource name"),
            ("sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: not-all}]}}", "devices set as \"not-all\" but the only valid string input is 'all'"),
            ("sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: -2}]}}", "a count of devices must be > 0"),
            ("sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: [MIG-GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c]}]}}", "devices[0]: unsupported device reference"),
            ("imex: {channelIDs: [1]}", "imex.channelIDs: invalid IMEX config: channelIDs must be [] or [0]; found [1]"),
            ("sharing: {mps: {resources: [{name: gpu, replicas: 1}]}}", "sharing.mps.resources[0].replicas: number of replicas must be >= 2, got 1"),
            ("sharing: {mps: {resources: []}}", "sharing.mps.resources: no resources specified"),
        ] {
            let e = errors(text);
            assert!(e.iter().any(|m| m.contains(needle)), "{text}: missing {needle:?} in {e:#?}");
        }
    // Accepted as NVIDIA accepts them.
    for text in [
        "sharing: {mps: }",
        "sharing: ",
        "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2.0, devices: 2.0}]}}",
        "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: []}]}}",
        "resources: {gpus: [{pattern: '*', name: gpu}]}",
        "flags: {plugin: {deviceListStrategy: []}}",
        "FLAGS: {MIGSTRATEGY: single}",
    ] {
        read(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
    }
    assert_eq!(
        parse("FLAGS: {MIGSTRATEGY: single}").unwrap().mig_strategy,
        MigStrategy::Single
    );
    // A source no device has shares nothing, with a warning.
    let text = "sharing: {timeSlicing: {resources: [{name: nvidia.com/valid, replicas: 2}]}}";
    assert!(parse(text).unwrap().time_slicing.resources.is_empty());
    assert!(warnings(text)[0].contains("nvidia.com/valid is not a resource gpu-agent advertises"));
}

#[test]
fn overlapping_entries_are_rejected() {
    let e = errors(
        r#"
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.a, replicas: 2, devices: [0, 1]}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.b, replicas: 4, devices: [1, 2]}
  vgpu:
    resources:
      - {name: nvidia.com/gpu, memoryMiB: 10240}
"#,
    );
    assert!(
        e.iter().any(
            |m| m.starts_with("sharing.timeSlicing.resources[1]: selects the same")
                && m.contains("both list 1")
        ),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("sharing.vgpu.resources[0]: selects the same")),
        "{e:#?}"
    );
    // Disjoint lists and a count next to a list pass the static check.
    parse(
            r#"
sharing:
  timeSlicing:
    resources:
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.a, replicas: 2, devices: [0, 1]}
      - {name: nvidia.com/gpu, rename: nvidia.com/gpu.b, replicas: 4, devices: ["GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c", 3]}
  vgpu:
    resources:
      - {name: nvidia.com/gpu, memoryMiB: 10240, devices: 1}
"#,
        )
        .unwrap();
}

#[test]
fn selectors_parse() {
    let c = parse(
            r#"
sharing:
  timeSlicing:
    renameByDefault: true
    resources:
      - {name: nvidia.com/mig-1g.10gb, replicas: 3, devices: ["0:1", "MIG-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c", 2]}
"#,
        )
        .unwrap();
    assert_eq!(
        c.time_slicing.resources[0].devices,
        DeviceSelector::List(vec![
            DeviceRef::MigIndex(0, 1),
            DeviceRef::Uuid("MIG-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c".into()),
            DeviceRef::Index(2)
        ])
    );
    let e = errors("sharing: {timeSlicing: {renameByDefault: true, resources: [{name: nvidia.com/gpu, replicas: 2, devices: [zero]}]}}");
    assert!(
        e[0].starts_with(
            "sharing.timeSlicing.resources[0].devices[0]: unsupported device reference"
        ),
        "{e:?}"
    );
}

#[test]
fn device_list_strategy_string_or_list_and_overrides() {
    let c = parse("flags: {plugin: {deviceListStrategy: [envvar, cdi-cri]}}").unwrap();
    assert_eq!(
        c.plugin.device_list_strategies,
        [DeviceListStrategy::Envvar, DeviceListStrategy::CdiCri]
    );
    let c = c.with_overrides(&Overrides {
        device_list_strategies: Some(vec![DeviceListStrategy::VolumeMounts]),
        mig_strategy: Some(MigStrategy::Mixed),
        ..Overrides::default()
    });
    assert_eq!(
        c.plugin.device_list_strategies,
        [DeviceListStrategy::VolumeMounts]
    );
    assert_eq!(c.mig_strategy, MigStrategy::Mixed);
}

#[test]
fn health_and_strategy_extensions() {
    let c = parse("health: {ignoredXids: [13], recoverAfter: 30s}\nstrategy: {trainingExclusiveAboveGiB: 24, migRangeGiB: [2, 40]}").unwrap();
    assert_eq!(c.health.ignored_xids, BTreeSet::from([13]));
    assert_eq!(c.health.recover_after, std::time::Duration::from_secs(30));
    assert_eq!(c.strategy.training_exclusive_above_gib, 24.0);
    assert_eq!(c.strategy.mig_range_gib, [2.0, 40.0]);
}

#[test]
fn the_ctk_path_must_be_under_the_driver_root_or_on_the_allow_list() {
    for ok in [
        "flags: {plugin: {nvidiaCTKPath: /usr/local/nvidia/toolkit/nvidia-cdi-hook}}",
        "flags: {nvidiaDriverRoot: /run/nvidia/driver, \
         plugin: {nvidiaCTKPath: /run/nvidia/driver/usr/bin/nvidia-ctk}}",
    ] {
        assert!(parse(ok).is_ok(), "{ok}");
    }
    let found = errors("flags: {plugin: {nvidiaCTKPath: /tmp/payload}}");
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with(
            "flags.plugin.nvidiaCTKPath: the CDI hook runs as root on the host: it must be one \
             of /usr/bin/nvidia-ctk, /usr/bin/nvidia-cdi-hook"
        ) && found[0].ends_with("got \"/tmp/payload\""),
        "{found:?}"
    );
    // Climbing out of the driver root is not under it.
    let found = errors(
        "flags: {nvidiaDriverRoot: /run/nvidia/driver, \
         plugin: {nvidiaCTKPath: /run/nvidia/driver/../../../tmp/payload}}",
    );
    assert!(
        found[0].contains("under the driver root /run/nvidia/driver (flags.nvidiaDriverRoot)"),
        "{found:?}"
    );
}

#[test]
fn a_ctk_path_from_flags_or_env_is_checked_against_the_driver_root_in_force() {
    let file = parse("flags: {plugin: {nvidiaCTKPath: /usr/bin/nvidia-ctk}}").unwrap();
    let env = Overrides {
        nvidia_ctk_path: Some("/opt/hook".into()),
        ..Overrides::default()
    };
    let error = check_hook_path(&file.clone().with_overrides(&env), &env).unwrap_err();
    assert_eq!(
        error.path,
        "--nvidia-cdi-hook-path (NVIDIA_CDI_HOOK_PATH, NVIDIA_CTK_PATH)"
    );
    assert!(error.message.ends_with("got \"/opt/hook\""), "{error}");
    // Under a driver root given by flag: allowed.
    let rooted = Overrides {
        nvidia_driver_root: Some("/opt".into()),
        ..env.clone()
    };
    assert_eq!(
        check_hook_path(&file.clone().with_overrides(&rooted), &rooted),
        Ok(())
    );
    // The file's path, under a driver root the flags moved away from it: named as the field.
    let file = parse(
        "flags: {nvidiaDriverRoot: /opt/driver, plugin: {nvidiaCTKPath: /opt/driver/bin/nvidia-ctk}}",
    )
    .unwrap();
    let moved = Overrides {
        nvidia_driver_root: Some("/run/nvidia/driver".into()),
        ..Overrides::default()
    };
    let error = check_hook_path(&file.with_overrides(&moved), &moved).unwrap_err();
    assert_eq!(error.path, "flags.plugin.nvidiaCTKPath");
}

#[test]
fn documents_over_the_limits_are_refused_before_they_are_parsed() {
    // 200 KB of nested `[`: 19 s in serde_yaml_ng before the check.
    let deep = format!("version: v1\nflags: {}", "[".repeat(200_000));
    let started = std::time::Instant::now();
    assert_eq!(
        errors(&deep),
        ["config: nested 65 levels deep at line 2; the limit is 64"]
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let large = format!("version: v1\n# {}\n", "x".repeat(300 * 1024));
    assert_eq!(
        errors(&large),
        ["config: the file is 301 KiB; the limit is 256 KiB"]
    );
}

#[test]
fn the_dra_section_is_read_and_checked_with_paths() {
    use crate::dra::partition::DraDevices;
    let c =
        parse("dra: {enabled: true, driverName: gpu.example.com, devices: [0, GPU-abc]}").unwrap();
    assert_eq!(c.dra.enabled, Some(true));
    assert_eq!(c.dra.driver_name.as_deref(), Some("gpu.example.com"));
    assert_eq!(
        c.dra.devices,
        Some(DraDevices::List(vec!["0".into(), "GPU-abc".into()]))
    );
    assert_eq!(
        parse("dra: {devices: all}").unwrap().dra.devices,
        Some(DraDevices::All)
    );
    assert_eq!(parse("dra: {}").unwrap().dra, DraSettings::default());
    let e = errors("dra: {driverName: Not_A_Name, devices: [gpu0], enable: true}");
    assert!(e.iter().any(|m| m.starts_with("dra.driverName: ")), "{e:?}");
    assert!(
        e.iter()
            .any(|m| m.starts_with("dra.devices: ") && m.contains("gpu0")),
        "{e:?}"
    );
    assert!(e.iter().any(|m| m.contains("dra.enable")), "{e:?}");
    let e = errors("dra: {devices: {a: 1}}");
    assert!(
        e.iter()
            .any(|m| m.starts_with("dra.devices: must be all, none")),
        "{e:?}"
    );
}

#[test]
fn mps_is_accepted_with_nvidias_defaults() {
    let text = "flags: {mpsRoot: /run/nvidia/mps}\nsharing:\n  mps:\n    resources:\n    - {name: nvidia.com/gpu, replicas: 10}\n";
    let c = parse(text).expect("valid");
    assert_eq!(c.mps.resources.len(), 1);
    assert_eq!(c.mps.resources[0].replicas, 10);
    assert_eq!(
        c.mps.resources[0].advertised(c.mps.rename_by_default),
        "nvidia.com/gpu"
    );
    // NVIDIA's config.go: failRequestsGreaterThanOne defaults to true for MPS only.
    assert!(c.mps.fail_requests_greater_than_one);
    assert!(!c.time_slicing.fail_requests_greater_than_one);
    assert_eq!(c.plugin.mps_root.as_deref(), Some("/run/nvidia/mps"));

    let c = parse("sharing: {mps: {renameByDefault: true, failRequestsGreaterThanOne: false, resources: [{name: gpu, replicas: 2}]}}")
        .map_err(|e| format!("{e:?}"))
        .expect("valid");
    assert_eq!(c.mps.resources[0].advertised(true), "nvidia.com/gpu.shared");
    assert!(!c.mps.fail_requests_greater_than_one);
}

#[test]
fn mps_combinations_nvidia_refuses_are_refused_with_its_reasons() {
    for (text, needle) in [
        (
            "sharing: {mps: {resources: [{name: gpu, replicas: 2}]}, timeSlicing: {resources: [{name: gpu, replicas: 2}]}}",
            "sharing.timeSlicing: cannot be used together with sharing.mps",
        ),
        (
            "flags: {migStrategy: mixed}\nsharing: {mps: {resources: [{name: gpu, replicas: 2}]}}",
            "flags.migStrategy: using --mig-strategy=mixed is not supported with MPS",
        ),
        (
            "sharing: {mps: {resources: [{name: nvidia.com/mig-1g.10gb, replicas: 2}]}}",
            "sharing.mps.resources[0].name: sharing using MPS is not supported for MIG devices",
        ),
        (
            "sharing: {mps: {resources: [{name: gpu, replicas: 2}]}, vgpu: {resources: [{name: gpu, memoryMiB: 1024}]}}",
            "sharing.vgpu.resources[0]: selects the same nvidia.com/gpu device(s) as sharing.mps.resources[0]",
        ),
    ] {
        let e = errors(text);
        assert!(e.iter().any(|m| m.contains(needle)), "{text}: missing {needle:?} in {e:#?}");
    }
}
