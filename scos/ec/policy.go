package ec

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/ovs-storage/ovs/scos"
)

// Policy says how an object is erasure-coded and spread: K data and M
// parity fragments, the put is acknowledged once C of them are stored, and
// at most X fragments go to one node. An object survives the loss of any M
// fragments, hence of any M ASDs, and of any M/X nodes.
type Policy struct {
	K int `json:"k"`
	M int `json:"m"`
	C int `json:"c"`
	X int `json:"x"`
}

func (p Policy) String() string {
	return fmt.Sprintf("%d+%d c%d x%d", p.K, p.M, p.C, p.X)
}

// Validate checks that the policy can be used.
func (p Policy) Validate() error {
	switch {
	case p.K < 1:
		return fmt.Errorf("policy %s: k must be at least 1", p)
	case p.M < 0:
		return fmt.Errorf("policy %s: m must not be negative", p)
	case p.K+p.M > MaxFragments:
		return fmt.Errorf("policy %s: k+m is at most %d", p, MaxFragments)
	case p.C < p.K || p.C > p.K+p.M:
		return fmt.Errorf("policy %s: c must be between k and k+m (a put acknowledged with fewer than k fragments could not be read)", p)
	case p.X < 1 || p.X > p.K+p.M:
		return fmt.Errorf("policy %s: x (fragments per node) must be between 1 and k+m", p)
	}
	return nil
}

// ParsePolicy reads "k,m,c,x" (c and x optional: c defaults to k+m, x to
// k+m, i.e. no per-node bound).
func ParsePolicy(s string) (Policy, error) {
	parts := strings.Split(s, ",")
	if len(parts) < 2 || len(parts) > 4 {
		return Policy{}, fmt.Errorf("policy %q: want k,m[,c[,x]]", s)
	}
	var v [4]int
	for i, p := range parts {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil {
			return Policy{}, fmt.Errorf("policy %q: %q is not a number", s, p)
		}
		v[i] = n
	}
	pol := Policy{K: v[0], M: v[1], C: v[2], X: v[3]}
	if len(parts) < 3 {
		pol.C = pol.K + pol.M
	}
	if len(parts) < 4 {
		pol.X = pol.K + pol.M
	}
	return pol, pol.Validate()
}

// Preset is an ordered list of policies: a put uses the first one that can
// be placed on the ASDs that are up, and maintenance moves objects stored
// with a later one back to the first when it can. MaxPerSite, if set,
// bounds the fragments of an object in one site; a geo preset sets it to at
// most m so that losing a whole site loses no data.
type Preset struct {
	Name       string   `json:"name"`
	Policies   []Policy `json:"policies"`
	MaxPerSite int      `json:"max_per_site,omitempty"`
}

// Validate checks the preset.
func (p Preset) Validate() error {
	if !scos.ValidName(p.Name) || len(p.Name) > maxPresetLen {
		return fmt.Errorf("%w: preset %q", scos.ErrInvalidName, p.Name)
	}
	if len(p.Policies) == 0 || len(p.Policies) > 8 {
		return fmt.Errorf("preset %s: want 1 to 8 policies, got %d", p.Name, len(p.Policies))
	}
	if p.MaxPerSite < 0 {
		return fmt.Errorf("preset %s: max fragments per site must not be negative", p.Name)
	}
	for _, pol := range p.Policies {
		if err := pol.Validate(); err != nil {
			return fmt.Errorf("preset %s: %w", p.Name, err)
		}
		if p.MaxPerSite > pol.M {
			return fmt.Errorf("preset %s: policy %s keeps up to %d fragments in one site, more than its %d parity: losing that site would lose data",
				p.Name, pol, p.MaxPerSite, pol.M)
		}
	}
	return nil
}

// DefaultPresetName is the preset namespaces use unless configured.
const DefaultPresetName = "default"

// LocalPreset is the preset of a single-host cluster (ovs up): 4+2 over
// six ASDs on one node, falling back to 4+1 and 2+1 when ASDs are down.
func LocalPreset() Preset {
	return Preset{Name: DefaultPresetName, Policies: []Policy{
		{K: 4, M: 2, C: 6, X: 6},
		{K: 4, M: 1, C: 5, X: 5},
		{K: 2, M: 1, C: 3, X: 3},
	}}
}

// ErrInsufficientASDs: no policy of the preset can be placed on the ASDs
// that are up and have room.
var ErrInsufficientASDs = errors.New("not enough ASDs available")

// asdCandidate is an ASD as placement sees it.
type asdCandidate struct {
	ID   string
	Node string
	Site string
	Free int64
}

// rendezvousScore ranks ASD id for object id: weighted rendezvous
// hashing, so each ASD is chosen in proportion to its weight and adding or
// removing one moves only the fragments it gains or loses.
func rendezvousScore(objectID []byte, id string, weight float64) float64 {
	h := fnv.New64a()
	h.Write(objectID)
	h.Write([]byte{0})
	h.Write([]byte(id))
	x := h.Sum64()
	// splitmix64 finaliser: FNV's low bits are weak for short inputs.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	u := (float64(x>>11) + 0.5) / (1 << 53) // in (0, 1)
	return weight / -math.Log(u)
}

// placementWeight is an ASD's weight: its free space in MiB (at least 1).
func placementWeight(free int64) float64 {
	return float64(max(free>>20, 1))
}

// placeFragments picks n distinct ASDs from cands for an object, in order
// of weighted rendezvous score, skipping an ASD that would put more than
// maxPerNode fragments on its node or maxPerSite (0: unbounded) on its
// site. taken are ASDs already holding fragments of the object: they count
// against the bounds and are never picked. The result is deterministic
// for given inputs. Node and site caps nest, so this greedy choice finds
// a placement whenever one exists.
func placeFragments(objectID []byte, n int, cands []asdCandidate, maxPerNode, maxPerSite int, taken []asdCandidate) ([]asdCandidate, error) {
	if n == 0 {
		return nil, nil
	}
	perNode := map[string]int{}
	perSite := map[string]int{}
	used := map[string]bool{}
	for _, t := range taken {
		perNode[t.Node]++
		perSite[t.Site]++
		used[t.ID] = true
	}
	type scored struct {
		c     asdCandidate
		score float64
	}
	ranked := make([]scored, 0, len(cands))
	for _, c := range cands {
		if !used[c.ID] {
			ranked = append(ranked, scored{c, rendezvousScore(objectID, c.ID, placementWeight(c.Free))})
		}
	}
	sort.Slice(ranked, func(i, j int) bool {
		if ranked[i].score != ranked[j].score {
			return ranked[i].score > ranked[j].score
		}
		return ranked[i].c.ID < ranked[j].c.ID
	})
	var out []asdCandidate
	for _, r := range ranked {
		if len(out) == n {
			break
		}
		if used[r.c.ID] || perNode[r.c.Node] >= maxPerNode || maxPerSite > 0 && perSite[r.c.Site] >= maxPerSite {
			continue
		}
		used[r.c.ID] = true
		perNode[r.c.Node]++
		perSite[r.c.Site]++
		out = append(out, r.c)
	}
	if len(out) < n {
		nodes, sites := map[string]bool{}, map[string]bool{}
		for _, c := range cands {
			nodes[c.Node], sites[c.Site] = true, true
		}
		siteBound := ""
		if maxPerSite > 0 {
			siteBound = fmt.Sprintf(", at most %d per site over %d sites", maxPerSite, len(sites))
		}
		return nil, fmt.Errorf("%w: %d fragments need %d ASDs (at most %d per node over %d nodes%s); %d ASDs usable",
			ErrInsufficientASDs, n+len(taken), n+len(taken), maxPerNode, len(nodes), siteBound, len(cands))
	}
	return out, nil
}
