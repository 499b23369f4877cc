package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/ovs-storage/ovs/volumedriver"
)

// Renamer is implemented by VDisks that can rename a vdisk (the node's
// cluster-wide service does). It is apart from VDisks so that other
// implementations need not have it.
//
//	POST /api/v1/vdisks/{name}/rename  200 VolumeInfo; body {"name": "NEW"}
type Renamer interface {
	// Rename gives vdisk from the name to, crash safe: after a crash the
	// vdisk is under one of the two names.
	Rename(ctx context.Context, from, to string) (volumedriver.VolumeInfo, error)
}

// RenameRequest is the body of a rename.
type RenameRequest struct {
	Name string `json:"name"`
}

func (s *Server) renameVDisk(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	rn, ok := s.vdisks.(Renamer)
	if !ok {
		s.writeError(w, r, errors.New("this server cannot rename vdisks"), name)
		return
	}
	var body RenameRequest
	if err := s.decodeBody(w, r, &body); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	if err := checkName(body.Name); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	info, err := rn.Rename(r.Context(), name, body.Name)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, info)
}

// Rename gives vdisk from the name to.
func (c *Client) Rename(ctx context.Context, from, to string) (volumedriver.VolumeInfo, error) {
	var info volumedriver.VolumeInfo
	if err := checkName(from); err != nil {
		return info, err
	}
	if err := checkName(to); err != nil {
		return info, err
	}
	err := c.do(ctx, http.MethodPost, vdiskPath(from)+"/rename", nil, RenameRequest{Name: to}, &info)
	return info, err
}
