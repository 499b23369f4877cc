package ec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jobprogress "github.com/ovs-storage/ovs/internal/progress"
	"github.com/ovs-storage/ovs/scos"
	"github.com/ovs-storage/ovs/scos/asd"
	"github.com/ovs-storage/ovs/scos/internal/crc32c"
)

// ecCounters count what the backend has done since it started.
type ecCounters struct {
	puts, reads, deletes, degradedReads, putFallbacks atomic.Int64
	corruptFound, missingFound                        atomic.Int64
	objectsRepaired, fragmentsRebuilt, fragmentsMoved atomic.Int64
	policyUpgrades, repairFailures                    atomic.Int64
	scrubs, fragmentsScrubbed, orphansDeleted         atomic.Int64
	gcDeleted                                         atomic.Int64
	wireReads, directReads, readAheadHits             atomic.Int64
}

// Counters is a snapshot of the backend's counters since it started.
type Counters struct {
	Puts             int64 `json:"puts"`
	Reads            int64 `json:"reads"`
	Deletes          int64 `json:"deletes"`
	DegradedReads    int64 `json:"degraded_reads"`    // reads that had to decode
	PutFallbacks     int64 `json:"put_fallbacks"`     // puts stored with a fallback policy
	CorruptFound     int64 `json:"corrupt_fragments"` // found by reads and scrubs
	MissingFound     int64 `json:"missing_fragments"`
	ObjectsRepaired  int64 `json:"objects_repaired"`
	FragmentsRebuilt int64 `json:"fragments_rebuilt"` // rewritten where they were
	FragmentsMoved   int64 `json:"fragments_moved"`   // rebuilt or copied onto another ASD
	PolicyUpgrades   int64 `json:"policy_upgrades"`
	RepairFailures   int64 `json:"repair_failures"`
	Scrubs           int64 `json:"scrubs"`
	FragmentsScrubbd int64 `json:"fragments_scrubbed"`
	OrphansDeleted   int64 `json:"orphans_deleted"`
	GarbageDeleted   int64 `json:"garbage_deleted"`
	// WireReads: fragment read requests sent over the ASDs' binary
	// protocol (the rest of the reads went over HTTP).
	WireReads int64 `json:"wire_reads"`
	// DirectReads: of those, the ones the node served from the fragment
	// files of an ASD of its own host (no request to the ASD).
	DirectReads int64 `json:"direct_reads"`
	// ReadAheadHits: ranged reads served from a read-ahead window.
	ReadAheadHits int64 `json:"read_ahead_hits"`
}

func (c *ecCounters) snapshot() Counters {
	return Counters{
		Puts: c.puts.Load(), Reads: c.reads.Load(), Deletes: c.deletes.Load(),
		DegradedReads: c.degradedReads.Load(), PutFallbacks: c.putFallbacks.Load(),
		CorruptFound: c.corruptFound.Load(), MissingFound: c.missingFound.Load(),
		ObjectsRepaired: c.objectsRepaired.Load(), FragmentsRebuilt: c.fragmentsRebuilt.Load(),
		FragmentsMoved: c.fragmentsMoved.Load(), PolicyUpgrades: c.policyUpgrades.Load(),
		RepairFailures: c.repairFailures.Load(), Scrubs: c.scrubs.Load(),
		FragmentsScrubbd: c.fragmentsScrubbed.Load(), OrphansDeleted: c.orphansDeleted.Load(),
		GarbageDeleted: c.gcDeleted.Load(), WireReads: c.wireReads.Load(),
		DirectReads: c.directReads.Load(), ReadAheadHits: c.readAheadHits.Load(),
	}
}

// progress is the maintenance task under way.
type progress struct {
	mu        sync.Mutex
	task      string
	done      int64
	total     int64
	started   time.Time
	lastScrub time.Time
	lastPass  time.Time
	// tracker is the caller's (progress.From), nil if none: a
	// maintenance call run as an API job reports into it too.
	tracker *jobprogress.Tracker
}

// MaintenanceProgress shows the maintenance task under way, if any.
type MaintenanceProgress struct {
	Task      string    `json:"task,omitempty"` // "repair", "scrub", "rebalance" or ""
	Done      int64     `json:"done"`
	Total     int64     `json:"total"`
	Started   time.Time `json:"started,omitzero"`
	LastPass  time.Time `json:"last_pass,omitzero"`
	LastScrub time.Time `json:"last_scrub,omitzero"`
}

func (p *progress) start(ctx context.Context, task string, total int64) {
	p.mu.Lock()
	p.task, p.done, p.total, p.started = task, 0, total, time.Now().UTC()
	p.tracker = jobprogress.From(ctx)
	p.mu.Unlock()
	p.tracker.Start(task, "objects", total)
}

func (p *progress) step() {
	p.mu.Lock()
	p.done++
	t := p.tracker
	p.mu.Unlock()
	t.Add(1)
}

func (p *progress) finish() {
	p.mu.Lock()
	p.task = ""
	p.tracker = nil
	p.mu.Unlock()
}

func (p *progress) snapshot() MaintenanceProgress {
	p.mu.Lock()
	defer p.mu.Unlock()
	return MaintenanceProgress{Task: p.task, Done: p.done, Total: p.total, Started: p.started,
		LastPass: p.lastPass, LastScrub: p.lastScrub}
}

// MaintenanceReport says what one maintenance call did.
type MaintenanceReport struct {
	Objects          int      `json:"objects"`           // manifests looked at
	Flagged          int      `json:"flagged"`           // objects found needing work
	Repaired         int      `json:"repaired"`          // objects repaired
	FragmentsRebuilt int      `json:"fragments_rebuilt"` // rewritten in place
	FragmentsMoved   int      `json:"fragments_moved"`   // placed on another ASD
	Upgraded         int      `json:"upgraded"`          // re-encoded with the preset's first policy
	Remaining        int      `json:"remaining"`         // still flagged after the pass
	Failed           int      `json:"failed"`
	Scrubbed         int      `json:"fragments_scrubbed"`
	Corrupt          int      `json:"corrupt"`
	Missing          int      `json:"missing"`
	Orphans          int      `json:"orphans_deleted"`
	Drained          []string `json:"drained,omitempty"` // ASDs that finished decommissioning
	Errors           []string `json:"errors,omitempty"`  // the first few
}

func (r *MaintenanceReport) fail(err error) {
	r.Failed++
	if len(r.Errors) < 10 {
		r.Errors = append(r.Errors, err.Error())
	}
}

// maintenanceLoop runs a full pass every MaintenanceInterval, repairs
// flagged objects when woken, scrubs every ScrubInterval and rebalances
// when ASDs were added or fill differs too much.
func (b *Backend) maintenanceLoop(ctx context.Context) {
	defer b.wg.Done()
	t := time.NewTicker(b.cfg.MaintenanceInterval)
	defer t.Stop()
	started := time.Now()
	for {
		full := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			full = true
		case <-b.kick:
			full = b.fullPass.Swap(false)
		}
		b.finishNamespaceDeletes(ctx)
		var (
			rep MaintenanceReport
			err error
		)
		if full {
			rep, err = b.Repair(ctx)
		} else {
			rep, err = b.RepairFlagged(ctx)
		}
		if err != nil && ctx.Err() == nil {
			b.log.Warn("maintenance", "err", err)
		}
		if rep.Failed > 0 || rep.Remaining > 0 {
			// One line per pass, not one per object.
			first := ""
			if len(rep.Errors) > 0 {
				first = rep.Errors[0]
			}
			b.log.Warn("objects still degraded after repair", "remaining", rep.Remaining, "failures", rep.Failed,
				"repaired", rep.Repaired, "first_error", first)
		}
		if full && b.cfg.ScrubInterval > 0 {
			last := b.progress.snapshot().LastScrub
			if last.IsZero() && time.Since(started) > b.cfg.ScrubInterval || !last.IsZero() && time.Since(last) > b.cfg.ScrubInterval {
				if _, err := b.Scrub(ctx); err != nil && ctx.Err() == nil {
					b.log.Warn("scrub", "err", err)
				}
			}
		}
		if full && (b.rebalance.Swap(false) || b.imbalanced()) {
			if _, err := b.Rebalance(ctx); err != nil && ctx.Err() == nil {
				b.log.Warn("rebalance", "err", err)
			}
		}
	}
}

// finishNamespaceDeletes completes deletes of namespaces that were
// interrupted.
func (b *Backend) finishNamespaceDeletes(ctx context.Context) {
	var dying []string
	_ = kvRangeAll(ctx, b.kv, kvNamespace, func(e KV) (bool, error) {
		var r nsRecord
		if json.Unmarshal(e.Value, &r) == nil && r.Deleting {
			dying = append(dying, e.Key[len(kvNamespace):])
		}
		return true, nil
	})
	for _, ns := range dying {
		// Not fenced: the owner decided the delete when it marked the
		// namespace, which readers no longer see; any node may finish it.
		if err := b.deleteNamespace(ctx, nil, ns); err != nil && !errors.Is(err, scos.ErrNamespaceNotFound) {
			b.log.Warn("finishing the delete of a namespace", "ns", ns, "err", err)
		}
	}
}

// asdView is a snapshot of one ASD for maintenance decisions.
type asdView struct {
	rec       ASDRecord
	probed    bool
	up        bool
	downSince time.Time
	health    asd.Health
}

func (b *Backend) asdViews() map[string]asdView {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]asdView, len(b.asds))
	for id, st := range b.asds {
		out[id] = asdView{rec: st.rec, probed: st.probed, up: st.up, downSince: st.downSince, health: st.health}
	}
	return out
}

// lost reports whether an ASD's fragments must be rebuilt elsewhere: gone
// from the registry, not active, or down for longer than LostAfter.
func (b *Backend) lost(v asdView, ok bool, now time.Time) (string, bool) {
	switch {
	case !ok:
		return "not registered", true
	case v.rec.State != ASDActive:
		return v.rec.State, true
	case v.probed && !v.up && now.Sub(v.downSince) > b.cfg.LostAfter:
		return fmt.Sprintf("down since %s", v.downSince.Format(time.RFC3339)), true
	}
	return "", false
}

// forEachManifest calls fn for every object manifest (in live namespaces
// or not), in key order.
func (b *Backend) forEachManifest(ctx context.Context, fn func(ns, name string, m *Manifest, raw []byte) error) error {
	return kvRangeAll(ctx, b.kv, kvObject, func(e KV) (bool, error) {
		ns, name, ok := strings.Cut(e.Key[len(kvObject):], "/")
		if !ok {
			return true, nil
		}
		m, err := DecodeManifest(e.Value)
		if err != nil {
			b.log.Error("undecodable manifest", "key", e.Key, "err", err)
			return true, nil
		}
		return true, fn(ns, name, m, e.Value)
	})
}

func (b *Backend) countObjects(ctx context.Context) int64 {
	var n int64
	_ = kvRangeAll(ctx, b.kv, kvObject, func(KV) (bool, error) { n++; return true, nil })
	return n
}

// Repair runs a full maintenance pass: it flags every object with a
// fragment on a lost, decommissioning or unregistered ASD, or stored with
// a fallback policy when the first one can now be placed, marks drained
// ASDs decommissioned, then repairs every flagged object.
func (b *Backend) Repair(ctx context.Context) (MaintenanceReport, error) {
	b.maintMu.Lock()
	defer b.maintMu.Unlock()
	var rep MaintenanceReport
	if err := b.sweep(ctx, &rep); err != nil {
		return rep, err
	}
	err := b.repairFlagged(ctx, &rep)
	b.progress.mu.Lock()
	b.progress.lastPass = time.Now().UTC()
	b.progress.mu.Unlock()
	if err == nil && b.decommissioning() {
		// Objects moved off decommissioning ASDs may have drained them.
		err = b.sweep(ctx, &MaintenanceReport{})
	}
	rep.Drained = append(rep.Drained, b.drained...)
	b.drained = nil
	return rep, err
}

func (b *Backend) decommissioning() bool {
	for _, v := range b.asdViews() {
		if v.rec.State == ASDDecommissioning {
			return true
		}
	}
	return false
}

// RepairFlagged repairs the objects already flagged (by reads, puts,
// scrubs or an earlier sweep), without a sweep.
func (b *Backend) RepairFlagged(ctx context.Context) (MaintenanceReport, error) {
	b.maintMu.Lock()
	defer b.maintMu.Unlock()
	var rep MaintenanceReport
	err := b.repairFlagged(ctx, &rep)
	return rep, err
}

func (b *Backend) sweep(ctx context.Context, rep *MaintenanceReport) error {
	now := time.Now()
	views := b.asdViews()
	refs := map[string]int{}
	presets := map[string]*Preset{}
	b.progress.start(ctx, "sweep", b.countObjects(ctx))
	defer b.progress.finish()
	err := b.forEachManifest(ctx, func(ns, name string, m *Manifest, _ []byte) error {
		b.progress.step()
		rep.Objects++
		reason := ""
		for i, f := range m.Fragments {
			refs[f.ASD]++
			v, ok := views[f.ASD]
			if why, lost := b.lost(v, ok, now); lost && reason == "" {
				reason = fmt.Sprintf("fragment %d on ASD %s (%s)", i, f.ASD, why)
			}
		}
		if reason == "" && m.Size > 0 {
			p, ok := presets[m.Preset]
			if !ok {
				if pr, err := b.preset(ctx, m.Preset); err == nil {
					p = &pr
				}
				presets[m.Preset] = p
			}
			if p != nil {
				if better, ok := b.betterPolicy(*p, m); ok {
					reason = fmt.Sprintf("stored with fallback policy %s; %s can be placed now", m.Policy, p.Policies[better])
				}
			}
		}
		if reason == "" {
			return nil
		}
		rep.Flagged++
		if _, err := b.kv.Get(ctx, degradedKey(ns, name)); errors.Is(err, ErrKeyNotFound) {
			raw, _ := json.Marshal(degradedRecord{Reason: reason, Since: now.UTC()})
			return b.kv.Set(ctx, degradedKey(ns, name), raw)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Decommissioning ASDs that hold nothing any more are drained.
	for id, v := range views {
		if v.rec.State != ASDDecommissioning || refs[id] > 0 {
			continue
		}
		if err := b.updateASD(ctx, id, func(r *ASDRecord) { r.State = ASDDecommissioned }); err != nil {
			return err
		}
		b.log.Info("ASD drained", "asd", id)
		b.drained = append(b.drained, id)
	}
	return nil
}

// betterPolicy returns the index of the first policy of the preset that
// can be placed now if it comes before the one m was stored with (a
// policy not in the preset counts as the last).
func (b *Backend) betterPolicy(p Preset, m *Manifest) (int, bool) {
	if m.Size == 0 {
		return 0, false
	}
	cur := len(p.Policies)
	for i, pol := range p.Policies {
		if pol == m.Policy {
			cur = i
			break
		}
	}
	for i := 0; i < cur; i++ {
		if b.placeable(p, i, m.Size) {
			return i, true
		}
	}
	return 0, false
}

// placeable reports whether policy i of the preset can be placed now.
func (b *Backend) placeable(p Preset, i int, size int64) bool {
	pol := p.Policies[i]
	_, err := placeFragments([]byte("probe"), pol.K+pol.M, b.writeCandidates(fragmentSizeFor(size, pol.K), nil),
		pol.X, p.MaxPerSite, nil)
	return err == nil
}

func (b *Backend) repairFlagged(ctx context.Context, rep *MaintenanceReport) error {
	var flagged []KV
	if err := kvRangeAll(ctx, b.kv, kvDegraded, func(e KV) (bool, error) {
		flagged = append(flagged, e)
		return true, nil
	}); err != nil {
		return err
	}
	if len(flagged) == 0 {
		return nil
	}
	b.progress.start(ctx, "repair", int64(len(flagged)))
	defer b.progress.finish()
	for _, e := range flagged {
		if err := ctx.Err(); err != nil {
			return err
		}
		ns, name, _ := strings.Cut(e.Key[len(kvDegraded):], "/")
		fixed, err := b.repairObject(ctx, ns, name, rep)
		b.progress.step()
		if err != nil {
			b.stats.repairFailures.Add(1)
			rep.fail(fmt.Errorf("%s/%s: %w", ns, name, err))
			b.log.Debug("repair failed", "object", ns+"/"+name, "err", err)
		}
		if fixed {
			if err := ignoreConflict(b.kv.TestAndSet(ctx, e.Key, e.Value, nil)); err != nil {
				return err
			}
			b.forgetReports(ns, name)
		} else {
			rep.Remaining++
		}
	}
	return nil
}

func (b *Backend) forgetReports(ns, name string) {
	prefix := ns + "/" + name + "/"
	b.reported.Range(func(k, _ any) bool {
		if strings.HasPrefix(k.(string), prefix) {
			b.reported.Delete(k)
		}
		return true
	})
}

// fragmentCheck is what repair found out about one fragment.
type fragmentCheck int

const (
	fragGood    fragmentCheck = iota // verified where it is
	fragBad                          // missing or corrupt on an ASD that is up: rewrite in place
	fragMove                         // its ASD is lost, leaving or unregistered: rebuild elsewhere
	fragUnknown                      // its ASD is down (not yet lost): wait
)

// checkFragments verifies every fragment of m where it is.
func (b *Backend) checkFragments(ctx context.Context, m *Manifest) ([]fragmentCheck, []error) {
	now := time.Now()
	views := b.asdViews()
	checks := make([]fragmentCheck, len(m.Fragments))
	errs := make([]error, len(m.Fragments))
	var wg sync.WaitGroup
	for i, f := range m.Fragments {
		v, ok := views[f.ASD]
		if why, lost := b.lost(v, ok, now); lost {
			checks[i], errs[i] = fragMove, fmt.Errorf("ASD %s: %s", f.ASD, why)
			continue
		}
		if !v.up {
			checks[i], errs[i] = fragUnknown, fmt.Errorf("%w: ASD %s is down", asd.ErrUnavailable, f.ASD)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			checks[i], errs[i] = b.verifyFragment(ctx, m, i)
		}()
	}
	wg.Wait()
	return checks, errs
}

// verifyFragment has the ASD read fragment i whole and check it, and
// checks it is the fragment the manifest records.
func (b *Backend) verifyFragment(ctx context.Context, m *Manifest, i int) (fragmentCheck, error) {
	f := m.Fragments[i]
	c, up := b.asd(f.ASD)
	if c == nil || !up {
		return fragUnknown, fmt.Errorf("%w: ASD %s is down", asd.ErrUnavailable, f.ASD)
	}
	octx, cancel := context.WithTimeout(ctx, b.opTimeout(m.FragmentSize))
	fi, err := c.Verify(octx, m.FragmentKey(i))
	cancel()
	switch {
	case err == nil && (fi.CRC32C != f.CRC32C || fi.Size != m.FragmentSize):
		return fragBad, fmt.Errorf("%w: fragment %d on %s: %d bytes with checksum %08x, the manifest says %d with %08x",
			asd.ErrFragmentCorrupt, i, f.ASD, fi.Size, fi.CRC32C, m.FragmentSize, f.CRC32C)
	case err == nil:
		return fragGood, nil
	case errors.Is(err, asd.ErrFragmentCorrupt), errors.Is(err, asd.ErrFragmentNotFound):
		return fragBad, err
	default:
		b.suspect(f.ASD, err)
		return fragUnknown, err
	}
}

// repairObject brings one object back to full redundancy: fragments that
// are missing or corrupt are rebuilt in place, fragments on lost or
// leaving ASDs are rebuilt elsewhere within the policy, and an object
// stored with a fallback policy is re-encoded with the preset's first one
// when possible. It reports whether nothing is left to do.
func (b *Backend) repairObject(ctx context.Context, ns, name string, rep *MaintenanceReport) (bool, error) {
	m, raw, err := b.loadManifestFrom(ctx, b.direct, ns, name)
	if errors.Is(err, scos.ErrObjectNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if m.Size == 0 {
		return true, nil
	}
	preset, perr := b.preset(ctx, m.Preset)
	if perr == nil {
		if better, ok := b.betterPolicy(preset, m); ok {
			if done, err := b.upgradeObject(ctx, ns, name, m, raw, preset, better, rep); done || err != nil {
				return done, err
			}
		}
	}
	checks, errs := b.checkFragments(ctx, m)
	var fix, sources []int
	waiting := 0
	for i, c := range checks {
		switch c {
		case fragGood:
			sources = append(sources, i)
		case fragBad:
			fix = append(fix, i)
		case fragMove:
			fix = append(fix, i)
		case fragUnknown:
			waiting++
		}
	}
	if len(fix) == 0 {
		return waiting == 0, nil
	}
	if len(sources) < m.Policy.K {
		return false, fmt.Errorf("%w: only %d of %d fragments readable, %d needed to rebuild", ErrObjectUnavailable,
			len(sources), len(m.Fragments), m.Policy.K)
	}
	// Rebuild the fragments to fix from k good ones.
	exclude := map[int]error{}
	for i, c := range checks {
		if c != fragGood {
			exclude[i] = errs[i]
			if exclude[i] == nil {
				exclude[i] = errFragmentPending
			}
		}
	}
	rec, _, err := b.reconstructWindow(ctx, m, 0, m.FragmentSize, exclude, fix)
	if err != nil {
		return false, err
	}
	// Choose where each goes: in place if its ASD is fine, else a new ASD
	// that keeps the object within its node and site bounds.
	maxPerSite := 0
	if perr == nil {
		maxPerSite = preset.MaxPerSite
	}
	newm := *m
	newm.Fragments = append([]FragmentLocation(nil), m.Fragments...)
	var taken []asdCandidate
	holders := map[string]error{}
	for i, f := range m.Fragments {
		holders[f.ASD] = errFragmentPending // never two fragments of one object on an ASD
		if checks[i] != fragMove {
			taken = append(taken, b.candidateOf(f.ASD))
		}
	}
	var write []int
	moved := map[int]bool{}
	for _, i := range fix {
		if got := crc32c.Checksum(rec[i]); got != m.Fragments[i].CRC32C {
			return false, fmt.Errorf("%w: rebuilt fragment %d has checksum %08x, the manifest says %08x",
				scos.ErrCorrupt, i, got, m.Fragments[i].CRC32C)
		}
		if checks[i] == fragBad {
			write = append(write, i)
			continue
		}
		cands := b.writeCandidates(m.FragmentSize, holders)
		t, err := placeFragments(m.ObjectID[:], 1, cands, m.Policy.X, maxPerSite, taken)
		if err != nil {
			rep.fail(fmt.Errorf("%s/%s: fragment %d: %w", ns, name, i, err))
			continue
		}
		newm.Fragments[i].ASD = t[0].ID
		holders[t[0].ID] = errFragmentPending
		taken = append(taken, t[0])
		write = append(write, i)
		moved[i] = true
	}
	if len(write) == 0 {
		return false, nil
	}
	shards := make([][]byte, len(m.Fragments))
	for _, i := range write {
		shards[i] = rec[i]
	}
	results := b.writeFragments(ctx, &newm, ns+"/"+name, shards, write, true, nil)
	var ok, failed []int
	for _, i := range write {
		if results[i] == nil {
			ok = append(ok, i)
		} else {
			failed = append(failed, i)
			newm.Fragments[i] = m.Fragments[i]
			rep.fail(fmt.Errorf("%s/%s: writing fragment %d: %w", ns, name, i, results[i]))
		}
	}
	if len(ok) == 0 {
		return false, nil
	}
	if err := b.kv.TestAndSet(ctx, objKey(ns, name), raw, newm.Encode()); err != nil {
		// Changed under us (overwritten, deleted, repaired): undo.
		b.discard(context.WithoutCancel(ctx), ns, name, &newm, ok)
		if errors.Is(err, ErrKVConflict) {
			return false, nil
		}
		return false, err
	}
	var old []int
	for _, i := range ok {
		if moved[i] {
			old = append(old, i)
			rep.FragmentsMoved++
			b.stats.fragmentsMoved.Add(1)
		} else {
			rep.FragmentsRebuilt++
			b.stats.fragmentsRebuilt.Add(1)
		}
	}
	b.discard(context.WithoutCancel(ctx), ns, name, m, old)
	rep.Repaired++
	b.stats.objectsRepaired.Add(1)
	b.log.Info("object repaired", "object", ns+"/"+name, "rebuilt", len(ok)-len(old), "moved", len(old),
		"failed", len(failed), "waiting", waiting)
	return len(failed) == 0 && len(ok) == len(fix) && waiting == 0, nil
}

// upgradeObject re-encodes an object stored with a fallback policy with
// the better policy of its preset at index better. It reports whether it
// did.
func (b *Backend) upgradeObject(ctx context.Context, ns, name string, m *Manifest, raw []byte, preset Preset, better int, rep *MaintenanceReport) (bool, error) {
	data, err := b.readRange(ctx, ns, name, m, 0, make([]byte, m.Size))
	if err != nil {
		return false, nil // repair the fragments first
	}
	if crc32c.Checksum(data) != m.CRC32C {
		return false, fmt.Errorf("%w: checksum mismatch reading for an upgrade", scos.ErrCorrupt)
	}
	target := Preset{Name: preset.Name, Policies: preset.Policies[better : better+1], MaxPerSite: preset.MaxPerSite}
	newm, _, degraded, err := b.writeObject(ctx, ns+"/"+name, data[:len(data):len(data)], target, nil)
	if err != nil {
		return false, nil // not now
	}
	newm.Preset, newm.Created = m.Preset, m.Created
	if degraded {
		b.discard(context.WithoutCancel(ctx), ns, name, newm, nil)
		return false, nil
	}
	if err := b.kv.TestAndSet(ctx, objKey(ns, name), raw, newm.Encode()); err != nil {
		b.discard(context.WithoutCancel(ctx), ns, name, newm, nil)
		return false, ignoreConflict(err)
	}
	b.discard(context.WithoutCancel(ctx), ns, name, m, nil)
	rep.Upgraded++
	b.stats.policyUpgrades.Add(1)
	b.log.Info("object re-encoded with a better policy", "object", ns+"/"+name,
		"from", m.Policy.String(), "to", newm.Policy.String())
	return true, nil
}

// Scrub verifies every fragment of every object on its ASD (the ASD reads
// it whole and checks its checksums), flags and repairs the objects with
// missing or corrupt fragments, and deletes fragments that no manifest
// refers to once they are older than OrphanGrace.
func (b *Backend) Scrub(ctx context.Context) (MaintenanceReport, error) {
	b.maintMu.Lock()
	defer b.maintMu.Unlock()
	var rep MaintenanceReport
	b.stats.scrubs.Add(1)
	b.progress.start(ctx, "scrub", b.countObjects(ctx))
	start := time.Now()
	refs := map[string]map[string]bool{} // ASD -> fragment keys the manifests place there
	type job struct {
		ns, name string
		m        *Manifest
	}
	jobs := make(chan job)
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				var bad []string
				for i := range j.m.Fragments {
					c, err := b.verifyFragment(ctx, j.m, i)
					if c == fragUnknown {
						continue
					}
					b.stats.fragmentsScrubbed.Add(1)
					mu.Lock()
					rep.Scrubbed++
					if c == fragBad {
						if errors.Is(err, asd.ErrFragmentNotFound) {
							rep.Missing++
							b.stats.missingFound.Add(1)
						} else {
							rep.Corrupt++
							b.stats.corruptFound.Add(1)
						}
						bad = append(bad, fmt.Sprintf("fragment %d on %s: %v", i, j.m.Fragments[i].ASD, err))
					}
					mu.Unlock()
				}
				if len(bad) > 0 {
					b.log.Warn("scrub found bad fragments", "object", j.ns+"/"+j.name, "problems", strings.Join(bad, "; "))
					b.markDegraded(ctx, j.ns, j.name, "scrub: "+strings.Join(bad, "; "))
					mu.Lock()
					rep.Flagged++
					mu.Unlock()
				}
				b.progress.step()
			}
		}()
	}
	err := b.forEachManifest(ctx, func(ns, name string, m *Manifest, _ []byte) error {
		rep.Objects++
		for i, f := range m.Fragments {
			if refs[f.ASD] == nil {
				refs[f.ASD] = map[string]bool{}
			}
			refs[f.ASD][m.FragmentKey(i)] = true
		}
		select {
		case jobs <- job{ns, name, m}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	close(jobs)
	wg.Wait()
	b.progress.finish()
	if err != nil {
		return rep, err
	}
	if err := b.deleteOrphans(ctx, refs, start, &rep); err != nil {
		return rep, err
	}
	err = b.repairFlagged(ctx, &rep)
	b.progress.mu.Lock()
	b.progress.lastScrub = time.Now().UTC()
	b.progress.mu.Unlock()
	return rep, err
}

// deleteOrphans removes fragments that no manifest refers to: leftovers
// of puts that failed or of a process that died mid-put.
func (b *Backend) deleteOrphans(ctx context.Context, refs map[string]map[string]bool, scanStart time.Time, rep *MaintenanceReport) error {
	cutoff := scanStart.Add(-b.cfg.OrphanGrace).UnixNano()
	for id, v := range b.asdViews() {
		c, up := b.asd(id)
		if !up || !v.up {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, time.Minute)
		frags, err := c.ListAll(lctx, true)
		cancel()
		if err != nil {
			rep.fail(fmt.Errorf("listing ASD %s: %w", id, err))
			continue
		}
		for _, f := range frags {
			if refs[id][f.Key] || !f.Corrupt && f.Created > cutoff {
				continue
			}
			if !f.Corrupt && b.stillReferenced(ctx, id, f) {
				continue
			}
			dctx, cancel := context.WithTimeout(ctx, b.cfg.FragmentTimeout)
			err := c.Delete(dctx, f.Key)
			cancel()
			if err != nil && !errors.Is(err, asd.ErrFragmentNotFound) {
				rep.fail(fmt.Errorf("deleting orphan %s on %s: %w", f.Key, id, err))
				continue
			}
			rep.Orphans++
			b.stats.orphansDeleted.Add(1)
			b.log.Info("deleted an orphan fragment", "asd", id, "key", f.Key, "tag", f.Tag)
		}
	}
	return nil
}

// stillReferenced checks the current manifest of the fragment's object (its
// tag is "ns/name"), in case it was stored after the scan read it.
func (b *Backend) stillReferenced(ctx context.Context, asdID string, f asd.FragmentInfo) bool {
	ns, name, ok := strings.Cut(f.Tag, "/")
	if !ok {
		return false
	}
	m, _, err := b.loadManifestFrom(ctx, b.direct, ns, name)
	if errors.Is(err, scos.ErrObjectNotFound) {
		return false
	}
	if err != nil {
		return true // cannot tell: keep it
	}
	for i, loc := range m.Fragments {
		if loc.ASD == asdID && m.FragmentKey(i) == f.Key {
			return true
		}
	}
	return false
}

// --- rebalance -----------------------------------------------------------------

// imbalanced reports whether some ASD is fuller than the rebalance
// threshold allows.
func (b *Backend) imbalanced() bool {
	used, capacity := b.fills()
	mean := meanFill(used, capacity)
	for id := range used {
		if overFull(used[id], capacity[id], mean, b.cfg.RebalanceThreshold) {
			return true
		}
	}
	return false
}

// fills returns the fragment bytes and capacity of active ASDs that are up.
func (b *Backend) fills() (used, capacity map[string]int64) {
	used, capacity = map[string]int64{}, map[string]int64{}
	for id, v := range b.asdViews() {
		if v.up && v.rec.State == ASDActive && v.health.Capacity.Capacity > 0 {
			used[id] = v.health.Capacity.Used
			capacity[id] = v.health.Capacity.Capacity
		}
	}
	return used, capacity
}

func meanFill(used, capacity map[string]int64) float64 {
	var u, c int64
	for id := range used {
		u += used[id]
		c += capacity[id]
	}
	if c == 0 {
		return 0
	}
	return float64(u) / float64(c)
}

// rebalanceMinSlack: an ASD less than this above its share is not moved
// from, whatever the ratio (small clusters would churn otherwise).
const rebalanceMinSlack = 1 << 20

// overFull: more than threshold (relative) and rebalanceMinSlack above its
// share of the data.
func overFull(used, capacity int64, mean, threshold float64) bool {
	target := mean * float64(capacity)
	return float64(used)-target > threshold*target && float64(used)-target > rebalanceMinSlack
}

// Rebalance moves fragments from ASDs fuller than their share (by more
// than the rebalance threshold) to emptier ones, within each object's
// policy, until no ASD is over or nothing more can move.
func (b *Backend) Rebalance(ctx context.Context) (MaintenanceReport, error) {
	b.maintMu.Lock()
	defer b.maintMu.Unlock()
	var rep MaintenanceReport
	used, capacity := b.fills()
	mean := meanFill(used, capacity)
	thr := b.cfg.RebalanceThreshold
	anyOver := func() bool {
		for id := range used {
			if overFull(used[id], capacity[id], mean, thr) {
				return true
			}
		}
		return false
	}
	if !anyOver() {
		return rep, nil
	}
	views := b.asdViews()
	presets := map[string]int{}
	b.progress.start(ctx, "rebalance", b.countObjects(ctx))
	defer b.progress.finish()
	errStop := errors.New("balanced")
	err := b.forEachManifest(ctx, func(ns, name string, m *Manifest, raw []byte) error {
		b.progress.step()
		rep.Objects++
		if !anyOver() {
			return errStop
		}
		if m.Size == 0 {
			return nil
		}
		maxPerSite, ok := presets[m.Preset]
		if !ok {
			if p, err := b.preset(ctx, m.Preset); err == nil {
				maxPerSite = p.MaxPerSite
			}
			presets[m.Preset] = maxPerSite
		}
		size := m.FragmentSize + 4096
		holds := map[string]bool{}
		perNode, perSite := map[string]int{}, map[string]int{}
		for _, f := range m.Fragments {
			holds[f.ASD] = true
			perNode[views[f.ASD].rec.Node]++
			perSite[views[f.ASD].rec.Site]++
		}
		moves := map[int]string{}
		for i, f := range m.Fragments {
			if _, ok := used[f.ASD]; !ok || !overFull(used[f.ASD], capacity[f.ASD], mean, thr) {
				continue
			}
			src := views[f.ASD].rec
			// The emptiest ASD (relative to its share) that fits.
			best, bestFill := "", 0.0
			for id := range used {
				if holds[id] {
					continue
				}
				fill := float64(used[id]+size) / float64(capacity[id])
				if fill > mean {
					continue
				}
				dst := views[id].rec
				if dst.Node != src.Node && perNode[dst.Node] >= m.Policy.X ||
					maxPerSite > 0 && dst.Site != src.Site && perSite[dst.Site] >= maxPerSite {
					continue
				}
				if best == "" || fill < bestFill || fill == bestFill && id < best {
					best, bestFill = id, fill
				}
			}
			if best == "" {
				continue
			}
			moves[i] = best
			holds[best] = true
			dst := views[best].rec
			perNode[src.Node]--
			perSite[src.Site]--
			perNode[dst.Node]++
			perSite[dst.Site]++
			used[f.ASD] -= size
			used[best] += size
		}
		if len(moves) == 0 {
			return nil
		}
		n, err := b.moveFragments(ctx, ns, name, m, raw, moves)
		rep.FragmentsMoved += n
		if err != nil {
			rep.fail(fmt.Errorf("%s/%s: %w", ns, name, err))
		}
		return nil
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	if rep.FragmentsMoved > 0 {
		b.log.Info("rebalanced", "fragments_moved", rep.FragmentsMoved)
	}
	return rep, err
}

// moveFragments copies fragments of m to other ASDs (moves: fragment
// index -> ASD id), switches the manifest and discards the old copies.
func (b *Backend) moveFragments(ctx context.Context, ns, name string, m *Manifest, raw []byte, moves map[int]string) (int, error) {
	shards := make([][]byte, len(m.Fragments))
	var idx []int
	for i := range moves {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	var need []int
	for _, i := range idx {
		d, err := b.fetch(ctx, m, i, 0, m.FragmentSize)
		if err != nil {
			need = append(need, i)
			continue
		}
		shards[i] = d
	}
	if len(need) > 0 {
		exclude := map[int]error{}
		for _, i := range need {
			exclude[i] = errFragmentPending
		}
		rec, _, err := b.reconstructWindow(ctx, m, 0, m.FragmentSize, exclude, need)
		if err != nil {
			return 0, err
		}
		for _, i := range need {
			shards[i] = rec[i]
		}
	}
	newm := *m
	newm.Fragments = append([]FragmentLocation(nil), m.Fragments...)
	for _, i := range idx {
		newm.Fragments[i].ASD = moves[i]
	}
	results := b.writeFragments(ctx, &newm, ns+"/"+name, shards, idx, true, nil)
	var ok []int
	for _, i := range idx {
		if results[i] == nil {
			ok = append(ok, i)
		} else {
			newm.Fragments[i] = m.Fragments[i]
		}
	}
	if len(ok) == 0 {
		return 0, fmt.Errorf("no fragment could be written: %v", results[idx[0]])
	}
	if err := b.kv.TestAndSet(ctx, objKey(ns, name), raw, newm.Encode()); err != nil {
		b.discard(context.WithoutCancel(ctx), ns, name, &newm, ok)
		return 0, ignoreConflict(err)
	}
	b.discard(context.WithoutCancel(ctx), ns, name, m, ok)
	b.stats.fragmentsMoved.Add(int64(len(ok)))
	return len(ok), nil
}
