package ec

import (
	"context"
	"errors"
	"testing"
)

// TestECWritable: Writable answers nil only while a preset's fragments
// can be placed, and notices ASDs that come back without waiting for the
// health monitor's next tick.
func TestECWritable(t *testing.T) {
	ctx := context.Background()
	e := newECEnv(t, spreadNodes(6), Config{Presets: []Preset{{Name: "p42", Policies: []Policy{{4, 2, 6, 1}}}}, Preset: "p42"})
	if err := e.b.Writable(ctx); err != nil {
		t.Fatalf("with every ASD up: %v", err)
	}
	for _, a := range e.asds[:2] {
		a.set(asdDown)
	}
	e.waitHealth()
	if err := e.b.Writable(ctx); !errors.Is(err, ErrInsufficientASDs) {
		t.Fatalf("with 2 of 6 ASDs down for a 4+2 x1 preset: %v, want ErrInsufficientASDs", err)
	}
	for _, a := range e.asds[:2] {
		a.set(asdUp)
	}
	if err := e.b.Writable(ctx); err != nil {
		t.Fatalf("right after the ASDs came back: %v", err)
	}
}
