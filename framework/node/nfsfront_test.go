package node

import (
	"net"
	"slices"
	"testing"
)

func TestNFSAllowList(t *testing.T) {
	ifaces := func() ([]net.Addr, error) {
		var out []net.Addr
		for _, s := range []string{"127.0.0.1/8", "10.20.30.5/24", "192.168.1.7/16", "fe80::1/64", "fd00:1::5/64"} {
			ip, n, err := net.ParseCIDR(s)
			if err != nil {
				t.Fatal(err)
			}
			n.IP = ip
			out = append(out, n)
		}
		return out, nil
	}
	loop := []string{"127.0.0.0/8", "::1/128"}
	tests := []struct {
		name       string
		configured []string
		listen     string
		want       []string
		wantErr    bool
	}{
		{"default on one address: its network", nil, "10.20.30.5:2049", append(loop, "10.20.30.0/24"), false},
		{"default on another address", nil, "192.168.1.7:111", append(loop, "192.168.0.0/16"), false},
		{"default on loopback: loopback only", nil, "127.0.0.1:2049", loop, false},
		{"default on every address: every attached network but link-local", nil, "0.0.0.0:2049",
			append(loop, "10.20.30.0/24", "192.168.0.0/16", "fd00:1::/64"), false},
		{"configured wins", []string{"10.0.0.0/8", "192.0.2.9", " 2001:db8::/32 "}, "10.20.30.5:2049",
			[]string{"10.0.0.0/8", "192.0.2.9/32", "2001:db8::/32"}, false},
		{"configured network is masked", []string{"10.1.2.3/16"}, "10.20.30.5:2049", []string{"10.1.0.0/16"}, false},
		{"everyone, on purpose", []string{"0.0.0.0/0", "::/0"}, "10.20.30.5:2049", []string{"0.0.0.0/0", "::/0"}, false},
		{"garbage", []string{"the lan"}, "10.20.30.5:2049", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.ResolveTCPAddr("tcp", tc.listen)
			if err != nil {
				t.Fatal(err)
			}
			got, err := nfsAllowList(tc.configured, l, ifaces)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("want an error, got %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var gs []string
			for _, p := range got {
				gs = append(gs, p.String())
			}
			if !slices.Equal(gs, tc.want) {
				t.Fatalf("got %v, want %v", gs, tc.want)
			}
		})
	}
}

func TestConfigRejectsBadNFSAllow(t *testing.T) {
	c := Config{ID: "n", Data: t.TempDir(), Arakoon: "a.yaml", Advertise: "10.0.0.1", NFSAllow: []string{"10.0.0.0/33"}}
	if err := c.validate(); err == nil {
		t.Fatal("nfs_allow 10.0.0.0/33 accepted")
	}
	c.NFSAllow = []string{"10.0.0.0/24"}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
}
