package api

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/ovs-storage/ovs/volumedriver"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string // substring of the error; "" means success
	}{
		{in: "1", want: 1},
		{in: "4096", want: 4096},
		{in: "010", want: 10},
		{in: "512B", want: 512},
		{in: "512 b", want: 512},
		{in: "4K", want: 4 * KiB},
		{in: "4k", want: 4 * KiB},
		{in: "4KB", want: 4 * KiB},
		{in: "4KiB", want: 4 * KiB},
		{in: "4kib", want: 4 * KiB},
		{in: "4 KiB", want: 4 * KiB},
		{in: "  10GiB  ", want: 10 * GiB},
		{in: "10\tGiB", want: 10 * GiB},
		{in: "10G", want: 10 * GiB},
		{in: "10gb", want: 10 * GiB},
		{in: "64M", want: 64 * MiB},
		{in: "64MiB", want: 64 * MiB},
		{in: "2T", want: 2 * TiB},
		{in: "2TB", want: 2 * TiB},
		{in: "1PiB", want: PiB},
		{in: "1p", want: PiB},
		{in: "7EiB", want: 7 * EiB},
		{in: "1.5GiB", want: 3 * GiB / 2},
		{in: "1.5 MiB", want: 3 * MiB / 2},
		{in: "0.5KiB", want: 512},
		{in: "1.25K", want: 1280},
		{in: "2.000G", want: 2 * GiB},
		{in: "9223372036854775807", want: math.MaxInt64},
		{in: "8191.999999999999999999PiB", wantErr: "not a whole number of bytes"},

		{in: "", wantErr: "empty size"},
		{in: "   ", wantErr: "empty size"},
		{in: "0", wantErr: "greater than zero"},
		{in: "0GiB", wantErr: "greater than zero"},
		{in: "0.0K", wantErr: "greater than zero"},
		{in: "-1", wantErr: "must not be negative"},
		{in: "-10GiB", wantErr: "must not be negative"},
		{in: "+10GiB", wantErr: "expected a number"},
		{in: "GiB", wantErr: "expected a number"},
		{in: "abc", wantErr: "expected a number"},
		{in: ".5G", wantErr: "expected a number"},
		{in: "1.G", wantErr: "digits after the decimal point"},
		{in: "1.5B", wantErr: "not a whole number of bytes"},
		{in: "1.1", wantErr: "not a whole number of bytes"},
		{in: "0.1K", wantErr: "not a whole number of bytes"},
		{in: "10XB", wantErr: `unknown unit "XB"`},
		{in: "10 GiBs", wantErr: `unknown unit "GiBs"`},
		{in: "10GiB x", wantErr: `unknown unit "GiB x"`},
		{in: "1e9", wantErr: `unknown unit "e9"`},
		{in: "10,000", wantErr: `unknown unit ",000"`},
		{in: "1_000", wantErr: `unknown unit "_000"`},
		{in: "1.2.3", wantErr: `unknown unit ".3"`},
		{in: "9223372036854775808", wantErr: "too large"},
		{in: "8EiB", wantErr: "too large"},
		{in: "99999999999999999999999PiB", wantErr: "too large"},
		{in: strings.Repeat("1", 100), wantErr: "too long"},
		{in: "١٠", wantErr: "expected a number"}, // non-ASCII digits
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseSize(%q) = %d; want an error containing %q", tt.in, got, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseSize(%q) error = %q; want it to contain %q", tt.in, err, tt.wantErr)
			}
			if !errors.Is(err, volumedriver.ErrInvalidArgument) {
				t.Errorf("ParseSize(%q) error does not match ErrInvalidArgument", tt.in)
			}
			var se *SizeError
			if !errors.As(err, &se) || se.Reason == "" {
				t.Errorf("ParseSize(%q) error %T is not a *SizeError with a reason", tt.in, err)
			}
		})
	}
}

func TestParseSizeErrorMessage(t *testing.T) {
	_, err := ParseSize("10XB")
	want := `invalid size "10XB": unknown unit "XB" (use B, KiB, MiB, GiB, TiB, PiB or EiB)`
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v; want %s", err, want)
	}
}

func TestFormatSize(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{0, "0 B"},
		{1, "1 B"},
		{1023, "1023 B"},
		{KiB, "1 KiB"},
		{1536, "1.5 KiB"},
		{4 * KiB, "4 KiB"},
		{3 * MiB / 2, "1.5 MiB"},
		{10 * GiB, "10 GiB"},
		{GiB + GiB/4, "1.25 GiB"},
		{GiB + GiB/3, "1.33 GiB"},  // truncated
		{MiB - 1, "1023.99 KiB"},   // never rounded up to 1024 KiB
		{GiB + 11*MiB, "1.01 GiB"}, // leading zero of the decimals kept
		{GiB + GiB/1000, "1 GiB"},  // below a hundredth
		{3 * TiB, "3 TiB"},
		{5 * PiB / 2, "2.5 PiB"},
		{math.MaxInt64, "7.99 EiB"},
		{-4 * KiB, "-4 KiB"},
		{math.MinInt64, "-8 EiB"},
	}
	for _, tt := range tests {
		if got := FormatSize(tt.in); got != tt.want {
			t.Errorf("FormatSize(%d) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

// FormatSize's exact outputs read back through ParseSize.
func TestFormatParseRoundTrip(t *testing.T) {
	for _, n := range []int64{1, 512, KiB, 1536, 4 * KiB, 3 * MiB / 2, 10 * GiB, GiB + GiB/4, 2 * TiB, 5 * PiB / 2, 7 * EiB} {
		s := FormatSize(n)
		got, err := ParseSize(s)
		if err != nil || got != n {
			t.Errorf("ParseSize(FormatSize(%d) = %q) = %d, %v", n, s, got, err)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1", "10GiB", "1.5 MiB", "4k", "-1", "0", "", "1e9", "9223372036854775807",
		"8EiB", "0.5KiB", "1.", "10 gb", "7.99EiB", "\t3T "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			var se *SizeError
			if !errors.As(err, &se) || !errors.Is(err, volumedriver.ErrInvalidArgument) {
				t.Fatalf("ParseSize(%q): error %v is not a *SizeError matching ErrInvalidArgument", s, err)
			}
			if n != 0 {
				t.Fatalf("ParseSize(%q) = %d with error %v", s, n, err)
			}
			return
		}
		if n <= 0 {
			t.Fatalf("ParseSize(%q) = %d; sizes must be positive", s, n)
		}
		// The plain byte count parses back to the same value.
		if m, err := ParseSize(strconv.FormatInt(n, 10)); err != nil || m != n {
			t.Fatalf("ParseSize(%d) = %d, %v", n, m, err)
		}
		// Units are case-insensitive.
		if m, err := ParseSize(strings.ToUpper(s)); err != nil || m != n {
			t.Fatalf("ParseSize(%q) = %d, %v; ParseSize(%q) = %d", strings.ToUpper(s), m, err, s, n)
		}
		// FormatSize never overstates: what it prints, if it parses, is at most n.
		f := FormatSize(n)
		if m, err := ParseSize(f); err == nil && m > n {
			t.Fatalf("FormatSize(%d) = %q parses to %d, more than the size", n, f, m)
		}
	})
}
