package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	"github.com/ovs-storage/ovs/framework/api/apitest"
	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/volumedriver"
)

// memAttachments keeps the attachment of vdisk "a" in memory, with the
// model's rules (the model's own test covers them against arakoon).
type memAttachments struct {
	mu sync.Mutex
	a  model.Attachment
}

func (m *memAttachments) check(name string) error {
	if name != "a" {
		return fmt.Errorf("%w: %s", volumedriver.ErrNotFound, name)
	}
	return nil
}

func (m *memAttachments) Attachment(ctx context.Context, name string) (model.Attachment, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.a, m.check(name)
}

func (m *memAttachments) Attach(ctx context.Context, name string, req AttachRequest) (model.Attachment, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(name); err != nil {
		return model.Attachment{}, err
	}
	if m.a.Attached() && m.a.Host != req.Host {
		return m.a, fmt.Errorf("%w: %s has it", volumedriver.ErrBusy, m.a.Host)
	}
	m.a.Host, m.a.Kind = req.Host, req.Kind
	if !slices.Contains(m.a.Users, req.User) {
		m.a.Users = append(m.a.Users, req.User)
	}
	return m.a, nil
}

func (m *memAttachments) Detach(ctx context.Context, name, host, user string, force bool) (model.Attachment, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(name); err != nil {
		return model.Attachment{}, err
	}
	if m.a.Attached() && m.a.Host != host && !force {
		return m.a, fmt.Errorf("%w: %s has it", volumedriver.ErrBusy, m.a.Host)
	}
	m.a.Users = slices.DeleteFunc(m.a.Users, func(u string) bool { return u == user })
	if force || user == "" || len(m.a.Users) == 0 {
		m.a = model.Attachment{}
	}
	return m.a, nil
}

func TestAttachmentRoutes(t *testing.T) {
	ctx := context.Background()
	srv := NewServer(apitest.NewFakeVDisks(), Options{Attachments: &memAttachments{}})
	srv.SetReady(true)
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	c := NewClient(hs.URL, nil)

	if a, err := c.Attachment(ctx, "a"); err != nil || a.Attached() {
		t.Fatalf("before any attach: %+v %v", a, err)
	}
	if a, err := c.Attach(ctx, "a", AttachRequest{Host: "h1", Kind: "docker", User: "m1"}); err != nil || a.Host != "h1" {
		t.Fatalf("attach: %+v %v", a, err)
	}
	tests := []struct {
		name string
		call func() error
		want error
		code string
	}{
		{"other host", func() error {
			_, err := c.Attach(ctx, "a", AttachRequest{Host: "h2", User: "x"})
			return err
		}, volumedriver.ErrBusy, CodeBusy},
		{"other host detaches", func() error {
			_, err := c.Detach(ctx, "a", "h2", "m1", false)
			return err
		}, volumedriver.ErrBusy, CodeBusy},
		{"bad host", func() error {
			_, err := c.Attach(ctx, "a", AttachRequest{Host: "h 1"})
			return err
		}, volumedriver.ErrInvalidArgument, CodeInvalidArgument},
		{"no host on detach", func() error {
			_, err := c.Detach(ctx, "a", "", "m1", false)
			return err
		}, volumedriver.ErrInvalidArgument, CodeInvalidArgument},
		{"unknown vdisk", func() error {
			_, err := c.Attach(ctx, "b", AttachRequest{Host: "h1"})
			return err
		}, volumedriver.ErrNotFound, CodeNotFound},
	}
	for _, tc := range tests {
		err := tc.call()
		var ae *APIError
		if !errors.Is(err, tc.want) || !errors.As(err, &ae) || ae.Code != tc.code {
			t.Errorf("%s: %v, want %v (%s)", tc.name, err, tc.want, tc.code)
		}
	}
	if a, err := c.Attachment(ctx, "a"); err != nil || a.Host != "h1" || !slices.Equal(a.Users, []string{"m1"}) {
		t.Fatalf("refused calls changed the attachment: %+v %v", a, err)
	}
	if a, err := c.Detach(ctx, "a", "h1", "m1", false); err != nil || a.Attached() {
		t.Fatalf("detach: %+v %v", a, err)
	}
	if a, err := c.Attach(ctx, "a", AttachRequest{Host: "h2", User: "x"}); err != nil || a.Host != "h2" {
		t.Fatalf("attach by h2 once free: %+v %v", a, err)
	}
	if a, err := c.Detach(ctx, "a", "", "", true); err != nil || a.Attached() {
		t.Fatalf("forced detach: %+v %v", a, err)
	}

	bare := httptest.NewServer(NewServer(apitest.NewFakeVDisks(), Options{}).Handler())
	defer bare.Close()
	_, err := NewClient(bare.URL, nil).Attachment(ctx, "a")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Code != CodeUnknownRoute {
		t.Fatalf("attachment on a server without attachments: %v", err)
	}
}
