package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name, yaml string
		wantErr    string
		check      func(t *testing.T, c Config)
	}{
		{name: "defaults", yaml: "id: a\ndata: /d\narakoon: ara.yaml\napi: 10.0.0.1:8800\n", check: func(t *testing.T, c Config) {
			c.setDefaults()
			if c.Forward != "10.0.0.1:8820" || c.Site != "default" || c.Backend.Kind != "ec" || c.Backend.ASDs != 2 || !*c.Backend.Maintenance {
				t.Errorf("defaults: %+v", c)
			}
			if !filepath.IsAbs(c.Arakoon) {
				t.Errorf("arakoon file %q not made absolute", c.Arakoon)
			}
		}},
		{name: "sizes", yaml: "id: a\ndata: /d\narakoon: /a.yaml\ndriver:\n  read_cache: 64MiB\n  auto_sync: 5s\n", check: func(t *testing.T, c Config) {
			if c.Driver.ReadCache != 64<<20 || c.Driver.AutoSync.Seconds() != 5 {
				t.Errorf("driver: %+v", c.Driver)
			}
		}},
		{name: "disk read cache default", yaml: "id: a\ndata: /d\narakoon: /a.yaml\n", check: func(t *testing.T, c Config) {
			if c.Driver.ReadCacheDisk != nil {
				t.Errorf("read_cache_disk %v, want unset (auto)", *c.Driver.ReadCacheDisk)
			}
		}},
		{name: "disk read cache off", yaml: "id: a\ndata: /d\narakoon: /a.yaml\ndriver:\n  read_cache_disk: 0\n", check: func(t *testing.T, c Config) {
			if c.Driver.ReadCacheDisk == nil || *c.Driver.ReadCacheDisk != 0 {
				t.Errorf("read_cache_disk %v, want 0", c.Driver.ReadCacheDisk)
			}
		}},
		{name: "disk read cache size", yaml: "id: a\ndata: /d\narakoon: /a.yaml\ndriver:\n  read_cache_disk: 2GiB\n", check: func(t *testing.T, c Config) {
			if c.Driver.ReadCacheDisk == nil || *c.Driver.ReadCacheDisk != 2<<30 {
				t.Errorf("read_cache_disk %v, want 2 GiB", c.Driver.ReadCacheDisk)
			}
		}},
		{name: "unknown field", yaml: "id: a\ndata: /d\narakoon: /a.yaml\nbogus: 1\n", wantErr: "bogus"},
		{name: "no id", yaml: "data: /d\narakoon: /a.yaml\n", wantErr: "no id"},
		{name: "no arakoon", yaml: "id: a\ndata: /d\n", wantErr: "arakoon"},
		{name: "local backend in a cluster", yaml: "id: a\ndata: /d\narakoon: /a.yaml\nbackend:\n  kind: local\n", wantErr: "one host"},
		{name: "wildcard without advertise", yaml: "id: a\ndata: /d\narakoon: /a.yaml\napi: 0.0.0.0:8800\n", wantErr: "advertise"},
		{name: "wildcard with advertise", yaml: "id: a\ndata: /d\narakoon: /a.yaml\napi: 0.0.0.0:8800\nadvertise: 10.0.0.5\n", check: func(t *testing.T, c Config) {
			c.setDefaults()
			if got := c.advertised(c.API); got != "10.0.0.5:8800" {
				t.Errorf("advertised API %q", got)
			}
		}},
		{name: "bad size", yaml: "id: a\ndata: /d\narakoon: /a.yaml\ndriver:\n  read_cache: lots\n", wantErr: "lots"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "node.yaml")
			if err := os.WriteFile(p, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := LoadConfig(p)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}
