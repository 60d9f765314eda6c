//! Tests only: see tests/vectors.rs.
