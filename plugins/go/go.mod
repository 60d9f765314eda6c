module github.com/edgerep/edgerep/plugins/go

go 1.24

require github.com/edgerep/edgerep/guest-sdk/go v0.0.0

require go.bytecodealliance.org/pkg v0.4.0 // indirect

// The SDK is the one in this repository; its bindings' runtime is the copy it carries (the Go
// module proxy does not serve go.bytecodealliance.org/pkg). Nothing is fetched.
replace (
	github.com/edgerep/edgerep/guest-sdk/go => ../../guest-sdk/go
	go.bytecodealliance.org/pkg => ../../guest-sdk/go/third_party/go-pkg
)
