// Package secret holds the cluster secret: 32 random bytes made when a
// cluster is created, kept in DATA/secret (mode 0600), that every internal
// service (ASDs, arakoon, the backend admin API) and every client of them
// must hold. From it come the keys of each purpose (Key), the cluster id,
// and the TLS configurations with which the services authenticate each
// other (see ServerTLS and ClientTLS).
//
// A process finds the secret (Resolve) in, by order: a --secret-file flag,
// $OVS_SECRET (the secret itself), $OVS_SECRET_FILE, DATA/secret.
package secret

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

const (
	// FileName is the secret's file in a cluster's data directory.
	FileName = "secret"
	// EnvValue holds the secret itself (as written in the file).
	EnvValue = "OVS_SECRET"
	// EnvFile holds the path of a file with the secret.
	EnvFile = "OVS_SECRET_FILE"

	minLen = 32 // characters of secret at least (the file holds 64 hex digits)
)

// ErrNoSecret: no secret was given and none is in the data directory.
var ErrNoSecret = errors.New("no cluster secret")

// Secret is a cluster's secret. The zero value is not usable.
type Secret struct {
	key    []byte
	source string // where it came from, for messages
}

// New returns the secret of the given text (what the file holds).
func New(text, source string) (*Secret, error) {
	text = strings.TrimSpace(text)
	if len(text) < minLen {
		return nil, fmt.Errorf("cluster secret from %s: %d characters, want at least %d", source, len(text), minLen)
	}
	return &Secret{key: []byte(text), source: source}, nil
}

// Ensure returns the secret of the cluster in dataDir, making it (64 random
// hex digits, mode 0600) if the directory has none yet.
func Ensure(dataDir string) (*Secret, error) {
	path := filepath.Join(dataDir, FileName)
	s, err := LoadFile(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return s, err
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("cluster secret: %w", err)
	}
	text := hex.EncodeToString(b[:])
	// O_EXCL: two processes racing to create it must not end up with
	// different secrets; the loser reads the winner's.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return LoadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("cluster secret: %w", err)
	}
	_, err = f.WriteString(text + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("cluster secret %s: %w", path, err)
	}
	return &Secret{key: []byte(text), source: path}, nil
}

// LoadFile reads a secret file. A file that others than its owner may read
// is refused, as ssh refuses such a key: the secret may have leaked.
func LoadFile(path string) (*Secret, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cluster secret: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cluster secret: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("cluster secret %s: mode %04o lets others read it; chmod 600 it (and make a new secret if it leaked)",
			path, st.Mode().Perm())
	}
	b := make([]byte, 4096)
	n, err := f.Read(b)
	if err != nil {
		return nil, fmt.Errorf("cluster secret %s: %w", path, err)
	}
	return New(string(b[:n]), path)
}

// Resolve finds the secret a command uses: the file named by flagFile,
// else $OVS_SECRET, else the file named by $OVS_SECRET_FILE, else
// DATA/secret (dataDir may be empty). None of them is ErrNoSecret.
func Resolve(flagFile, dataDir string) (*Secret, error) {
	if flagFile != "" {
		return LoadFile(flagFile)
	}
	if v := os.Getenv(EnvValue); v != "" {
		return New(v, "$"+EnvValue)
	}
	if p := os.Getenv(EnvFile); p != "" {
		return LoadFile(p)
	}
	if dataDir != "" {
		path := filepath.Join(dataDir, FileName)
		s, err := LoadFile(path)
		if !errors.Is(err, fs.ErrNotExist) {
			return s, err
		}
		return nil, fmt.Errorf("%w: %s does not exist; give --secret-file, $%s or $%s (ovs up makes it at the first start)",
			ErrNoSecret, path, EnvValue, EnvFile)
	}
	return nil, fmt.Errorf("%w: give --secret-file, $%s or $%s", ErrNoSecret, EnvValue, EnvFile)
}

// Source says where the secret came from.
func (s *Secret) Source() string { return s.source }

// Key returns the key of one purpose ("asd", "api-token", ...), so that a
// key given to one use says nothing of another's.
func (s *Secret) Key(purpose string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("ovs key v1\x00" + purpose))
	return m.Sum(nil)
}

// Token is Key(purpose) in hex: a bearer credential for an HTTP API.
func (s *Secret) Token(purpose string) string { return hex.EncodeToString(s.Key(purpose)) }

// CheckToken compares a presented token with Token(purpose) in constant time.
func (s *Secret) CheckToken(purpose, presented string) bool {
	return hmac.Equal([]byte(presented), []byte(s.Token(purpose)))
}

// ClusterID names the cluster: derived from the secret, so that two
// clusters never share it and it needs no file of its own.
func (s *Secret) ClusterID() string { return hex.EncodeToString(s.Key("cluster-id")[:8]) }
