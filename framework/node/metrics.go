package node

import (
	"log/slog"
	"net/http"

	"github.com/ovs-storage/ovs/arakoon"
	"github.com/ovs-storage/ovs/framework/metrics"
	"github.com/ovs-storage/ovs/scos/ec"
	"github.com/ovs-storage/ovs/volumedriver"
)

// metricsHandler serves the node's /metrics: the vdisks it serves, the
// erasure-coded backend as it sees it (nil with the local-directory
// backend) and arakoon.
func metricsHandler(drv *volumedriver.Driver, backend *ec.Backend, ara *arakoon.Client, log *slog.Logger) http.Handler {
	src := metrics.Sources{VDisks: drv, Logger: log}
	// A nil pointer in an interface would not read as "no source".
	if backend != nil {
		src.Backend = backend
	}
	if ara != nil {
		src.Arakoon = ara
	}
	return metrics.New(src).Handler()
}
