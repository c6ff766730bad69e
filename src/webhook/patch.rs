//! JSON Patch (RFC 6902) operations that add a GPU limit to a container and record the decision
//! in an annotation. Pure.

use serde_json::{json, Map, Value};

/// A key as one JSON Pointer segment (RFC 6901): `~` → `~0`, `/` → `~1`.
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// How much of `resources.limits` a container already has: a patch must create what is missing
/// (adding below a member that does not exist fails the whole patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourcesShape {
    /// No `resources` (or null).
    NoResources,
    /// `resources` without `limits` (or null).
    NoLimits,
    /// `resources.limits` is a map.
    Limits,
}

/// Ops that set `resources.limits[<resource>] = "<count>"` on `containers[index]`, creating
/// `resources` and `limits` when absent (or null). `shape` is that container's.
pub fn add_limit(index: usize, shape: ResourcesShape, resource: &str, count: u32) -> Vec<Value> {
    let base = format!("/spec/containers/{index}/resources");
    let quantity = Value::String(count.to_string());
    match shape {
        ResourcesShape::NoResources => vec![json!({
            "op": "add",
            "path": base,
            "value": {"limits": {resource: quantity}},
        })],
        ResourcesShape::NoLimits => vec![json!({
            "op": "add",
            "path": format!("{base}/limits"),
            "value": {resource: quantity},
        })],
        ResourcesShape::Limits => vec![json!({
            "op": "add",
            "path": format!("{base}/limits/{}", escape(resource)),
            "value": quantity,
        })],
    }
}

/// Op that sets annotation `key` to `value` on a pod that has an annotations map or not
/// (creating it when absent). Adding an existing member replaces it.
pub fn set_annotation(has_annotations: bool, key: &str, value: &str) -> Value {
    if has_annotations {
        json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", escape(key)),
            "value": value,
        })
    } else {
        let mut annotations = Map::new();
        annotations.insert(key.to_string(), Value::String(value.to_string()));
        json!({"op": "add", "path": "/metadata/annotations", "value": annotations})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apply `add` ops the way the API server does (RFC 6902 `add` on objects), to check that
    /// the ops produce the intended document and not only the intended text.
    fn apply(doc: &mut Value, ops: &[Value]) {
        for op in ops {
            assert_eq!(op["op"], "add");
            let path = op["path"].as_str().unwrap();
            let segments: Vec<String> = path
                .split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect();
            let (last, parents) = segments.split_last().unwrap();
            let mut target = &mut *doc;
            for s in parents {
                target = match target {
                    Value::Array(a) => &mut a[s.parse::<usize>().unwrap()],
                    Value::Object(o) => o.get_mut(s).unwrap_or_else(|| panic!("no {s} in {path}")),
                    other => panic!("cannot descend into {other}"),
                };
            }
            target
                .as_object_mut()
                .unwrap()
                .insert(last.clone(), op["value"].clone());
        }
    }

    fn pod(container: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [container, {"name": "side"}]}})
    }

    #[test]
    fn escaping_follows_rfc6901() {
        assert_eq!(escape("nvidia.com/mig-1g.10gb"), "nvidia.com~1mig-1g.10gb");
        assert_eq!(escape("a~b/c"), "a~0b~1c");
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn limits_are_added_at_the_right_depth() {
        let cases = [
            // (first container, expected op path)
            (json!({"name": "c"}), "/spec/containers/0/resources"),
            (
                json!({"name": "c", "resources": null}),
                "/spec/containers/0/resources",
            ),
            (
                json!({"name": "c", "resources": {}}),
                "/spec/containers/0/resources/limits",
            ),
            (
                json!({"name": "c", "resources": {"requests": {"cpu": "1"}}}),
                "/spec/containers/0/resources/limits",
            ),
            (
                json!({"name": "c", "resources": {"limits": {"memory": "1Gi"}}}),
                "/spec/containers/0/resources/limits/nvidia.com~1mig-1g.10gb",
            ),
        ];
        for (container, path) in cases {
            let shape = serde_json::from_value::<crate::webhook::admission::input::Container>(
                container.clone(),
            )
            .unwrap()
            .shape();
            let ops = add_limit(0, shape, "nvidia.com/mig-1g.10gb", 1);
            assert_eq!(ops.len(), 1);
            assert_eq!(ops[0]["path"], path, "{container}");
            let mut doc = pod(container.clone());
            apply(&mut doc, &ops);
            let first = &doc["spec"]["containers"][0];
            assert_eq!(first["resources"]["limits"]["nvidia.com/mig-1g.10gb"], "1");
            // Nothing that was there is lost.
            if let Some(mem) = container.pointer("/resources/limits/memory") {
                assert_eq!(&first["resources"]["limits"]["memory"], mem);
            }
            if let Some(cpu) = container.pointer("/resources/requests/cpu") {
                assert_eq!(&first["resources"]["requests"]["cpu"], cpu);
            }
            // Other containers are untouched.
            assert_eq!(doc["spec"]["containers"][1], json!({"name": "side"}));
        }
    }

    #[test]
    fn annotations_are_added_or_created() {
        let with = json!({"annotations": {"gpu.ml.io/workload-type": "inference"}});
        let op = set_annotation(true, "gpu.ml.io/decision", "{}");
        assert_eq!(op["path"], "/metadata/annotations/gpu.ml.io~1decision");
        let mut doc = json!({"metadata": with});
        apply(&mut doc, &[op]);
        assert_eq!(doc["metadata"]["annotations"]["gpu.ml.io/decision"], "{}");
        assert_eq!(
            doc["metadata"]["annotations"]["gpu.ml.io/workload-type"],
            "inference"
        );

        let without = json!({"name": "p"});
        let op = set_annotation(false, "gpu.ml.io/decision", "{}");
        assert_eq!(op["path"], "/metadata/annotations");
        let mut doc = json!({"metadata": without});
        apply(&mut doc, &[op]);
        assert_eq!(
            doc["metadata"]["annotations"],
            json!({"gpu.ml.io/decision": "{}"})
        );
    }
}
