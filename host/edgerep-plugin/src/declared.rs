//! The parameters a component declares (the `edgerep:params` custom section its build embeds,
//! see `edgerep_wire::params`), and a config's parameters checked against them at load.

use std::collections::BTreeMap;

use edgerep_wire::params::{self, DeclaredParam, ParamsError};

/// Why a component's declared parameters cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeclaredError {
    /// Its sections do not parse.
    #[error("reading the component's sections: {0}")]
    Sections(#[from] wasmparser::BinaryReaderError),
    /// It has the section twice.
    #[error("the component has two {:?} sections", params::SECTION)]
    TwoSections,
    /// The section is not a valid list.
    #[error("declared parameters: {0}")]
    Params(#[from] ParamsError),
}

/// Why a config's parameters do not fit what a component declares ([`apply`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Parameters are given that the component does not declare.
    #[error(
        "params {unknown:?} are not parameters of this plugin; it declares: {} (a plugin declares its parameters in params.toml beside its source: declare them there and build it again, or remove them from the config){}",
        names(.declared),
        misplaced_hint(.unknown)
    )]
    Unknown {
        /// The names given that are not declared.
        unknown: Vec<String>,
        /// What the component declares.
        declared: Vec<DeclaredParam>,
    },
    /// Required parameters are not given.
    #[error(
        "required params {missing:?} missing (add them to the plugin's params); it declares: {}",
        names(.declared)
    )]
    Missing {
        /// The names of the required parameters not given.
        missing: Vec<String>,
        /// What the component declares.
        declared: Vec<DeclaredParam>,
    },
}

/// The keys of a `[plugins.NAME]` table: one of them among a plugin's params was most likely
/// written after the `[plugins.NAME.params]` header, where TOML puts every later key.
const PLUGIN_KEYS: [&str; 6] = [
    "path",
    "sha256",
    "fuel",
    "memory_bytes",
    "deadline_ms",
    "on_failure",
];

/// A hint for params named like a plugin's own keys (empty if none is).
fn misplaced_hint(unknown: &[String]) -> String {
    let misplaced: Vec<&str> = unknown
        .iter()
        .map(String::as_str)
        .filter(|k| PLUGIN_KEYS.contains(k))
        .collect();
    if misplaced.is_empty() {
        return String::new();
    }
    format!(
        "; {misplaced:?} is a key of the plugin itself: move it above the [plugins.NAME.params] table, where it takes effect"
    )
}

/// The parameters `wasm` declares (`None`: it declares none, and any parameters are passed
/// through unchecked). Only the component's own top-level sections count.
pub fn of_component(wasm: &[u8]) -> Result<Option<Vec<DeclaredParam>>, DeclaredError> {
    let mut found = None;
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        match payload {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::CustomSection(c) if depth == 0 && c.name() == params::SECTION => {
                if found.is_some() {
                    return Err(DeclaredError::TwoSections);
                }
                found = Some(params::decode(c.data())?);
            }
            _ => {}
        }
    }
    Ok(found)
}

/// `given` checked against `declared`: every name declared, every required one given; the
/// defaults of those not given filled in. Err says what is wrong and what is declared.
pub fn apply(
    declared: &[DeclaredParam],
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApplyError> {
    let unknown: Vec<String> = given
        .keys()
        .filter(|k| !declared.iter().any(|p| &p.name == *k))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(ApplyError::Unknown {
            unknown,
            declared: declared.to_vec(),
        });
    }
    let missing: Vec<String> = declared
        .iter()
        .filter(|p| p.required && !given.contains_key(&p.name))
        .map(|p| p.name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(ApplyError::Missing {
            missing,
            declared: declared.to_vec(),
        });
    }
    let mut out = given.clone();
    for p in declared {
        if let Some(d) = &p.default {
            out.entry(p.name.clone()).or_insert_with(|| d.clone());
        }
    }
    Ok(out)
}

/// The declared parameters as [`ApplyError`] lists them (`none` if there are none).
fn names(declared: &[DeclaredParam]) -> String {
    if declared.is_empty() {
        return "none".to_owned();
    }
    declared
        .iter()
        .map(|p| {
            let mut s = p.name.clone();
            if p.required {
                s.push_str(" (required)");
            } else if let Some(d) = &p.default {
                s.push_str(&format!(" (default {d:?})"));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_parameters_are_checked_and_defaults_filled_in() {
        let declared = vec![
            DeclaredParam {
                name: "equals".into(),
                required: true,
                default: None,
                description: String::new(),
            },
            DeclaredParam {
                name: "field".into(),
                required: false,
                default: Some("status".into()),
                description: String::new(),
            },
        ];
        let given = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let out = apply(&declared, &given(&[("equals", "x")])).unwrap();
        assert_eq!(out, given(&[("equals", "x"), ("field", "status")]));
        let e = apply(&declared, &given(&[])).unwrap_err().to_string();
        assert!(e.contains("\"equals\"") && e.contains("missing"), "{e}");
        let e = apply(&declared, &given(&[("equals", "x"), ("feild", "y")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"feild\"") && e.contains("field (default"),
            "{e}"
        );
        assert!(!e.contains("key of the plugin itself"), "{e}");
        // A plugin's own key written under its params table (TOML puts it there).
        let e = apply(
            &declared,
            &given(&[("equals", "x"), ("on_failure", "halt")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("[\"on_failure\"] is a key of the plugin itself"),
            "{e}"
        );
    }
}
