package model

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// keyDiscoveryCHAP holds the CHAP secrets of iSCSI discovery sessions.
const keyDiscoveryCHAP = "ovs/iscsi/discovery-chap"

// CHAP holds the secrets of iSCSI CHAP for one target (a vdisk) or for
// discovery: User/Secret authenticate the initiator; MutualUser/
// MutualSecret, when set, the target to the initiator. The target needs
// the secrets themselves (CHAP hashes a challenge with them), so they
// are kept as given; the API never returns them.
type CHAP struct {
	User         string `json:"user"`
	Secret       string `json:"secret"`
	MutualUser   string `json:"mutual_user,omitempty"`
	MutualSecret string `json:"mutual_secret,omitempty"`
}

// Enabled: logins must authenticate.
func (c CHAP) Enabled() bool { return c.User != "" }

// Mutual: the target authenticates itself too.
func (c CHAP) Mutual() bool { return c.MutualUser != "" }

// PR returns the persistent reservation state of the vdisk with
// namespace id (nil if there is none). The bytes are the SCSI layer's.
func (s *Store) PR(ctx context.Context, id string) ([]byte, error) {
	raw, err := s.kv.Get(ctx, keyPR+id)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("persistent reservations of %s: %w", id, err)
	}
	return raw, nil
}

// SwapPR replaces the persistent reservation state old (nil: none) of
// the vdisk with namespace id by new (nil: none). It reports false when
// the state was no longer old.
func (s *Store) SwapPR(ctx context.Context, id string, old, new []byte) (bool, error) {
	op := set(keyPR+id, new)
	if new == nil {
		op = del(keyPR + id)
	}
	err := s.kv.Apply(ctx, assert(keyPR+id, old), op)
	if errors.Is(err, ErrConflict) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("persistent reservations of %s: %w", id, err)
	}
	return true, nil
}

// CHAP returns the iSCSI CHAP secrets of the vdisk with namespace id, or
// of discovery sessions for id "" (zero: no authentication).
func (s *Store) CHAP(ctx context.Context, id string) (CHAP, error) {
	c, _, err := getJSON[CHAP](ctx, s.kv, chapKey(id))
	if errors.Is(err, ErrNotFound) {
		return CHAP{}, nil
	}
	return c, err
}

// SetCHAP sets (zero c: removes) the CHAP secrets of the vdisk with
// namespace id, or of discovery sessions for id "".
func (s *Store) SetCHAP(ctx context.Context, id string, c CHAP) error {
	if !c.Enabled() {
		if c.Mutual() {
			return errors.New("mutual CHAP needs CHAP for the initiator too")
		}
		return s.kv.Apply(ctx, del(chapKey(id)))
	}
	raw, _ := json.Marshal(c)
	return s.kv.Apply(ctx, set(chapKey(id), raw))
}

func chapKey(id string) string {
	if id == "" {
		return keyDiscoveryCHAP
	}
	return keyCHAP + id
}
