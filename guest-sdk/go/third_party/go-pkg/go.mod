// A copy of go.bytecodealliance.org/pkg (v0.4.0, as shipped in the wit-bindgen-go crate), made by
// `cargo xtask go-bindings`. Do not edit.
module go.bytecodealliance.org/pkg

go 1.24
