package api

import (
	"fmt"
	"math/big"
	"math/bits"
	"strconv"
	"strings"

	"github.com/ovs-storage/ovs/volumedriver"
)

// Binary size units. Every size in OVS is 1024-based.
const (
	KiB int64 = 1 << (10 * (iota + 1))
	MiB
	GiB
	TiB
	PiB
	EiB
)

// SizeHelp describes the size syntax ParseSize accepts, for help texts.
const SizeHelp = "a whole number of bytes, or a number with a unit: " +
	"B, K/KiB, M/MiB, G/GiB, T/TiB, P/PiB, E/EiB (case-insensitive, all 1024-based: " +
	"KB, MB, GB, TB, PB, EB mean the same as KiB, MiB, GiB, TiB, PiB, EiB); " +
	"fractions such as 1.5GiB are fine if they come to whole bytes"

// maxSizeInput bounds the text ParseSize looks at; no valid size is longer.
const maxSizeInput = 64

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": KiB, "kb": KiB, "kib": KiB,
	"m": MiB, "mb": MiB, "mib": MiB,
	"g": GiB, "gb": GiB, "gib": GiB,
	"t": TiB, "tb": TiB, "tib": TiB,
	"p": PiB, "pb": PiB, "pib": PiB,
	"e": EiB, "eb": EiB, "eib": EiB,
}

// SizeError is the error ParseSize returns. It matches
// volumedriver.ErrInvalidArgument under errors.Is.
type SizeError struct {
	Input  string // the text as given (cut short if very long)
	Reason string // what is wrong with it, e.g. `unknown unit "XB"`
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("invalid size %q: %s", e.Input, e.Reason)
}

// Unwrap makes errors.Is(err, volumedriver.ErrInvalidArgument) hold.
func (e *SizeError) Unwrap() error { return volumedriver.ErrInvalidArgument }

func sizeError(input, format string, args ...any) *SizeError {
	if len(input) > maxSizeInput {
		input = input[:maxSizeInput] + "..."
	}
	return &SizeError{Input: input, Reason: fmt.Sprintf(format, args...)}
}

// ParseSize parses a size such as "10GiB", "1.5 MiB", "4k" or "1048576"
// into bytes.
//
// A size is a decimal number, optionally followed by spaces and a unit. A
// plain number is bytes. Units are case-insensitive and all binary
// (1024-based): B; K, KB, KiB; M, MB, MiB; G, GB, GiB; T, TB, TiB; P, PB,
// PiB; E, EB, EiB. KB/MB/GB/TB/PB are deliberately read as their binary
// counterparts, because every size in OVS is binary. A fraction ("1.5GiB")
// is accepted when it comes to a whole number of bytes.
//
// ParseSize rejects empty input, negative numbers, zero, values beyond
// math.MaxInt64, and anything else with a *SizeError that says why.
func ParseSize(s string) (int64, error) {
	in := s
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return 0, sizeError(in, "empty size; expected a number of bytes or a number with a unit, like 10GiB")
	case len(s) > maxSizeInput:
		return 0, sizeError(in, "too long")
	case s[0] == '-':
		return 0, sizeError(in, "size must not be negative")
	}

	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	whole := s[:i]
	if whole == "" {
		return 0, sizeError(in, "expected a number of bytes or a number with a unit, like 10GiB")
	}
	frac := ""
	if i < len(s) && s[i] == '.' {
		j := i + 1
		for j < len(s) && isDigit(s[j]) {
			j++
		}
		frac = s[i+1 : j]
		if frac == "" {
			return 0, sizeError(in, "expected digits after the decimal point")
		}
		i = j
	}
	unit := strings.TrimLeft(s[i:], " \t")
	mult, ok := sizeUnits[strings.ToLower(unit)]
	if !ok {
		return 0, sizeError(in, "unknown unit %q (use B, KiB, MiB, GiB, TiB, PiB or EiB)", unit)
	}

	// value = whole.frac * mult, computed exactly.
	num, _ := new(big.Int).SetString(whole+frac, 10)
	num.Mul(num, big.NewInt(mult))
	den := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(len(frac))), nil)
	q, r := new(big.Int).QuoRem(num, den, new(big.Int))
	switch {
	case r.Sign() != 0:
		return 0, sizeError(in, "not a whole number of bytes")
	case !q.IsInt64():
		return 0, sizeError(in, "too large (the maximum is %d bytes)", int64(^uint64(0)>>1))
	case q.Sign() == 0:
		return 0, sizeError(in, "size must be greater than zero")
	}
	return q.Int64(), nil
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

var formatUnits = [...]struct {
	size uint64
	name string
}{
	{uint64(EiB), "EiB"},
	{uint64(PiB), "PiB"},
	{uint64(TiB), "TiB"},
	{uint64(GiB), "GiB"},
	{uint64(MiB), "MiB"},
	{uint64(KiB), "KiB"},
}

// FormatSize renders a byte count for humans in the largest binary unit
// that fits, with at most two decimals: "512 B", "10 GiB", "1.5 MiB",
// "1.33 GiB". Decimals are truncated, never rounded up, so the text never
// overstates the size. Exact values come out in a form ParseSize reads back.
func FormatSize(n int64) string {
	sign := ""
	mag := uint64(n)
	if n < 0 {
		sign = "-"
		mag = -mag // also right for math.MinInt64
	}
	for _, u := range formatUnits {
		if mag < u.size {
			continue
		}
		whole, rem := mag/u.size, mag%u.size
		// hundredths = rem*100/u.size without overflowing.
		hi, lo := bits.Mul64(rem, 100)
		hundredths, _ := bits.Div64(hi, lo, u.size)
		switch {
		case hundredths == 0:
			return fmt.Sprintf("%s%d %s", sign, whole, u.name)
		case hundredths%10 == 0:
			return fmt.Sprintf("%s%d.%d %s", sign, whole, hundredths/10, u.name)
		default:
			return fmt.Sprintf("%s%d.%02d %s", sign, whole, hundredths, u.name)
		}
	}
	return sign + strconv.FormatUint(mag, 10) + " B"
}
