//! The parameters a plugin declares, as its build embeds them in the component: a custom
//! section named [`SECTION`] holding canonical CBOR, `[[name, required, default or null,
//! description]…]`, strictly ascending by name. The sha256 a config pins covers it, so what a
//! plugin declares is part of the build a node runs.

use minicbor::Encoder;

use crate::cbor::{CborError, Reader};

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

/// Why a parameter list, or the section holding one, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamsError {
    /// More than [`MAX_PARAMS`].
    #[error("{count} parameters, at most {MAX_PARAMS}")]
    TooMany {
        /// How many.
        count: u64,
    },
    /// A name with characters other than lowercase letters, digits, `_` and `-` (or empty).
    #[error("parameter {name:?}: a name is lowercase letters, digits, '_' and '-'")]
    BadName {
        /// The name.
        name: String,
    },
    /// Names not strictly ascending (a duplicate, or out of order).
    #[error("parameter {name:?}: names must be strictly ascending")]
    NotAscending {
        /// The first name out of order.
        name: String,
    },
    /// A required parameter with a default.
    #[error("parameter {name:?}: a required parameter has no default")]
    RequiredWithDefault {
        /// The parameter.
        name: String,
    },
    /// A name, default or description over [`MAX_TEXT_BYTES`].
    #[error("parameter {name:?}: a text of {len} bytes, at most {MAX_TEXT_BYTES}")]
    TextTooLong {
        /// The parameter.
        name: String,
        /// The text's length.
        len: usize,
    },
    /// The section is not what [`encode`] writes.
    #[error(transparent)]
    Encoding(#[from] CborError),
}

/// Why a parameter list is not valid.
pub fn check(params: &[DeclaredParam]) -> Result<(), ParamsError> {
    if params.len() > MAX_PARAMS {
        return Err(ParamsError::TooMany {
            count: params.len() as u64,
        });
    }
    for (i, p) in params.iter().enumerate() {
        if p.name.is_empty()
            || !p
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(ParamsError::BadName {
                name: p.name.clone(),
            });
        }
        if i > 0 && params[i - 1].name >= p.name {
            return Err(ParamsError::NotAscending {
                name: p.name.clone(),
            });
        }
        if p.required && p.default.is_some() {
            return Err(ParamsError::RequiredWithDefault {
                name: p.name.clone(),
            });
        }
        for text in [Some(&p.name), p.default.as_ref(), Some(&p.description)]
            .into_iter()
            .flatten()
        {
            if text.len() > MAX_TEXT_BYTES {
                return Err(ParamsError::TextTooLong {
                    name: p.name.clone(),
                    len: text.len(),
                });
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

/// Reads what [`encode`] wrote, with the strict reader, refusing anything else (trailing
/// bytes, other shapes, longer heads, a list that fails [`check`]).
pub fn decode(bytes: &[u8]) -> Result<Vec<DeclaredParam>, ParamsError> {
    let mut r = Reader::new(bytes);
    let n = r.array("declared parameters")?;
    if n > MAX_PARAMS as u64 {
        return Err(ParamsError::TooMany { count: n });
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        r.array_of(4, "declared parameter")?;
        let name = r.str("parameter name")?.to_owned();
        let required = r.bool("parameter required")?;
        let default = if r.null("parameter default")? {
            None
        } else {
            Some(r.str("parameter default")?.to_owned())
        };
        let description = r.str("parameter description")?.to_owned();
        out.push(DeclaredParam {
            name,
            required,
            default,
            description,
        });
    }
    r.finish()?;
    check(&out)?;
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
        assert_eq!(
            decode(&trailing),
            Err(ParamsError::Encoding(CborError::TrailingBytes { count: 1 }))
        );
        let unsorted = vec![list[1].clone(), list[0].clone()];
        assert_eq!(
            decode(&encode(&unsorted)),
            Err(ParamsError::NotAscending {
                name: "equals".into()
            })
        );
        let e = check(&[p("x", true, Some("d"))]).unwrap_err();
        assert_eq!(e, ParamsError::RequiredWithDefault { name: "x".into() });
        assert!(e.to_string().contains("no default"), "{e}");
        assert_eq!(
            check(&[p("Bad Name", false, None)]),
            Err(ParamsError::BadName {
                name: "Bad Name".into()
            })
        );
        assert!(
            matches!(decode(&[0x9f]), Err(ParamsError::Encoding(_))),
            "indefinite length"
        );
        // A longer head than needed (the count 2 written in two bytes) is refused.
        let mut long = encode(&list);
        long[0] = 0x98;
        long.insert(1, 2);
        assert!(matches!(
            decode(&long),
            Err(ParamsError::Encoding(CborError::NonCanonical { .. }))
        ));
    }
}
