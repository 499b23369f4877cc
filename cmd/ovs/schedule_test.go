package main

import "testing"

func TestScheduleFlag(t *testing.T) {
	tests := []struct {
		name, value string
		forVDisk    bool
		want        string
		wantErr     bool
	}{
		{"snapshots", "hourly", true, "hourly", false},
		{"snapshots", "vpool", true, "", false},
		{"snapshots", "VPOOL", true, "", false},
		{"snapshots", "vpool", false, "", true},
		{"snapshots", "default", false, "", false},
		{"snapshots", "default", true, "", true},
		{"scrub", " 24h ", false, "24h", false},
		{"retention", "DEFAULT", true, "default", false},
		{"retention", "default", false, "default", false},
		{"retention", "1h:24h", false, "1h:24h", false},
		{"scrub", "", true, "", true},
	}
	for _, tc := range tests {
		got, err := scheduleFlag(tc.name, tc.value, tc.forVDisk)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("scheduleFlag(%q, %q, vdisk=%v) = %q, %v; want %q, error %v", tc.name, tc.value, tc.forVDisk, got, err, tc.want, tc.wantErr)
		}
	}
}
