//! `enrich`: adds a computed field.
//!
//! Params: `from` (default `celsius`) and `to` (default `fahrenheit`). When the map value has a
//! numeric (integer or float) field `from`, sets `to` to the float `from * 9 / 5 + 32` (computed
//! in f64 in exactly that order) and the metadata `enriched-by` to `enrich`. Anything else passes
//! unchanged.

use edgerep_guest::{Change, Event, Transform, param_or};

/// The plugin.
pub struct Enrich;

impl Transform for Enrich {
    fn transform(event: Event) -> Result<Vec<Change>, String> {
        let from = param_or("from", "celsius");
        let to = param_or("to", "fahrenheit");
        let mut change = Change::from_event(&event);
        if let Some(mut value) = event.value_cbor()?
            && let Some(x) = value.get(&from).and_then(|v| v.as_f64())
        {
            value.set(&to, x * 9.0 / 5.0 + 32.0)?;
            change.set_value(&value);
            change.set_meta("enriched-by", "enrich");
        }
        Ok(vec![change])
    }
}

edgerep_guest::export_transform!(Enrich);
