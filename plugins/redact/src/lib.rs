//! `redact`: deletes or masks fields of map values.
//!
//! Params: `remove` (comma-separated field names to delete from the map value) and `mask`
//! (comma-separated field names whose value becomes the text `"***"`; only fields that are
//! present). A field in both lists is deleted. Deletes, non-map values and events without the
//! fields pass unchanged.

use edgerep_guest::cbor::Value;
use edgerep_guest::{Change, Event, Transform, param_list};

/// The plugin.
pub struct Redact;

impl Transform for Redact {
    fn transform(event: Event) -> Result<Vec<Change>, String> {
        let mut change = Change::from_event(&event);
        if let Some(mut value) = event.value_cbor()?
            && value.is_map()
        {
            let mut changed = false;
            for field in param_list("remove") {
                changed |= value.remove(&field).is_some();
            }
            for field in param_list("mask") {
                if let Some(v) = value.get_mut(&field) {
                    *v = Value::from("***");
                    changed = true;
                }
            }
            if changed {
                change.set_value(&value);
            }
        }
        Ok(vec![change])
    }
}

edgerep_guest::export_transform!(Redact);
