package api

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// TokenFileName is the API token file in a cluster's data directory.
const TokenFileName = "api-tokens"

// TokenFile is the store of API tokens: a file (mode 0600) with one token
// per line, which `ovs token create` appends to and the server re-reads
// when it changes. It implements TokenVerifier.
type TokenFile struct {
	path string

	mu     sync.Mutex
	mtime  time.Time
	size   int64
	hashes [][sha256.Size]byte
}

// NewTokenFile returns the store at path (the file may not exist yet).
func NewTokenFile(path string) *TokenFile { return &TokenFile{path: path} }

// Verify reports whether token is one of the file's tokens.
func (f *TokenFile) Verify(token string) bool {
	if token == "" {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.reloadLocked(); err != nil {
		return false
	}
	// Comparing hashes in constant time: neither the token nor its
	// length leaks through timing.
	h := sha256.Sum256([]byte(token))
	ok := 0
	for _, k := range f.hashes {
		ok |= subtle.ConstantTimeCompare(h[:], k[:])
	}
	return ok == 1
}

func (f *TokenFile) reloadLocked() error {
	st, err := os.Stat(f.path)
	if errors.Is(err, os.ErrNotExist) {
		f.hashes, f.mtime, f.size = nil, time.Time{}, 0
		return nil
	}
	if err != nil {
		return err
	}
	if st.ModTime().Equal(f.mtime) && st.Size() == f.size && f.hashes != nil {
		return nil
	}
	tokens, err := readTokens(f.path)
	if err != nil {
		return err
	}
	hashes := make([][sha256.Size]byte, 0, len(tokens))
	for _, t := range tokens {
		hashes = append(hashes, sha256.Sum256([]byte(t)))
	}
	f.hashes, f.mtime, f.size = hashes, st.ModTime(), st.Size()
	return nil
}

func readTokens(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if t := strings.TrimSpace(sc.Text()); t != "" && !strings.HasPrefix(t, "#") {
			out = append(out, t)
		}
	}
	return out, sc.Err()
}

// CreateToken adds a new random token to the file at path (creating it
// with mode 0600) and returns it.
func CreateToken(path string) (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("create API token: %w", err)
	}
	token := "ovs_" + hex.EncodeToString(b[:])
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("create API token: %w", err)
	}
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return "", fmt.Errorf("create API token: %w", err)
	}
	if err := fh.Chmod(0o600); err != nil { // an older file may be wider
		fh.Close()
		return "", fmt.Errorf("create API token: %w", err)
	}
	if _, err := fh.WriteString(token + "\n"); err != nil {
		fh.Close()
		return "", fmt.Errorf("create API token: %w", err)
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return "", fmt.Errorf("create API token: %w", err)
	}
	if err := fh.Close(); err != nil {
		return "", fmt.Errorf("create API token: %w", err)
	}
	return token, nil
}

// ReadToken returns the newest token in the file at path, "" if it has
// none (or does not exist).
func ReadToken(path string) (string, error) {
	tokens, err := readTokens(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read API token: %w", err)
	}
	if len(tokens) == 0 {
		return "", nil
	}
	return tokens[len(tokens)-1], nil
}
