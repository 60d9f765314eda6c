//! `{{name}}`: a transform that sets the field `hello` to `"world"` in map values and passes
//! everything else unchanged.

use edgerep_guest::{Change, Event, Transform};

/// The plugin.
pub struct Plugin;

impl Transform for Plugin {
    fn transform(event: Event) -> Result<Vec<Change>, String> {
        let mut change = Change::from_event(&event);
        if let Some(mut value) = event.value_cbor()?
            && value.set("hello", "world").is_ok()
        {
            change.set_value(&value);
        }
        Ok(vec![change])
    }
}

edgerep_guest::export_transform!(Plugin);

#[cfg(test)]
mod tests {
    //! Native tests: `cargo test` in this folder runs the plugin's code without a node.
    use super::*;
    use edgerep_guest::cbor::Value;

    #[test]
    fn sets_hello_in_maps_and_passes_the_rest() {
        let value: Value = [("name", "x")].into_iter().collect();
        let changes = Plugin::transform(Event::put("things", "t-1", &value)).unwrap();
        let out = changes[0].value_cbor().unwrap().unwrap();
        assert_eq!(out.get("hello").and_then(|v| v.as_str()), Some("world"));
        let deleted = Plugin::transform(Event::delete("things", "t-1")).unwrap();
        assert!(deleted[0].value_cbor().unwrap().is_none());
    }
}
