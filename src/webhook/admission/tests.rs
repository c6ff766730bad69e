use super::*;
use crate::strategy::tests::offer;
use crate::strategy::Mode;

fn catalog() -> Catalog {
    crate::strategy::tests::catalog(&[
        offer("nvidia.com/gpu", Mode::Exclusive, 81559, 8),
        offer("nvidia.com/mig-1g.10gb", Mode::Mig, 9984, 14),
        offer("nvidia.com/mig-3g.40gb", Mode::Mig, 40448, 2),
    ])
}

fn request(pod: Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "ml",
            "object": pod,
        }
    })
    .to_string()
    .into_bytes()
}

fn annotated(workload: &str, memory: &str, container: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": {WORKLOAD_ANNOTATION: workload, MEMORY_ANNOTATION: memory}},
        "spec": {"containers": [container, {"name": "sidecar", "image": "busybox"}]}
    })
}

fn run(body: &[u8]) -> Reviewed {
    review(body, &catalog(), &StrategyThresholds::default())
}

fn response(r: &Reviewed) -> &Value {
    assert_eq!(r.review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(r.review["kind"], "AdmissionReview");
    &r.review["response"]
}

fn ops(r: &Reviewed) -> Vec<Value> {
    let encoded = response(r)["patch"].as_str().expect("a patch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn an_annotated_pod_gets_the_resolved_limit_and_a_decision() {
    let r = run(&request(annotated(
        "inference",
        "8Gi",
        json!({"name": "main", "image": "x"}),
    )));
    let resp = response(&r);
    assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    assert!(resp.get("warnings").is_none());
    let ops = ops(&r);
    assert_eq!(
        ops[0],
        json!({"op": "add", "path": "/spec/containers/0/resources",
               "value": {"limits": {"nvidia.com/mig-1g.10gb": "1"}}})
    );
    assert_eq!(ops[1]["path"], "/metadata/annotations/gpu.ml.io~1decision");
    let decision: Value = serde_json::from_str(ops[1]["value"].as_str().unwrap()).unwrap();
    assert_eq!(decision["strategy"], "mig");
    assert_eq!(decision["resource"], "nvidia.com/mig-1g.10gb");
    assert_eq!(decision["fallback"], false);
    assert_eq!(decision["gpuMemoryBytes"], 8u64 << 30);
    assert!(decision["reason"]
        .as_str()
        .unwrap()
        .contains("rule 3: 4 GiB <= 8 GiB <= 20 GiB -> mig"));
    assert_eq!(
        r.outcome,
        Outcome::Patched {
            resource: "nvidia.com/mig-1g.10gb".into(),
            fallback: false
        }
    );
}

#[test]
fn existing_limits_are_extended_not_replaced() {
    let r = run(&request(annotated(
        "training",
        "24Gi",
        json!({"name": "main", "resources": {"limits": {"memory": "8Gi"}}}),
    )));
    assert_eq!(
        ops(&r)[0],
        json!({"op": "add", "path": "/spec/containers/0/resources/limits/nvidia.com~1gpu", "value": "1"})
    );
}

#[test]
fn a_fallback_is_allowed_with_a_warning() {
    // Inference below 4 GiB wants shared; the catalog has none, nor vGPU: MIG.
    let r = run(&request(annotated(
        "inference",
        "2Gi",
        json!({"name": "m"}),
    )));
    let resp = response(&r);
    assert_eq!(resp["allowed"], true);
    assert_eq!(
        resp["warnings"],
        json!(["gpu.ml.io: no shared resource fits, using mig nvidia.com/mig-1g.10gb"])
    );
    let decision: Value = serde_json::from_str(ops(&r)[1]["value"].as_str().unwrap()).unwrap();
    assert_eq!(decision["fallback"], true);
    assert_eq!(decision["strategy"], "mig");
}

#[test]
fn pods_that_need_nothing_from_us_pass_unchanged() {
    let plain = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
    let has_gpu = annotated(
        "inference",
        "8Gi",
        json!({"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1}}}),
    );
    let mut init_request = annotated("inference", "8Gi", json!({"name": "c"}));
    init_request["spec"]["initContainers"] =
        json!([{"name": "warm", "resources": {"requests": {"nvidia.com/gpu.shared": "1"}}}]);
    let other_annotations = json!({"metadata": {"name": "p", "annotations": {"team": "ml"}},
                                   "spec": {"containers": [{"name": "c"}]}});
    for (pod, why) in [
        (plain, "no gpu.ml.io annotations"),
        (other_annotations, "no gpu.ml.io annotations"),
        (has_gpu, "container c already requests nvidia.com/gpu"),
        (
            init_request,
            "container warm already requests nvidia.com/gpu.shared",
        ),
    ] {
        let r = run(&request(pod));
        let resp = response(&r);
        assert_eq!(resp["allowed"], true);
        assert!(resp.get("patch").is_none());
        assert!(resp.get("patchType").is_none());
        assert_eq!(r.outcome, Outcome::Unchanged(why.into()));
    }
    // Annotated but already requesting: the user is told the annotations were ignored.
    let r = run(&request(annotated(
        "inference",
        "8Gi",
        json!({"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1}}}),
    )));
    assert_eq!(
        response(&r)["warnings"][0],
        "gpu.ml.io/workload-type and gpu.ml.io/gpu-memory ignored: container c already requests nvidia.com/gpu"
    );
}

#[test]
fn other_kinds_and_operations_pass_unchanged() {
    let mut update: Value = serde_json::from_slice(&request(annotated(
        "inference",
        "8Gi",
        json!({"name": "c"}),
    )))
    .unwrap();
    update["request"]["operation"] = json!("UPDATE");
    let mut deployment = update.clone();
    deployment["request"]["operation"] = json!("CREATE");
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let mut binding = deployment.clone();
    binding["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Pod"});
    binding["request"]["subResource"] = json!("binding");
    for (doc, why) in [
        (update, "operation UPDATE"),
        (deployment, "not a Pod (kind apps/v1 Deployment)"),
        (binding, "subresource binding"),
    ] {
        let r = run(doc.to_string().as_bytes());
        assert_eq!(response(&r)["allowed"], true);
        assert!(response(&r).get("patch").is_none());
        assert_eq!(r.outcome, Outcome::Unchanged(why.into()));
    }
}

#[test]
fn bad_annotations_are_denied_with_the_annotation_and_value() {
    let cases = [
        (
            annotated("gaming", "8Gi", json!({"name": "c"})),
            "metadata.annotations[gpu.ml.io/workload-type]: must be training, inference or data-processing, got \"gaming\"",
        ),
        (
            annotated("inference", "lots", json!({"name": "c"})),
            "metadata.annotations[gpu.ml.io/gpu-memory]: expected a number, e.g. 3Gi, got \"lots\"",
        ),
        (
            annotated("inference", "-1Gi", json!({"name": "c"})),
            "metadata.annotations[gpu.ml.io/gpu-memory]: expected a number, e.g. 3Gi, got \"-1Gi\"",
        ),
        (
            json!({"metadata": {"annotations": {WORKLOAD_ANNOTATION: "training"}}, "spec": {"containers": [{"name": "c"}]}}),
            "metadata.annotations[gpu.ml.io/gpu-memory] is required with gpu.ml.io/workload-type: a quantity such as 8Gi",
        ),
        (
            json!({"metadata": {"annotations": {MEMORY_ANNOTATION: "8Gi"}}, "spec": {"containers": [{"name": "c"}]}}),
            "metadata.annotations[gpu.ml.io/workload-type] is required with gpu.ml.io/gpu-memory: training, inference or data-processing",
        ),
        (
            json!({"metadata": {"annotations": {WORKLOAD_ANNOTATION: "training", MEMORY_ANNOTATION: 8}}, "spec": {"containers": [{"name": "c"}]}}),
            "metadata.annotations[gpu.ml.io/gpu-memory]: must be a string such as \"8Gi\", got 8",
        ),
    ];
    for (pod, message) in cases {
        let r = run(&request(pod));
        let resp = response(&r);
        assert_eq!(resp["allowed"], false);
        assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(resp["status"]["code"], 400);
        assert_eq!(resp["status"]["message"], message);
        assert!(resp.get("patch").is_none());
    }
}

#[test]
fn nothing_fitting_is_denied_with_the_reason() {
    let r = run(&request(annotated(
        "training",
        "200Gi",
        json!({"name": "c"}),
    )));
    let resp = response(&r);
    assert_eq!(resp["allowed"], false);
    assert_eq!(resp["status"]["code"], 403);
    assert_eq!(
        resp["status"]["message"],
        "no GPU resource in the cluster catalog fits: training needing 200 GiB: rule 1: training with 200 GiB > 16 GiB -> exclusive; \
         exclusive: no whole-GPU resource has >= 200 GiB per device (largest is nvidia.com/gpu with 81559 MiB); nothing fits"
    );
}

#[test]
fn malformed_requests_get_a_well_formed_refusal() {
    let no_containers = request(
        json!({"metadata": {"annotations": {WORKLOAD_ANNOTATION: "inference", MEMORY_ANNOTATION: "1Gi"}}, "spec": {}}),
    );
    let not_object = request(json!("a pod"));
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"{not json".to_vec(), "", "the request body is not JSON: key must be a string at line 1 column 2"),
        (b"".to_vec(), "", "the request body is not JSON: EOF while parsing a value at line 1 column 0"),
        (
            br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u1"}}"#.to_vec(),
            "u1",
            "expected an AdmissionReview of apiVersion admission.k8s.io/v1, got apiVersion \"admission.k8s.io/v1beta1\" kind \"AdmissionReview\"",
        ),
        (
            br#"{"apiVersion": "v1", "kind": "Pod"}"#.to_vec(),
            "",
            "expected an AdmissionReview of apiVersion admission.k8s.io/v1, got apiVersion \"v1\" kind \"Pod\"",
        ),
        (br#"[1, 2]"#.to_vec(), "", "expected an AdmissionReview of apiVersion admission.k8s.io/v1, got apiVersion none kind none"),
        (
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#.to_vec(),
            "",
            "the AdmissionReview has no request",
        ),
        (
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"kind": {"kind": "Pod"}}}"#.to_vec(),
            "",
            "request.uid is missing or empty",
        ),
        (
            no_containers,
            "705ab4f5-6393-11e8-b7cc-42010a800002",
            "request.object.spec.containers: expected a non-empty list of containers, got none",
        ),
        (
            not_object,
            "705ab4f5-6393-11e8-b7cc-42010a800002",
            "request.object: expected a Pod, got \"a pod\"",
        ),
    ];
    for (body, uid, message) in cases {
        let r = run(&body);
        let resp = response(&r);
        assert_eq!(resp["allowed"], false, "{message}");
        assert_eq!(resp["uid"], uid);
        assert_eq!(resp["status"]["code"], 400);
        assert_eq!(resp["status"]["message"], message);
        assert_eq!(r.outcome, Outcome::Malformed(message.into()));
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A valid annotated review with `junk` spliced in at `at` (a byte offset, clamped to a
    /// char boundary): mostly JSON, broken or retyped somewhere.
    fn spliced(at: usize, cut: usize, junk: &str) -> Vec<u8> {
        let text = String::from_utf8(request(annotated(
            "inference",
            "8Gi",
            json!({"name": "main", "resources": {"limits": {"memory": "1Gi"}}}),
        )))
        .unwrap();
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let mut end = (at + cut).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{junk}{}", &text[..at], &text[end..]).into_bytes()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the body, the answer is a well-formed v1 review and nothing panics.
        #[test]
        fn any_body_gets_a_well_formed_answer(
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..256),
                (any::<usize>(), 0usize..16, "[\\[\\]{}\",:0-9a-z ]{0,12}")
                    .prop_map(|(at, cut, junk)| spliced(at, cut, &junk)),
            ]
        ) {
            let r = run(&body);
            let resp = response(&r);
            prop_assert!(resp["uid"].is_string());
            prop_assert!(resp["allowed"].is_boolean());
            if resp["allowed"] == false {
                prop_assert!(resp["status"]["message"].is_string());
            }
        }
    }
}
