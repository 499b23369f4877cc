package model

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// keyAttach + vdisk id holds the vdisk's Attachment: the one host that
// has it attached (mounted, plugged into a guest), so that a second host
// is refused. It is kept apart from the vdisk record so that attaching
// never races with the vdisk's other updates.
const keyAttach = "ovs/attach/"

// ErrAttached: the vdisk is attached to another host.
var ErrAttached = errors.New("attached to another host")

// maxAttachUsers bounds the users of one attachment (the record is read
// on every attach): far above the containers one host runs on a volume.
const maxAttachUsers = 1024

// Attachment says which host has a vdisk attached, for what, and by
// which users on that host (Docker mount ids, libvirt domains, ...). A
// zero Attachment (Host "") means the vdisk is not attached.
type Attachment struct {
	Host  string    `json:"host,omitempty"`
	Kind  string    `json:"kind,omitempty"` // "docker", "libvirt", ...
	Users []string  `json:"users,omitempty"`
	Since time.Time `json:"since,omitzero"`
}

// Attached reports whether a host has the vdisk attached.
func (a Attachment) Attached() bool { return a.Host != "" }

// Attachment returns the attachment of vdisk name (zero if none). An
// unknown vdisk fails with ErrNotFound.
func (s *Store) Attachment(ctx context.Context, name string) (Attachment, error) {
	a, _, _, err := s.attachment(ctx, name)
	return a, err
}

func (s *Store) attachment(ctx context.Context, name string) (a Attachment, raw []byte, id string, err error) {
	v, _, err := getJSON[VDisk](ctx, s.kv, keyVDisk+name)
	if errors.Is(err, ErrNotFound) {
		return Attachment{}, nil, "", fmt.Errorf("vdisk %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Attachment{}, nil, "", err
	}
	a, raw, err = getJSON[Attachment](ctx, s.kv, keyAttach+v.ID)
	if errors.Is(err, ErrNotFound) {
		return Attachment{}, nil, v.ID, nil
	}
	if err != nil {
		return Attachment{}, nil, "", fmt.Errorf("attachment of vdisk %s: %w", name, err)
	}
	return a, raw, v.ID, nil
}

// Attach records that user (may be "") on host attached vdisk name for
// kind. The same host attaching again adds the user (a reference); another
// host is refused with an error wrapping ErrAttached that says who has it.
// The check and the update are one arakoon sequence, so two hosts racing
// cannot both win.
func (s *Store) Attach(ctx context.Context, name, host, kind, user string) (Attachment, error) {
	if !ValidID(host) {
		return Attachment{}, fmt.Errorf("host id %q: use 1-64 of A-Z a-z 0-9 . _ -", host)
	}
	if len(user) > 256 || strings.ContainsAny(user, "\x00\n") {
		return Attachment{}, fmt.Errorf("attachment user %.40q: at most 256 bytes, one line", user)
	}
	for {
		a, raw, id, err := s.attachment(ctx, name)
		if err != nil {
			return Attachment{}, err
		}
		if a.Attached() && a.Host != host {
			return a, fmt.Errorf("vdisk %s is %w: %s has it (%s) since %s", name, ErrAttached,
				a.Host, orUnknown(a.Kind), a.Since.Format(time.RFC3339))
		}
		if !a.Attached() {
			a = Attachment{Host: host, Kind: kind, Since: time.Now().UTC().Truncate(time.Second)}
		}
		if user != "" && !slices.Contains(a.Users, user) {
			if len(a.Users) >= maxAttachUsers {
				return a, fmt.Errorf("vdisk %s has %d users on %s already", name, len(a.Users), host)
			}
			a.Users = append(a.Users, user)
		}
		out, _ := json.Marshal(a)
		// A vdisk deleted between the read and this write leaves an
		// orphan record under its (never reused) id; DeleteVDisk removes
		// the record of the vdisks it deletes.
		err = s.kv.Apply(ctx, assert(keyAttach+id, raw), set(keyAttach+id, out))
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return Attachment{}, fmt.Errorf("attach vdisk %s to %s: %w", name, host, err)
		}
		return a, nil
	}
}

// Detach removes user from host's attachment of vdisk name; user ""
// removes every user of host. The record goes once it has no user left.
// A vdisk attached to another host fails with ErrAttached unless force,
// which removes the record whoever holds it (an operator clearing a dead
// host). Detaching what is not attached is not an error.
func (s *Store) Detach(ctx context.Context, name, host, user string, force bool) (Attachment, error) {
	for {
		a, raw, id, err := s.attachment(ctx, name)
		if err != nil {
			return Attachment{}, err
		}
		if !a.Attached() {
			return Attachment{}, nil
		}
		switch {
		case force:
			a = Attachment{}
		case a.Host != host:
			return a, fmt.Errorf("vdisk %s is %w: %s has it, not %s", name, ErrAttached, a.Host, host)
		case user == "":
			a = Attachment{}
		default:
			a.Users = slices.DeleteFunc(a.Users, func(u string) bool { return u == user })
			if len(a.Users) == 0 {
				a = Attachment{}
			}
		}
		op := del(keyAttach + id)
		if a.Attached() {
			out, _ := json.Marshal(a)
			op = set(keyAttach+id, out)
		}
		err = s.kv.Apply(ctx, assert(keyAttach+id, raw), op)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return Attachment{}, fmt.Errorf("detach vdisk %s from %s: %w", name, host, err)
		}
		return a, nil
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown use"
	}
	return s
}
