package scos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestLocalDir(t *testing.T) {
	ctx := context.Background()
	b, err := NewLocalDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.CreateNamespace(ctx, "ns1"); err != nil {
		t.Fatal(err)
	}
	if err := b.CreateNamespace(ctx, "ns1"); !errors.Is(err, ErrNamespaceExists) {
		t.Fatalf("duplicate namespace: %v", err)
	}
	data := bytes.Repeat([]byte("0123456789"), 1000)
	if err := b.Put(ctx, "ns1", "obj", data, false); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "ns1", "obj", []byte("x"), false); !errors.Is(err, ErrObjectExists) {
		t.Fatalf("put without overwrite: %v", err)
	}
	got, err := b.Get(ctx, "ns1", "obj")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get: %v", err)
	}
	p := make([]byte, 10)
	if err := b.ReadAt(ctx, "ns1", "obj", p, 995); err != nil || string(p) != "5678901234" {
		t.Fatalf("ranged read %q %v", p, err)
	}
	if err := b.ReadAt(ctx, "ns1", "obj", p, int64(len(data))-5); err == nil {
		t.Fatal("read past the end succeeded")
	}
	if err := b.Put(ctx, "ns1", "obj", []byte("new"), true); err != nil {
		t.Fatal(err)
	}
	if st, err := b.Stat(ctx, "ns1", "obj"); err != nil || st.Size != 3 {
		t.Fatalf("stat %v %v", st, err)
	}
	if err := b.Put(ctx, "ns1", "a_obj", nil, false); err != nil {
		t.Fatal(err)
	}
	// A leftover temporary file (a crashed put) is not an object.
	if err := os.WriteFile(filepath.Join(b.Root(), "ns1", ".tmp-junk"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	list, err := b.List(ctx, "ns1", "")
	if err != nil || len(list) != 2 || list[0].Name != "a_obj" || list[1].Name != "obj" {
		t.Fatalf("list %v %v", list, err)
	}
	if list, _ := b.List(ctx, "ns1", "a_"); len(list) != 1 {
		t.Fatalf("prefix list %v", list)
	}
	src := filepath.Join(t.TempDir(), "src")
	os.WriteFile(src, data, 0o644)
	sf, _ := os.Open(src)
	if err := b.PutFile(ctx, "ns1", "fromfile", sf, false); err != nil {
		t.Fatal(err)
	}
	sf.Close()
	if got, err := b.Get(ctx, "ns1", "fromfile"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("PutFile round trip: %v", err)
	}
	b.Delete(ctx, "ns1", "fromfile")
	if err := b.Delete(ctx, "ns1", "obj"); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"get":    func() error { _, err := b.Get(ctx, "ns1", "obj"); return err }(),
		"delete": b.Delete(ctx, "ns1", "obj"),
		"other":  func() error { _, err := b.Get(ctx, "nope", "obj"); return err }(),
	} {
		if !errors.Is(err, ErrObjectNotFound) && !errors.Is(err, ErrNamespaceNotFound) {
			t.Errorf("%s after delete: %v", name, err)
		}
	}
	for _, bad := range []string{"", "../x", ".hidden", "a/b", string(make([]byte, 201))} {
		if err := b.Put(ctx, "ns1", bad, nil, true); !errors.Is(err, ErrInvalidName) {
			t.Errorf("put %q: %v", bad, err)
		}
	}
	nss, err := b.ListNamespaces(ctx)
	if err != nil || len(nss) != 1 || nss[0] != "ns1" {
		t.Fatalf("namespaces %v %v", nss, err)
	}
	if err := b.DeleteNamespace(ctx, "ns1"); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.NamespaceExists(ctx, "ns1"); ok || err != nil {
		t.Fatalf("exists after delete: %v %v", ok, err)
	}
	ctx2, cancel := context.WithCancel(ctx)
	cancel()
	if err := b.CreateNamespace(ctx2, "ns2"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
}

// TestLocalDirReadAtSeesReplacements: cached read handles never serve an
// object that was overwritten or deleted, and eviction keeps them bounded.
func TestLocalDirReadAtSeesReplacements(t *testing.T) {
	ctx := context.Background()
	b, err := NewLocalDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b.fds = NewFileCache(4)
	b.CreateNamespace(ctx, "ns")
	p := make([]byte, 3)
	for i, content := range []string{"one", "two", "six"} {
		if err := b.Put(ctx, "ns", "obj", []byte(content), i > 0); err != nil {
			t.Fatal(err)
		}
		if err := b.ReadAt(ctx, "ns", "obj", p, 0); err != nil || string(p) != content {
			t.Fatalf("read %q %v, want %q", p, err, content)
		}
	}
	for i := 0; i < 10; i++ {
		name := fmt.Sprintf("o%d", i)
		b.Put(ctx, "ns", name, []byte(name+"x"), false)
		if err := b.ReadAt(ctx, "ns", name, p, 0); err != nil || string(p) != name+"x" {
			t.Fatalf("read %s: %q %v", name, p, err)
		}
	}
	if n := len(b.fds.files); n > 4 {
		t.Fatalf("%d handles cached, limit 4", n)
	}
	b.Delete(ctx, "ns", "o9")
	if err := b.ReadAt(ctx, "ns", "o9", p, 0); !errors.Is(err, ErrObjectNotFound) {
		t.Fatalf("read after delete: %v", err)
	}
	b.DeleteNamespace(ctx, "ns")
	if err := b.ReadAt(ctx, "ns", "o8", p, 0); !errors.Is(err, ErrNamespaceNotFound) {
		t.Fatalf("read after namespace delete: %v", err)
	}
}
