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
