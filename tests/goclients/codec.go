package main

import (
	"fmt"

	"google.golang.org/grpc/mem"
)

// rawCodec sends and receives raw bytes: the simulator's server registers generic handlers with
// no serializer and echoes what it is sent, so there is no .proto to generate code from.
//
// It is named "proto" so that the content-type on the wire stays application/grpc+proto, what a
// client with generated stubs (a Teleport agent) sends.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("raw codec: cannot send a %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: cannot receive into a %T", v)
	}
	*b = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }
