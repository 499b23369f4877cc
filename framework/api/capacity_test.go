package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/ovs-storage/ovs/framework/api/apitest"
)

func TestCapacity(t *testing.T) {
	tests := []struct {
		name       string
		fn         func(context.Context) (BackendSpace, error)
		wantStatus int
		wantCode   string
		want       CapacityResponse
	}{
		{
			name:       "no capacity function",
			wantStatus: 404, wantCode: CodeUnknownRoute,
		},
		{
			name: "ec 4+2",
			fn: func(context.Context) (BackendSpace, error) {
				return BackendSpace{Backend: "ec", RawTotal: 600 * GiB, RawFree: 300 * GiB, Efficiency: 4.0 / 6}, nil
			},
			wantStatus: 200,
			want: CapacityResponse{Backend: "ec", TotalBytes: 400 * GiB, FreeBytes: 200 * GiB,
				RawTotalBytes: 600 * GiB, RawFreeBytes: 300 * GiB, Efficiency: 4.0 / 6, ProvisionedBytes: 3 * GiB, VDisks: 2},
		},
		{
			name: "nonsense efficiency counts as 1",
			fn: func(context.Context) (BackendSpace, error) {
				return BackendSpace{Backend: "local", RawTotal: 10 * GiB, RawFree: 5 * GiB}, nil
			},
			wantStatus: 200,
			want: CapacityResponse{Backend: "local", TotalBytes: 10 * GiB, FreeBytes: 5 * GiB,
				RawTotalBytes: 10 * GiB, RawFreeBytes: 5 * GiB, Efficiency: 1, ProvisionedBytes: 3 * GiB, VDisks: 2},
		},
		{
			name: "backend error",
			fn: func(context.Context) (BackendSpace, error) {
				return BackendSpace{}, errors.New("arakoon is gone")
			},
			wantStatus: 500, wantCode: CodeInternal,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := apitest.NewFakeVDisks()
			seed(t, fake)
			s := NewServer(fake, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Capacity: tt.fn})
			s.SetReady(true)
			ts := httptest.NewServer(s.Handler())
			defer ts.Close()
			got, err := NewClient(ts.URL, nil).Capacity(context.Background())
			if tt.wantStatus != 200 {
				var ae *APIError
				if !errors.As(err, &ae) || ae.Status != tt.wantStatus || ae.Code != tt.wantCode {
					t.Fatalf("err = %v; want HTTP %d %s", err, tt.wantStatus, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("capacity = %+v; want %+v", got, tt.want)
			}
		})
	}
}
