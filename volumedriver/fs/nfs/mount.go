package nfs

import "context"

// MOUNT v3 procedures (RFC 1813 appendix I).
const (
	mountNull    = 0
	mountMnt     = 1
	mountDump    = 2
	mountUmnt    = 3
	mountUmntAll = 4
	mountExport  = 5

	mnt3OK    = 0
	mnt3NoEnt = 2
	mnt3IO    = 5
)

// mountProc answers MOUNT. There is one export, "/" (alias "/vpool"); the
// server keeps no mount list (DUMP is empty), since NFSv3 is stateless and
// the list would only be advisory.
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
		if dir != ExportPath && dir != "" && dir != exportAlias && dir != exportAlias+"/" {
			s.log.Debug("nfs: mount of an unknown export", "path", dir)
			w.u32(mnt3NoEnt)
			break
		}
		root, err := s.tree.Stat(ctx, "")
		if err != nil {
			s.log.Warn("nfs: mount: root", "err", err)
			w.u32(mnt3IO)
			break
		}
		s.handles.put(root.Ino, "")
		w.u32(mnt3OK)
		w.opaque(makeHandle(root.Ino))
		w.u32(1) // auth flavors: AUTH_SYS
		w.u32(authSys)
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
