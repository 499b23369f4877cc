package main

import (
	"testing"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/plugins/libvirt"
)

func TestNBDEndpoint(t *testing.T) {
	n1 := api.NodeInfo{ID: "n1", State: "up", API: "http://10.0.0.1:8800", NBD: "10.0.0.1:10809"}
	n2 := api.NodeInfo{ID: "n2", State: "up", API: "http://10.0.0.2:8800", NBD: "0.0.0.0:10809"}
	down := api.NodeInfo{ID: "n3", State: "down", NBD: "10.0.0.3:10809"}
	noNBD := api.NodeInfo{ID: "n4", State: "up", API: "http://10.0.0.4:8800"}
	for _, tc := range []struct {
		name  string
		nodes []api.NodeInfo
		owner string
		want  libvirt.Endpoint
		bad   bool
	}{
		{"the owner", []api.NodeInfo{n1, n2}, "n1", libvirt.Endpoint{Host: "10.0.0.1", Port: 10809}, false},
		{"wildcard address: the node's API host", []api.NodeInfo{n1, n2}, "n2", libvirt.Endpoint{Host: "10.0.0.2", Port: 10809}, false},
		{"owner without NBD: a node that is up", []api.NodeInfo{down, noNBD, n1}, "n4", libvirt.Endpoint{Host: "10.0.0.1", Port: 10809}, false},
		{"owner down: a node that is up", []api.NodeInfo{down, n1}, "n3", libvirt.Endpoint{Host: "10.0.0.1", Port: 10809}, false},
		{"all down: the owner", []api.NodeInfo{down}, "n3", libvirt.Endpoint{Host: "10.0.0.3", Port: 10809}, false},
		{"the owner after another node", []api.NodeInfo{n2, n1}, "n1", libvirt.Endpoint{Host: "10.0.0.1", Port: 10809}, false},
		{"nobody serves NBD over TCP", []api.NodeInfo{noNBD}, "n4", libvirt.Endpoint{}, true},
		{"no nodes", nil, "", libvirt.Endpoint{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := nbdEndpoint(tc.nodes, tc.owner, "http://127.0.0.1:8800")
			if tc.bad {
				if err == nil {
					t.Fatalf("got %+v, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}
