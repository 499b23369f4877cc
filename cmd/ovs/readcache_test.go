package main

import "testing"

func TestAutoSizeValue(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int64 // -1: auto (nil)
		str     string
		wantErr bool
	}{
		{"auto", -1, "auto", false},
		{"0", 0, "0", false},
		{"4GiB", 4 << 30, "4 GiB", false},
		{"512MiB", 512 << 20, "512 MiB", false},
		{"lots", 0, "", true},
		{"-1GiB", 0, "", true},
	} {
		var a autoSizeValue
		err := a.Set(tc.in)
		if (err != nil) != tc.wantErr {
			t.Fatalf("%q: err %v", tc.in, err)
		}
		if err != nil {
			continue
		}
		s := a.size()
		switch {
		case tc.want < 0 && s != nil, tc.want >= 0 && (s == nil || int64(*s) != tc.want):
			t.Errorf("%q: size %v, want %d", tc.in, s, tc.want)
		}
		if a.String() != tc.str {
			t.Errorf("%q: String %q, want %q", tc.in, a.String(), tc.str)
		}
	}
}
