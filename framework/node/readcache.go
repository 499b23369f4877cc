package node

import (
	"log/slog"

	"gopkg.in/yaml.v3"

	"github.com/ovs-storage/ovs/volumedriver"
)

// readCacheDiskBytes is the size of the driver's disk read cache: the
// configured one (0 turns it off), or volumedriver's default from the free
// space of DATA.
func readCacheDiskBytes(cfg Config, log *slog.Logger) int64 {
	if s := cfg.Driver.ReadCacheDisk; s != nil {
		return int64(*s)
	}
	n := volumedriver.DefaultReadCacheDiskBytes(cfg.Data)
	log.Info("disk read cache sized from DATA's free space", "bytes", n)
	return n
}

// CacheSize is a size that may be 0 (the cache off), which Size refuses.
type CacheSize int64

func (s *CacheSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Value == "0" {
		*s = 0
		return nil
	}
	var v Size
	if err := v.UnmarshalYAML(n); err != nil {
		return err
	}
	*s = CacheSize(v)
	return nil
}
