//! The parameters a plugin declares: `params.toml` beside its source, embedded by the build in
//! the component (see `edgerep_wire::params`), where a node checks a config's `params` against
//! them when it loads the plugin.
//!
//! ```toml
//! [field]                      # one table per parameter, named as `param("field")` asks
//! required = true              # a node refuses to load the plugin without it
//! description = "the field to compare"
//!
//! [equals]
//! default = "active"           # what the plugin gets when the config gives none
//! description = "the value the field must have"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use edgerep_wire::params::{self, DeclaredParam};
use serde::Deserialize;
use wasm_encoder::{ComponentSection, CustomSection};

use crate::BuildError;

/// The file a plugin folder declares its parameters in.
pub const FILE: &str = "params.toml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    required: bool,
    default: Option<String>,
    #[serde(default)]
    description: String,
}

/// The parameters `dir/params.toml` declares (`None`: the file is absent).
pub fn read(dir: &Path) -> Result<Option<Vec<DeclaredParam>>, BuildError> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BuildError::io(&path, e)),
    };
    let raw: BTreeMap<String, Raw> = toml::from_str(&text).map_err(|e| BuildError::io(&path, e))?;
    let declared: Vec<DeclaredParam> = raw
        .into_iter()
        .map(|(name, r)| DeclaredParam {
            name,
            required: r.required,
            default: r.default,
            description: r.description,
        })
        .collect();
    params::check(&declared).map_err(|e| BuildError::io(&path, e))?;
    Ok(Some(declared))
}

/// `component` with the parameters `dir/params.toml` declares embedded (unchanged when the
/// folder has no such file).
pub fn embed(mut component: Vec<u8>, dir: &Path) -> Result<Vec<u8>, BuildError> {
    if let Some(declared) = read(dir)? {
        CustomSection {
            name: params::SECTION.into(),
            data: params::encode(&declared).into(),
        }
        .append_to_component(&mut component);
    }
    Ok(component)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_declares_its_parameters_in_params_toml() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        std::fs::write(
            dir.path().join(FILE),
            "[field]\nrequired = true\ndescription = \"f\"\n[equals]\ndefault = \"x\"\n",
        )
        .unwrap();
        let declared = read(dir.path()).unwrap().unwrap();
        assert_eq!(declared[0].name, "equals", "sorted by name");
        assert_eq!(declared[0].default.as_deref(), Some("x"));
        assert!(declared[1].required);
        std::fs::write(
            dir.path().join(FILE),
            "[x]\nrequired = true\ndefault = \"d\"\n",
        )
        .unwrap();
        assert!(
            read(dir.path())
                .unwrap_err()
                .to_string()
                .contains("no default")
        );
        std::fs::write(dir.path().join(FILE), "[x]\nrequierd = true\n").unwrap();
        assert!(
            read(dir.path())
                .unwrap_err()
                .to_string()
                .contains("requierd")
        );
    }
}
