package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ovs-storage/ovs/framework/api"
)

// apiOptions are the REST API's options for `ovs up`: limits from the
// flags, and the token store in DATA. A token is required on mutating
// calls when the API listens beyond loopback (or with --api-require-token);
// DATA gets a first token so that the local CLI works out of the box.
func (o *upOptions) apiOptions(addr net.Addr, log *slog.Logger) (api.Options, error) {
	tokenPath := filepath.Join(o.data, api.TokenFileName)
	if tok, err := api.ReadToken(tokenPath); err != nil {
		return api.Options{}, err
	} else if tok == "" {
		if _, err := api.CreateToken(tokenPath); err != nil {
			return api.Options{}, err
		}
	}
	require := o.apiRequireToken
	if ta, ok := addr.(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
		require = true
	}
	if require {
		log.Info("the REST API requires a token on mutating calls", "tokens", tokenPath)
	}
	return api.Options{
		Logger:             log.With("component", "api"),
		RequestTimeout:     o.apiTimeout,
		LongRequestTimeout: 10 * o.apiTimeout,
		MaxConns:           o.apiMaxConns,
		AllowedHosts:       o.apiHosts,
		RequireToken:       require,
		Tokens:             api.NewTokenFile(tokenPath),
	}, nil
}

// waitWritable waits (up to timeout) until the backend can take a new
// vdisk's data, so that "ready" in the log means what the health check
// means. The health check asks again on every call.
func waitWritable(ctx context.Context, writable func(context.Context) error, timeout time.Duration, log *slog.Logger) {
	deadline := time.Now().Add(timeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := writable(cctx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return
		}
		if time.Now().After(deadline) {
			log.Warn("the backend cannot take data yet; the health check answers 503 until it can", "err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// raiseNoFileLimit raises the soft limit on open files to the hard limit:
// every vdisk, NBD client and API connection takes descriptors, and the
// default soft limit (often 1024) is far below what a host serves.
func raiseNoFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, fmt.Errorf("setrlimit: %w", err)
		}
	}
	return rl.Cur, nil
}
