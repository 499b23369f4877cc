package nfs

import (
	"context"
	"strings"
)

// MOUNT v3 procedures (RFC 1813 appendix I).
const (
	mountNull    = 0
	mountMnt     = 1
	mountDump    = 2
	mountUmnt    = 3
	mountUmntAll = 4
	mountExport  = 5

	mnt3OK     = 0
	mnt3NoEnt  = 2
	mnt3IO     = 5
	mnt3NotDir = 20
)

// mountProc answers MOUNT. There is one export, "/", which EXPORT lists;
// MNT also takes "/vpool" for it and any directory below either (as knfsd
// does), because libnfs mounts the directory part of a URL:
// nfs://host/disk.raw makes it ask for "" and fail on its own, while
// nfs://host/vpool/disk.raw works. The server keeps no mount list (DUMP
// is empty): NFSv3 is stateless and the list would only be advisory.
func (s *Server) mountProc(ctx context.Context, c *call) ([]byte, uint32) {
	r := c.args
	w := &xdrWriter{}
	switch c.proc {
	case mountNull, mountUmntAll:
	case mountMnt:
		dir := r.string(1024)
		if r.err != nil {
			return nil, acceptGarbageArgs
		}
		p, ok := exportRelative(dir)
		if !ok {
			s.log.Debug("nfs: mount of an unknown export", "path", dir)
			w.u32(mnt3NoEnt)
			break
		}
		a, err := s.tree.Stat(ctx, p)
		switch {
		case err != nil && status(err) == nfsErrNoEnt:
			w.u32(mnt3NoEnt)
		case err != nil:
			s.log.Warn("nfs: mount", "path", dir, "err", err)
			w.u32(mnt3IO)
		case !a.IsDir():
			w.u32(mnt3NotDir)
		default:
			s.handles.put(a.Ino, p)
			w.u32(mnt3OK)
			w.opaque(makeHandle(a.Ino))
			w.u32(1) // auth flavors: AUTH_SYS
			w.u32(authSys)
		}
	case mountDump:
		w.bool(false)
	case mountUmnt:
		r.string(1024)
		if r.err != nil {
			return nil, acceptGarbageArgs
		}
	case mountExport:
		w.bool(true)
		w.string(ExportPath)
		w.bool(false) // no groups: any client that reaches the port
		w.bool(false)
	default:
		return nil, acceptProcUnavail
	}
	return w.b, acceptSuccess
}

// exportRelative maps a MNT path onto a Tree path.
func exportRelative(dir string) (string, bool) {
	if !strings.HasPrefix(dir, "/") && dir != "" {
		return "", false
	}
	p := clean(dir)
	if p == exportAlias[1:] {
		return "", true
	}
	if rest, ok := strings.CutPrefix(p, exportAlias[1:]+"/"); ok {
		return rest, true
	}
	return p, true
}
