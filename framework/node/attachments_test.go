package node

import (
	"errors"
	"fmt"
	"testing"

	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/volumedriver"
)

func TestAttachError(t *testing.T) {
	other := errors.New("arakoon down")
	tests := []struct {
		name string
		in   error
		want []error
		msg  string
	}{
		{"nil", nil, nil, ""},
		{"unknown vdisk", fmt.Errorf("vdisk %q: %w", "v", model.ErrNotFound), []error{volumedriver.ErrNotFound}, ""},
		{"other host", fmt.Errorf("vdisk v is %w: h1 has it", model.ErrAttached), []error{volumedriver.ErrBusy, model.ErrAttached}, "vdisk v is attached to another host: h1 has it"},
		{"other errors pass", other, []error{other}, "arakoon down"},
	}
	for _, tc := range tests {
		got := attachError(tc.in, "v")
		if (got == nil) != (tc.in == nil) {
			t.Fatalf("%s: %v", tc.name, got)
		}
		for _, w := range tc.want {
			if !errors.Is(got, w) {
				t.Errorf("%s: %v does not match %v", tc.name, got, w)
			}
		}
		if tc.msg != "" && got.Error() != tc.msg {
			t.Errorf("%s: message %q, want %q", tc.name, got.Error(), tc.msg)
		}
	}
}
