package main

import (
	"strings"
	"testing"
	"time"

	"github.com/ovs-storage/ovs/framework/api"
)

func TestProgressBarLine(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		width int
		jobs  []api.Job // drawn one second apart; the last is checked
		want  []string  // substrings of the last line
		not   []string
	}{
		{"bytes with rate", 0, []api.Job{
			{State: api.JobRunning, Stage: "rewrite scos", Unit: "bytes", Done: 0, Total: 8 << 20},
			{State: api.JobRunning, Stage: "rewrite scos", Unit: "bytes", Done: 2 << 20, Total: 8 << 20},
		}, []string{"scrub a: rewrite scos", "[======", " 25%", "2 MiB/8 MiB", "2 MiB/s", "0:01"}, nil},
		{"objects", 0, []api.Job{{State: api.JobRunning, Stage: "repair", Unit: "objects", Done: 3, Total: 4}},
			[]string{"75%", "3 objects/4 objects"}, []string{"/s"}},
		{"unknown total", 0, []api.Job{{State: api.JobRunning, Stage: "sync"}},
			[]string{"scrub a: sync  0:00"}, []string{"%"}},
		{"done", 0, []api.Job{{State: api.JobDone, Stage: "switch"}},
			[]string{"scrub a: done", "100%"}, nil},
		{"new stage resets the rate", 0, []api.Job{
			{State: api.JobRunning, Stage: "read tlogs", Unit: "tlogs", Done: 0, Total: 100},
			{State: api.JobRunning, Stage: "read tlogs", Unit: "tlogs", Done: 100, Total: 100},
			{State: api.JobRunning, Stage: "rewrite scos", Unit: "bytes", Done: 10, Total: 100},
		}, []string{"rewrite scos", " 10%"}, []string{"/s"}},
		{"cut to the width", 30, []api.Job{{State: api.JobRunning, Stage: "rewrite scos", Unit: "bytes", Done: 1, Total: 2}},
			[]string{"scrub a: rewrite scos"}, []string{"%"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := &progressBar{label: "scrub a", width: tc.width, start: t0}
			var line string
			for i, j := range tc.jobs {
				line = b.line(j, t0.Add(time.Duration(i)*time.Second))
			}
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("line %q lacks %q", line, w)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(line, n) {
					t.Errorf("line %q has %q", line, n)
				}
			}
			if tc.width > 0 && len([]rune(line)) >= tc.width {
				t.Errorf("line %q is %d wide, terminal %d", line, len([]rune(line)), tc.width)
			}
		})
	}
}

func TestClock(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0:00", 59 * time.Second: "0:59", 61 * time.Second: "1:01", time.Hour + 2*time.Minute + 3*time.Second: "1:02:03",
	} {
		if got := clock(d); got != want {
			t.Errorf("clock(%v) = %q, want %q", d, got, want)
		}
	}
}
