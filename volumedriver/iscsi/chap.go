package iscsi

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// CHAP with MD5 (RFC 1994, as RFC 7143 12.1.3 uses it): the response to
// identifier id and challenge c is MD5(id || secret || c).
func chapResponse(id byte, secret string, challenge []byte) [md5.Size]byte {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	var out [md5.Size]byte
	h.Sum(out[:0])
	return out
}

// newChallenge returns a fresh identifier and challenge: random, so that
// no response can be replayed.
func newChallenge() (byte, []byte, error) {
	b := make([]byte, 1+chapChallengeLen)
	if _, err := rand.Read(b); err != nil {
		return 0, nil, fmt.Errorf("random challenge: %w", err)
	}
	return b[0], b[1:], nil
}

// encodeHex is a binary value as RFC 7143 6.1 writes it: 0x and hex.
func encodeHex(b []byte) string { return "0x" + hex.EncodeToString(b) }

// decodeBinary reads a binary value (RFC 7143 6.1): 0x and hex, or 0b
// and base64, of at most maxLen bytes.
func decodeBinary(s string, maxLen int) ([]byte, error) {
	if len(s) < 2 || s[0] != '0' {
		return nil, errors.New("not a binary value")
	}
	body := s[2:]
	var b []byte
	var err error
	switch s[1] {
	case 'x', 'X':
		if len(body) > 2*maxLen {
			return nil, fmt.Errorf("over %d bytes", maxLen)
		}
		if len(body)%2 == 1 {
			body = "0" + body
		}
		b, err = hex.DecodeString(body)
	case 'b', 'B':
		if len(body) > (maxLen+2)/3*4 {
			return nil, fmt.Errorf("over %d bytes", maxLen)
		}
		b, err = base64.StdEncoding.DecodeString(strings.TrimRight(body, "=") + strings.Repeat("=", (4-len(strings.TrimRight(body, "="))%4)%4))
	default:
		return nil, errors.New("not a binary value")
	}
	if err != nil {
		return nil, fmt.Errorf("malformed binary value: %w", err)
	}
	if len(b) > maxLen {
		return nil, fmt.Errorf("over %d bytes", maxLen)
	}
	return b, nil
}

// constantTimeEqual compares without telling where a difference is.
func constantTimeEqual(a, b []byte) bool {
	return subtle.ConstantTimeCompare(a, b) == 1
}
