//! `metadata.managedFields` as the API server keeps them, for the double: one entry per
//! (manager, operation, apiVersion), holding the fields that manager set, stamped with the time
//! of its last write in whole seconds.
//!
//! A write gives the writing manager every field it changed and takes those fields from every
//! other manager; a field removed belongs to nobody. What it deliberately simplifies: a list is
//! one field (the real server tracks list items by key), server-side apply's conflicts are not
//! modelled, and the request's own `managedFields` are ignored.

use serde_json::{Map, Value, json};

/// Metadata the server sets itself: never a manager's field.
const SERVER_OWNED: [&str; 7] = [
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "name",
    "namespace",
];

/// Who writes: the request's `fieldManager`, else its User-Agent up to the first `/`.
pub(super) struct Manager {
    pub(super) name: String,
    /// `Update` for create, update and merge patches.
    pub(super) operation: &'static str,
}

impl Manager {
    /// The sandbox itself, writing as another controller would.
    #[must_use]
    pub(super) fn sandbox() -> Self {
        Self {
            name: "sandbox".into(),
            operation: "Update",
        }
    }

    #[must_use]
    pub(super) fn of(field_manager: Option<&str>, user_agent: &str) -> Self {
        let name = field_manager
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| user_agent.split('/').next().unwrap_or_default());
        Self {
            name: name.to_owned(),
            operation: "Update",
        }
    }
}

/// `object`'s managedFields after `manager` wrote it over `before` (`None`: a create), at
/// `time` (RFC 3339, whole seconds).
#[must_use]
pub(super) fn after_write(
    before: Option<&Value>,
    object: &Value,
    manager: &Manager,
    api_version: &str,
    time: &str,
) -> Value {
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    diff(
        &owned(before.unwrap_or(&Value::Null)),
        &owned(object),
        &mut Vec::new(),
        &mut changed,
        &mut removed,
    );
    let mut entries: Vec<Value> = before
        .and_then(|b| b["metadata"]["managedFields"].as_array().cloned())
        .unwrap_or_default();
    let mine = |e: &Value| {
        e["manager"] == manager.name.as_str()
            && e["operation"] == manager.operation
            && e["apiVersion"] == api_version
    };
    for entry in &mut entries {
        let others = !mine(entry);
        let fields = &mut entry["fieldsV1"];
        for path in changed.iter().filter(|_| others).chain(&removed) {
            unset(fields, path);
        }
    }
    if !entries.iter().any(mine) {
        entries.push(json!({
            "manager": manager.name,
            "operation": manager.operation,
            "apiVersion": api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": {},
        }));
    }
    for entry in entries.iter_mut().filter(|e| mine(e)) {
        for path in &changed {
            set(&mut entry["fieldsV1"], path);
        }
        entry["time"] = json!(time);
    }
    entries.retain(|e| e["fieldsV1"].as_object().is_some_and(|f| !f.is_empty()));
    Value::Array(entries)
}

/// The part of an object that managers own: all of it but the server's own metadata.
fn owned(object: &Value) -> Value {
    let mut owned = object.clone();
    if let Some(o) = owned.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
        if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in SERVER_OWNED {
                meta.remove(key);
            }
        }
    }
    owned
}

/// The leaf fields that differ between `old` and `new`: set or changed in `new` (`changed`), or
/// gone from it (`removed`).
fn diff(
    old: &Value,
    new: &Value,
    at: &mut Vec<String>,
    changed: &mut Vec<Vec<String>>,
    removed: &mut Vec<Vec<String>>,
) {
    let empty = Map::new();
    match (old, new) {
        (Value::Object(_) | Value::Null, Value::Object(n)) => {
            let o = old.as_object().unwrap_or(&empty);
            for (k, v) in n {
                at.push(k.clone());
                diff(o.get(k).unwrap_or(&Value::Null), v, at, changed, removed);
                at.pop();
            }
            for (k, v) in o.iter().filter(|(k, _)| !n.contains_key(*k)) {
                at.push(k.clone());
                diff(v, &Value::Null, at, changed, removed);
                at.pop();
            }
        }
        (Value::Object(o), Value::Null) => {
            for (k, v) in o {
                at.push(k.clone());
                diff(v, &Value::Null, at, changed, removed);
                at.pop();
            }
        }
        (o, Value::Null) if !o.is_null() => removed.push(at.clone()),
        (o, n) if o != n => changed.push(at.clone()),
        _ => {}
    }
}

/// Adds the field at `path` to a `fieldsV1` set.
fn set(fields: &mut Value, path: &[String]) {
    let mut node = fields;
    for key in path {
        if !node.is_object() {
            *node = json!({});
        }
        let Value::Object(map) = node else { return };
        node = map.entry(format!("f:{key}")).or_insert_with(|| json!({}));
    }
}

/// Takes the field at `path` (and everything under it) out of a `fieldsV1` set, dropping
/// parents left empty.
fn unset(fields: &mut Value, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    let Some(node) = fields.as_object_mut() else {
        return false;
    };
    let key = format!("f:{first}");
    let gone = match node.get_mut(&key) {
        Some(child) => unset(child, rest) || child.as_object().is_some_and(Map::is_empty),
        None => false,
    };
    if gone {
        node.remove(&key);
    }
    node.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(selector: &Value, annotations: &Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "s", "resourceVersion": "1", "annotations": annotations},
               "spec": {"selector": selector}})
    }

    #[test]
    fn a_write_moves_the_fields_it_changes_to_its_manager_and_stamps_only_its_entry() {
        let patcher = Manager::of(Some("kubectl-patch"), "kubectl/v1.31.0");
        let watchdog = Manager::of(None, "cutover-watchdog/0.1.0 (pod-a)");
        assert_eq!(watchdog.name, "cutover-watchdog");

        let v1 = service(&json!({"app": "a", "version": "v1"}), &json!({}));
        let mut created = v1.clone();
        created["metadata"]["managedFields"] =
            after_write(None, &v1, &Manager::of(None, "kubectl/v1.31"), "v1", "T0");
        let f = &created["metadata"]["managedFields"][0];
        assert_eq!(f["manager"], "kubectl");
        assert_eq!(
            f["fieldsV1"],
            json!({"f:spec": {"f:selector": {"f:app": {}, "f:version": {}}}})
        );

        let mut v2 = service(&json!({"app": "a", "version": "v2"}), &json!({}));
        v2["metadata"]["managedFields"] = after_write(Some(&created), &v2, &patcher, "v1", "T1");
        let entries = v2["metadata"]["managedFields"].as_array().unwrap().clone();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:spec": {"f:selector": {"f:app": {}}}}),
            "the version key moved away from the creator"
        );
        assert_eq!(
            entries[0]["time"], "T0",
            "an entry keeps its time when others write"
        );
        assert_eq!(
            entries[1],
            json!({"manager": "kubectl-patch", "operation": "Update", "apiVersion": "v1",
                   "fieldsType": "FieldsV1", "time": "T1",
                   "fieldsV1": {"f:spec": {"f:selector": {"f:version": {}}}}})
        );

        let annotated = service(&json!({"app": "a", "version": "v2"}), &json!({"k": "x"}));
        let fields = after_write(Some(&v2), &annotated, &watchdog, "v1", "T2");
        let fields = fields.as_array().unwrap();
        assert_eq!(
            fields[1]["time"], "T1",
            "the selector's writer keeps its time"
        );
        assert_eq!(
            fields[2]["fieldsV1"],
            json!({"f:metadata": {"f:annotations": {"f:k": {}}}})
        );
    }

    #[test]
    fn a_removed_field_belongs_to_nobody_and_an_empty_entry_is_dropped() {
        let m = Manager::of(Some("a"), "");
        let before = service(&json!({"version": "v1"}), &json!({}));
        let mut before_with = before.clone();
        before_with["metadata"]["managedFields"] = after_write(None, &before, &m, "v1", "T0");
        let after = service(&json!({}), &json!({}));
        let fields = after_write(
            Some(&before_with),
            &after,
            &Manager::of(Some("b"), ""),
            "v1",
            "T1",
        );
        assert_eq!(fields, json!([]));
    }
}
