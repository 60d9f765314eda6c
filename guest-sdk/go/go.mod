module github.com/edgerep/edgerep/guest-sdk/go

go 1.24

require go.bytecodealliance.org/pkg v0.4.0

// The Go module proxy does not serve go.bytecodealliance.org/pkg: the bindings' runtime is the copy
// in third_party/go-pkg, made by `cargo xtask go-bindings` from the wit-bindgen-go crate.
replace go.bytecodealliance.org/pkg => ./third_party/go-pkg
