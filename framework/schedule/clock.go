package schedule

import (
	"sync"
	"time"
)

// Clock is the scheduler's time: what it reads as now and what wakes it
// up. The Scheduler never calls time.Now, so a test drives it through
// weeks in moments with a FakeClock.
type Clock interface {
	Now() time.Time
	NewTicker(d time.Duration) Ticker
}

// Ticker delivers ticks like time.Ticker: at most one waits, the others
// are dropped while the receiver is busy.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// SystemClock is the real clock.
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time                   { return time.Now() }
func (systemClock) NewTicker(d time.Duration) Ticker { return systemTicker{time.NewTicker(d)} }

type systemTicker struct{ t *time.Ticker }

func (t systemTicker) C() <-chan time.Time { return t.t.C }
func (t systemTicker) Stop()               { t.t.Stop() }

// FakeClock is a Clock that moves only when told (Set, Advance); its
// tickers fire as the time passes their next tick.
type FakeClock struct {
	mu      sync.Mutex
	now     time.Time
	tickers []*fakeTicker
}

// NewFakeClock returns a FakeClock at now.
func NewFakeClock(now time.Time) *FakeClock { return &FakeClock{now: now} }

// Now returns the fake time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTicker returns a ticker that ticks every d of fake time.
func (c *FakeClock) NewTicker(d time.Duration) Ticker {
	d = max(d, time.Nanosecond)
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTicker{c: c, every: d, next: c.now.Add(d), ch: make(chan time.Time, 1)}
	c.tickers = append(c.tickers, t)
	return t
}

// Advance moves the time forward by d.
func (c *FakeClock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// Set moves the time to t, forward or back (a clock that jumped). Every
// ticker whose next tick is due ticks once (a slow receiver loses ticks,
// as with time.Ticker) and its next tick is the first one after t; after
// a jump back, tickers wait one period from t.
func (c *FakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
	for _, tk := range c.tickers {
		if tk.stopped {
			continue
		}
		switch {
		case !t.Before(tk.next):
			select {
			case tk.ch <- t:
			default:
			}
			tk.next = tk.next.Add((t.Sub(tk.next)/tk.every + 1) * tk.every)
		case tk.next.Sub(t) > tk.every:
			tk.next = t.Add(tk.every)
		}
	}
}

type fakeTicker struct {
	c       *FakeClock
	every   time.Duration
	next    time.Time
	ch      chan time.Time
	stopped bool
}

func (t *fakeTicker) C() <-chan time.Time { return t.ch }

func (t *fakeTicker) Stop() {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	t.stopped = true
}
