//! The parameters a plugin declares, as its build embeds them in the component: a custom
//! section named [`SECTION`] holding canonical CBOR, `[[name, required, default or null,
//! description]…]`, strictly ascending by name. The sha256 a config pins covers it, so what a
//! plugin declares is part of the build a node runs.

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

/// The custom section's name.
pub const SECTION: &str = "edgerep:params";

/// Most parameters one plugin may declare.
pub const MAX_PARAMS: usize = 256;

/// Longest name, default or description, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;

/// One declared parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredParam {
    /// What `param(name)` asks for: lowercase letters, digits, `_` and `-`.
    pub name: String,
    /// A node refuses to load the plugin without it.
    pub required: bool,
    /// The value the plugin gets when the config gives none (never with `required`).
    pub default: Option<String>,
    /// One sentence for the plugin's users.
    pub description: String,
}

/// Why a parameter list is not valid.
pub fn check(params: &[DeclaredParam]) -> Result<(), String> {
    if params.len() > MAX_PARAMS {
        return Err(format!("{} parameters, at most {MAX_PARAMS}", params.len()));
    }
    for (i, p) in params.iter().enumerate() {
        if p.name.is_empty()
            || !p
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "parameter {:?}: a name is lowercase letters, digits, '_' and '-'",
                p.name
            ));
        }
        if i > 0 && params[i - 1].name >= p.name {
            return Err(format!(
                "parameter {:?}: names must be strictly ascending",
                p.name
            ));
        }
        if p.required && p.default.is_some() {
            return Err(format!(
                "parameter {:?}: a required parameter has no default",
                p.name
            ));
        }
        for text in [Some(&p.name), p.default.as_ref(), Some(&p.description)]
            .into_iter()
            .flatten()
        {
            if text.len() > MAX_TEXT_BYTES {
                return Err(format!(
                    "parameter {:?}: a text of {} bytes, at most {MAX_TEXT_BYTES}",
                    p.name,
                    text.len()
                ));
            }
        }
    }
    Ok(())
}

/// The section's bytes for `params` (sorted by name, checked with [`check`] first).
pub fn encode(params: &[DeclaredParam]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut e = Encoder::new(&mut buf);
    // Writing into a Vec cannot fail.
    let _ = e.array(params.len() as u64);
    for p in params {
        let _ = e
            .array(4)
            .and_then(|e| e.str(&p.name))
            .and_then(|e| e.bool(p.required));
        let _ = match &p.default {
            Some(d) => e.str(d),
            None => e.null(),
        };
        let _ = e.str(&p.description);
    }
    buf
}

/// Reads what [`encode`] wrote, refusing anything else (trailing bytes, other shapes, a list
/// that fails [`check`]).
pub fn decode(bytes: &[u8]) -> Result<Vec<DeclaredParam>, String> {
    let mut d = Decoder::new(bytes);
    let bad = |e: minicbor::decode::Error| format!("declared parameters: {e}");
    let n = d
        .array()
        .map_err(bad)?
        .ok_or("declared parameters: indefinite length")?;
    if n > MAX_PARAMS as u64 {
        return Err(format!(
            "declared parameters: {n} entries, at most {MAX_PARAMS}"
        ));
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        if d.array().map_err(bad)? != Some(4) {
            return Err("declared parameters: an entry is not an array of 4".into());
        }
        let name = d.str().map_err(bad)?.to_owned();
        let required = d.bool().map_err(bad)?;
        let default = if d.datatype().map_err(bad)? == Type::Null {
            d.skip().map_err(bad)?;
            None
        } else {
            Some(d.str().map_err(bad)?.to_owned())
        };
        let description = d.str().map_err(bad)?.to_owned();
        out.push(DeclaredParam {
            name,
            required,
            default,
            description,
        });
    }
    if d.position() != bytes.len() {
        return Err("declared parameters: trailing bytes".into());
    }
    check(&out).map_err(|e| format!("declared parameters: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, required: bool, default: Option<&str>) -> DeclaredParam {
        DeclaredParam {
            name: name.into(),
            required,
            default: default.map(str::to_owned),
            description: format!("the {name}"),
        }
    }

    #[test]
    fn round_trips_and_refuses_what_it_would_not_write() {
        let list = vec![p("equals", true, None), p("field", false, Some("status"))];
        assert_eq!(decode(&encode(&list)).unwrap(), list);
        assert_eq!(decode(&encode(&[])).unwrap(), []);
        let mut trailing = encode(&list);
        trailing.push(0);
        assert!(decode(&trailing).unwrap_err().contains("trailing"));
        let unsorted = vec![list[1].clone(), list[0].clone()];
        assert!(
            decode(&encode(&unsorted))
                .unwrap_err()
                .contains("ascending")
        );
        assert!(
            check(&[p("x", true, Some("d"))])
                .unwrap_err()
                .contains("no default")
        );
        assert!(check(&[p("Bad Name", false, None)]).is_err());
        assert!(decode(&[0x9f]).is_err(), "indefinite length");
    }
}
