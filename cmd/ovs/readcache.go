package main

import (
	"github.com/ovs-storage/ovs/framework/node"
)

// autoSizeValue is a size flag whose default, "auto", leaves the choice
// to the node (--read-cache-disk).
type autoSizeValue struct {
	set bool
	n   sizeValue
}

func (a *autoSizeValue) Set(text string) error {
	if text == "auto" {
		*a = autoSizeValue{}
		return nil
	}
	if text == "0" {
		*a = autoSizeValue{set: true}
		return nil
	}
	if err := a.n.Set(text); err != nil {
		return err
	}
	a.set = true
	return nil
}

func (a *autoSizeValue) String() string {
	switch {
	case !a.set:
		return "auto"
	case a.n == 0:
		return "0"
	}
	return a.n.String()
}

func (a *autoSizeValue) Type() string { return "size" }

// size is the node's setting: nil for auto.
func (a *autoSizeValue) size() *node.CacheSize {
	if !a.set {
		return nil
	}
	s := node.CacheSize(a.n)
	return &s
}
