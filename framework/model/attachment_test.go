package model

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestAttachments(t *testing.T) {
	ctx := context.Background()
	s := New(startArakoon(t))
	if _, err := s.ReserveVDisk(ctx, "v1", "id1", "a", 1, VDiskReady); err != nil {
		t.Fatal(err)
	}
	// Each step runs on the state the previous ones left.
	steps := []struct {
		name      string
		detach    bool
		vdisk     string
		host      string
		user      string
		force     bool
		wantErr   error  // nil: success
		wantErrIn string // a word the error must carry
		wantHost  string // after the step
		wantUsers []string
	}{
		{name: "unknown vdisk", vdisk: "nope", host: "h1", user: "m1", wantErr: ErrNotFound},
		{name: "bad host id", vdisk: "v1", host: "h 1", user: "m1", wantErrIn: "host id"},
		{name: "first mount", vdisk: "v1", host: "h1", user: "m1", wantHost: "h1", wantUsers: []string{"m1"}},
		{name: "same host, second container", vdisk: "v1", host: "h1", user: "m2", wantHost: "h1", wantUsers: []string{"m1", "m2"}},
		{name: "same user again counts once", vdisk: "v1", host: "h1", user: "m2", wantHost: "h1", wantUsers: []string{"m1", "m2"}},
		{name: "second host refused", vdisk: "v1", host: "h2", user: "x", wantErr: ErrAttached, wantErrIn: "h1 has it", wantHost: "h1", wantUsers: []string{"m1", "m2"}},
		{name: "second host cannot detach", detach: true, vdisk: "v1", host: "h2", user: "m1", wantErr: ErrAttached, wantHost: "h1", wantUsers: []string{"m1", "m2"}},
		{name: "detach one user", detach: true, vdisk: "v1", host: "h1", user: "m1", wantHost: "h1", wantUsers: []string{"m2"}},
		{name: "detach unknown user", detach: true, vdisk: "v1", host: "h1", user: "zz", wantHost: "h1", wantUsers: []string{"m2"}},
		{name: "detach last user", detach: true, vdisk: "v1", host: "h1", user: "m2"},
		{name: "detach when free", detach: true, vdisk: "v1", host: "h1", user: "m2"},
		{name: "second host now mounts", vdisk: "v1", host: "h2", user: "x", wantHost: "h2", wantUsers: []string{"x"}},
		{name: "host-wide detach", detach: true, vdisk: "v1", host: "h2"},
		{name: "h1 again", vdisk: "v1", host: "h1", user: "m3", wantHost: "h1", wantUsers: []string{"m3"}},
		{name: "forced detach by another", detach: true, vdisk: "v1", host: "h2", force: true},
	}
	for _, st := range steps {
		var err error
		if st.detach {
			_, err = s.Detach(ctx, st.vdisk, st.host, st.user, st.force)
		} else {
			_, err = s.Attach(ctx, st.vdisk, st.host, "docker", st.user)
		}
		switch {
		case st.wantErr == nil && st.wantErrIn == "" && err != nil:
			t.Fatalf("%s: %v", st.name, err)
		case st.wantErr != nil && !errors.Is(err, st.wantErr):
			t.Fatalf("%s: err = %v, want %v", st.name, err, st.wantErr)
		case st.wantErrIn != "" && (err == nil || !strings.Contains(err.Error(), st.wantErrIn)):
			t.Fatalf("%s: err = %v, want one saying %q", st.name, err, st.wantErrIn)
		}
		if st.vdisk != "v1" {
			continue
		}
		a, err := s.Attachment(ctx, "v1")
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if a.Host != st.wantHost || !slices.Equal(a.Users, st.wantUsers) {
			t.Fatalf("%s: attachment = %+v, want host %q users %v", st.name, a, st.wantHost, st.wantUsers)
		}
		if a.Attached() && (a.Kind != "docker" || a.Since.IsZero()) {
			t.Fatalf("%s: attachment = %+v, want kind docker and a time", st.name, a)
		}
	}

	// Deleting the vdisk drops its attachment with it.
	if _, err := s.Attach(ctx, "v1", "h1", "docker", "m9"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVDisk(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.kv.Get(ctx, keyAttach+"id1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("attachment record after the vdisk's delete: %v", err)
	}
}
