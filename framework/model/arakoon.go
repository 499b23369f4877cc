package model

import (
	"context"
	"errors"
	"fmt"

	"github.com/ovs-storage/ovs/arakoon"
)

// Arakoon is the model's KV over an arakoon client.
func Arakoon(c *arakoon.Client) KV { return arakoonKV{c} }

type arakoonKV struct{ c *arakoon.Client }

func (a arakoonKV) Get(ctx context.Context, key string) ([]byte, error) {
	v, err := a.c.Get(ctx, []byte(key))
	if errors.Is(err, arakoon.ErrNotFound) {
		return nil, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	return v, err
}

// Range pages through the prefix: a page may hold fewer entries than
// asked for when values are large.
func (a arakoonKV) Range(ctx context.Context, prefix string) ([]Entry, error) {
	const page = 1000
	var out []Entry
	first, inclusive := []byte(prefix), true
	for {
		kvs, err := a.c.RangeEntries(ctx, arakoon.Range{First: first, FirstInclusive: inclusive, Last: arakoon.PrefixEnd([]byte(prefix)), Max: page})
		if err != nil {
			return nil, err
		}
		if len(kvs) == 0 {
			return out, nil
		}
		for _, kv := range kvs {
			out = append(out, Entry{Key: string(kv.Key), Value: kv.Value})
		}
		first, inclusive = kvs[len(kvs)-1].Key, false
	}
}

// Apply runs ops as one arakoon sequence. arakoon refuses a delete of an
// absent key; the model's delete of an absent key is a no-op, so such
// deletes are dropped (after a read) and the sequence tried again.
func (a arakoonKV) Apply(ctx context.Context, ops ...Op) error {
	for {
		seq := &arakoon.Sequence{}
		for _, op := range ops {
			switch op.Kind {
			case OpSet:
				seq.Set([]byte(op.Key), op.Value)
			case OpDelete:
				seq.Delete([]byte(op.Key))
			case OpAssert:
				seq.Assert([]byte(op.Key), op.Value)
			}
		}
		err := a.c.Sequence(ctx, seq)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, arakoon.ErrAssertionFailed):
			return fmt.Errorf("%w: %v", ErrConflict, err)
		case !errors.Is(err, arakoon.ErrNotFound):
			return err
		}
		kept := ops[:0:0]
		dropped := false
		for _, op := range ops {
			if op.Kind == OpDelete {
				ok, err := a.c.Exists(ctx, []byte(op.Key))
				if err != nil {
					return err
				}
				if !ok {
					dropped = true
					continue
				}
			}
			kept = append(kept, op)
		}
		if !dropped {
			return err
		}
		ops = kept
	}
}
