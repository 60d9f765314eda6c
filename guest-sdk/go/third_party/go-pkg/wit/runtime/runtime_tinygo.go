//go:build tinygo

// This file is not part of go.bytecodealliance.org/pkg: `cargo xtask go-bindings` adds it to
// edgerep's copy of that module (guest-sdk/go/third_party/go-pkg) so that the bindings build
// with TinyGo too. It is TinyGo's version of runtime.go (which gets `//go:build !tinygo`):
//
//   - TinyGo's runtime has no runtime.Pinner. Its collector never moves objects, so pinning
//     only has to keep an object alive while nothing but the host, or memory the collector does
//     not scan for pointers (the canonical ABI's lists of addresses), refers to it: Pinner
//     keeps a reference until Unpin.
//   - TinyGo's runtime has no runtime.sbrk, and needs none: it initializes its heap before
//     anything else, so cabi_realloc always allocates from the collected heap, pinned until the
//     export has lifted its arguments (Unpin). Its collector calls no imports, so it needs no
//     paused clock either.

package runtime

import (
	"unsafe"
)

type Handle struct {
	value int32
}

func (h *Handle) Use() int32 {
	if h.value == 0 {
		panic("nil handle")
	}
	return h.value
}

func (h *Handle) Take() int32 {
	if h.value == 0 {
		panic("nil handle")
	}
	value := h.value
	h.value = 0
	return value
}

func (h *Handle) Set(value int32) {
	if value == 0 {
		panic("nil handle")
	}
	if h.value != 0 {
		panic("handle already set")
	}
	h.value = value
}

func (h *Handle) TakeOrNil() int32 {
	value := h.value
	h.value = 0
	return value
}

func MakeHandle(value int32) *Handle {
	if value == 0 {
		panic("nil handle")
	}
	return &Handle{value}
}

// Pinner keeps the objects given to Pin alive until Unpin.
type Pinner struct {
	refs []any
}

// Pin keeps the object pointer points to alive until Unpin.
func (p *Pinner) Pin(pointer any) {
	p.refs = append(p.refs, pointer)
}

// Unpin lets the objects go.
func (p *Pinner) Unpin() {
	clear(p.refs)
	p.refs = p.refs[:0]
}

func Allocate(pinner *Pinner, size, align uintptr) unsafe.Pointer {
	pointer := allocateRaw(size, align)
	pinner.Pin(pointer)
	return pointer
}

func allocateRaw(size, align uintptr) unsafe.Pointer {
	if size == 0 {
		return nil
	}

	if size%align != 0 {
		panic("allocation size is not a multiple of its alignment")
	}

	switch align {
	case 1:
		return unsafe.Pointer(unsafe.SliceData(make([]uint8, size)))
	case 2:
		return unsafe.Pointer(unsafe.SliceData(make([]uint16, size/align)))
	case 4:
		return unsafe.Pointer(unsafe.SliceData(make([]uint32, size/align)))
	case 8:
		return unsafe.Pointer(unsafe.SliceData(make([]uint64, size/align)))
	default:
		panic("unsupported alignment")
	}
}

var pinner = Pinner{}

func Unpin() {
	pinner.Unpin()
}

//go:wasmexport cabi_realloc
func cabiRealloc(oldPointer unsafe.Pointer, oldSize, align, newSize uintptr) unsafe.Pointer {
	if oldPointer != nil || oldSize != 0 {
		panic("todo")
	}
	return Allocate(&pinner, newSize, align)
}
