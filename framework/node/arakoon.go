package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ovs-storage/ovs/arakoon"
	"github.com/ovs-storage/ovs/framework/secret"
	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/ec"
)

// BackendKV is the erasure-coded backend's metadata store (manifests,
// namespaces, the ASD registry, presets) on arakoon.
type BackendKV struct{ c *arakoon.Client }

// NewBackendKV is the erasure-coded backend's store over arakoon client c.
func NewBackendKV(c *arakoon.Client) BackendKV { return BackendKV{c} }

var _ ec.KVStore = BackendKV{}

func (a BackendKV) Get(ctx context.Context, key string) ([]byte, error) {
	v, err := a.c.Get(ctx, []byte(key))
	if errors.Is(err, arakoon.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ec.ErrKeyNotFound, key)
	}
	return v, err
}

func (a BackendKV) Set(ctx context.Context, key string, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	return a.c.Set(ctx, []byte(key), value)
}

func (a BackendKV) Delete(ctx context.Context, key string) error {
	err := a.c.Delete(ctx, []byte(key))
	if errors.Is(err, arakoon.ErrNotFound) {
		return nil
	}
	return err
}

func (a BackendKV) TestAndSet(ctx context.Context, key string, expected, wanted []byte) error {
	_, swapped, err := a.c.TestAndSet(ctx, []byte(key), expected, wanted)
	if err != nil {
		return err
	}
	if !swapped {
		return fmt.Errorf("%w: %s", ec.ErrKVConflict, key)
	}
	return nil
}

// GuardedTestAndSet is one arakoon sequence: assert the guard, assert
// key's expected value, then write. A failed assert does not say which
// one failed, so the guard is read again on that path only: if it no
// longer holds, the writer is fenced (ErrFenced wins over a conflict on
// key, as in BoltKV); otherwise key changed (ErrKVConflict).
func (a BackendKV) GuardedTestAndSet(ctx context.Context, guard scos.Fence, key string, expected, wanted []byte) error {
	seq := (&arakoon.Sequence{}).
		Assert([]byte(guard.Key), guard.Value).
		Assert([]byte(key), expected)
	switch {
	case wanted != nil:
		seq.Set([]byte(key), wanted)
	case expected != nil:
		seq.Delete([]byte(key))
	}
	err := a.c.Sequence(ctx, seq)
	if !errors.Is(err, arakoon.ErrAssertionFailed) {
		return err
	}
	cur, gerr := a.c.Get(ctx, []byte(guard.Key))
	present := gerr == nil
	if gerr != nil && !errors.Is(gerr, arakoon.ErrNotFound) {
		return fmt.Errorf("%s: reading guard %s after a failed assert: %w", key, guard.Key, gerr)
	}
	if present != (guard.Value != nil) || !bytes.Equal(cur, guard.Value) {
		return fmt.Errorf("%w: %s (%s changed)", scos.ErrFenced, key, guard.Key)
	}
	return fmt.Errorf("%w: %s", ec.ErrKVConflict, key)
}

// Range pages through arakoon until a page comes back empty: a page may
// hold fewer entries than asked for when the values are large.
func (a BackendKV) Range(ctx context.Context, prefix, after string, limit int) ([]ec.KV, error) {
	const page = 1000
	var out []ec.KV
	first, inclusive := []byte(prefix), true
	if after != "" && after >= prefix {
		first, inclusive = []byte(after), false
	}
	for limit <= 0 || len(out) < limit {
		n := page
		if limit > 0 {
			n = min(page, limit-len(out))
		}
		kvs, err := a.c.RangeEntries(ctx, arakoon.Range{
			First: first, FirstInclusive: inclusive, Last: arakoon.PrefixEnd([]byte(prefix)), Max: n,
		})
		if err != nil {
			return nil, err
		}
		if len(kvs) == 0 {
			break
		}
		for _, kv := range kvs {
			out = append(out, ec.KV{Key: string(kv.Key), Value: kv.Value})
		}
		first, inclusive = kvs[len(kvs)-1].Key, false
	}
	return out, nil
}

// Close does nothing: the client belongs to the embedded cluster, which
// closes it after everything that uses it has stopped.
func (a BackendKV) Close() error { return nil }

// EmbeddedArakoon is the 1-node arakoon cluster of `ovs up`.
type EmbeddedArakoon struct {
	srv    *arakoon.Server
	Client *arakoon.Client
	done   chan error
	cancel context.CancelFunc
}

// StartEmbeddedArakoon starts the node, over TLS with the cluster's
// credentials, and writes DIR/cluster.yaml (naming the secret file) for
// `ovs arakoon --config DIR/cluster.yaml ...`.
func StartEmbeddedArakoon(dir, clientAddr, raftAddr string, sec *secret.Secret, secretFile string, log *slog.Logger) (*EmbeddedArakoon, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("arakoon: %w", err)
	}
	cfg := &arakoon.Config{
		Cluster:    "ovs",
		SecretFile: secretFile,
		Nodes:      []arakoon.NodeConfig{{ID: "local", Client: clientAddr, Raft: raftAddr, Data: filepath.Join(dir, "local")}},
		// One node: nobody to wait for, so elect at once.
		Tuning: arakoon.Tuning{
			HeartbeatTimeout:   arakoon.Duration(200 * time.Millisecond),
			ElectionTimeout:    arakoon.Duration(200 * time.Millisecond),
			LeaderLeaseTimeout: arakoon.Duration(100 * time.Millisecond),
			CommitTimeout:      arakoon.Duration(5 * time.Millisecond),
		},
	}
	if err := WriteArakoonConfig(filepath.Join(dir, "cluster.yaml"), cfg); err != nil {
		return nil, err
	}
	ntls, err := ArakoonNodeTLS(sec, "local")
	if err != nil {
		return nil, err
	}
	srv, err := arakoon.Start(cfg, "local", arakoon.ServerOptions{Logger: log.With("component", "arakoon"), TLS: ntls})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &EmbeddedArakoon{srv: srv, done: make(chan error, 1), cancel: cancel}
	go func() { e.done <- srv.Run(ctx) }()
	cc := cfg.ClientConfig()
	cc.Logger = log.With("component", "arakoon-client")
	if cc.TLS, err = sec.ClientTLS(secret.RoleBackend, "local", secret.RoleArakoon); err != nil {
		e.Close()
		return nil, err
	}
	e.Client, err = arakoon.NewClient(cc)
	if err != nil {
		e.Close()
		return nil, err
	}
	wait, cancelWait := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelWait()
	if err := e.Client.Nop(wait); err != nil {
		e.Close()
		return nil, fmt.Errorf("arakoon: no master after 30s: %w", err)
	}
	return e, nil
}

// Close stops the client and the node.
func (e *EmbeddedArakoon) Close() error {
	if e.Client != nil {
		e.Client.Close()
	}
	e.cancel()
	return <-e.done
}

// ArakoonNodeTLS is the TLS of arakoon node id: clients of any role of the
// cluster, raft only with other arakoon nodes.
func ArakoonNodeTLS(sec *secret.Secret, id string) (*arakoon.TLSConfig, error) {
	var t arakoon.TLSConfig
	var err error
	if t.Client, err = sec.ServerTLS(secret.RoleArakoon, id); err != nil {
		return nil, err
	}
	if t.Raft, err = sec.ServerTLS(secret.RoleArakoon, id, secret.RoleArakoon); err != nil {
		return nil, err
	}
	if t.Peer, err = sec.ClientTLS(secret.RoleArakoon, id, secret.RoleArakoon); err != nil {
		return nil, err
	}
	return &t, nil
}

// writeArakoonConfig writes a cluster file (0600) for the CLI.
func WriteArakoonConfig(path string, cfg *arakoon.Config) error {
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("arakoon config: %w", err)
	}
	b = append([]byte("# The embedded arakoon of ovs up; written at each start.\n"), b...)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("arakoon config: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("arakoon config: %w", err)
	}
	return nil
}
