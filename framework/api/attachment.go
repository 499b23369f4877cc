package api

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"github.com/ovs-storage/ovs/framework/model"
)

// Attachment routes (Options.Attachments; 404 without it):
//
//	GET    /api/v1/vdisks/{name}/attachment   200 model.Attachment (host "": not attached)
//	PUT    /api/v1/vdisks/{name}/attachment   200 model.Attachment; body AttachRequest
//	DELETE /api/v1/vdisks/{name}/attachment?host=&user=&force=   200 model.Attachment left
//
// An attachment says which one host has a vdisk attached (a Docker
// volume mounted, a disk plugged into a guest) and by which users there.
// A PUT by the host that has it adds the user (a reference); a PUT by
// another host is 409 busy, naming the host that has it. A DELETE removes
// the user (user "": all of the host's), and the record with its last
// user; another host's DELETE is 409 unless force=true (clearing a dead
// host's attachment). The check and the change are one arakoon sequence.

// Attachments records which host has a vdisk attached. The methods fail
// with an error matching volumedriver.ErrNotFound for an unknown vdisk and
// volumedriver.ErrBusy when another host has it.
type Attachments interface {
	Attachment(ctx context.Context, name string) (model.Attachment, error)
	Attach(ctx context.Context, name string, req AttachRequest) (model.Attachment, error)
	Detach(ctx context.Context, name, host, user string, force bool) (model.Attachment, error)
}

// AttachRequest is the body of PUT /api/v1/vdisks/{name}/attachment.
type AttachRequest struct {
	Host string `json:"host"`           // the attaching host's id
	Kind string `json:"kind,omitempty"` // what attaches it: "docker", "libvirt", ...
	User string `json:"user,omitempty"` // who on the host: a mount id, a domain
}

func (s *Server) attachmentRoutes() {
	s.mux.HandleFunc("GET /api/v1/vdisks/{name}/attachment", s.getAttachment)
	s.mux.HandleFunc("PUT /api/v1/vdisks/{name}/attachment", s.putAttachment)
	s.mux.HandleFunc("DELETE /api/v1/vdisks/{name}/attachment", s.deleteAttachment)
}

var errNoAttachments = &httpError{http.StatusNotFound, CodeUnknownRoute, "this server keeps no attachments"}

func (s *Server) getAttachment(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.attachments == nil {
		s.writeError(w, r, errNoAttachments, "")
		return
	}
	a, err := s.attachments.Attachment(r.Context(), name)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, a)
}

func (s *Server) putAttachment(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.attachments == nil {
		s.writeError(w, r, errNoAttachments, "")
		return
	}
	var req AttachRequest
	if err := s.decodeBody(w, r, &req); err != nil {
		s.writeError(w, r, err, name)
		return
	}
	if !model.ValidID(req.Host) {
		s.writeError(w, r, badRequest("attachment: host %q: use 1-64 of A-Z a-z 0-9 . _ -", req.Host), name)
		return
	}
	a, err := s.attachments.Attach(r.Context(), name, req)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, a)
}

func (s *Server) deleteAttachment(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.attachments == nil {
		s.writeError(w, r, errNoAttachments, "")
		return
	}
	q := r.URL.Query()
	force := false
	if v := q.Get("force"); v != "" {
		var err error
		if force, err = strconv.ParseBool(v); err != nil {
			s.writeError(w, r, badRequest(`invalid value %q for query parameter "force" (use true or false)`, v), name)
			return
		}
	}
	host := q.Get("host")
	if !force && !model.ValidID(host) {
		s.writeError(w, r, badRequest("attachment: host %q: use 1-64 of A-Z a-z 0-9 . _ - (or force=true)", host), name)
		return
	}
	a, err := s.attachments.Detach(r.Context(), name, host, q.Get("user"), force)
	if err != nil {
		s.writeError(w, r, err, name)
		return
	}
	s.writeJSON(w, http.StatusOK, a)
}

// --- client

// Attachment returns which host has vdisk name attached (Host "": none).
func (c *Client) Attachment(ctx context.Context, name string) (model.Attachment, error) {
	var out model.Attachment
	if err := checkName(name); err != nil {
		return out, err
	}
	err := c.do(ctx, http.MethodGet, vdiskPath(name)+"/attachment", nil, nil, &out)
	return out, err
}

// Attach records req's host (and user) as attaching vdisk name; another
// host's attachment fails with an error matching volumedriver.ErrBusy.
func (c *Client) Attach(ctx context.Context, name string, req AttachRequest) (model.Attachment, error) {
	var out model.Attachment
	if err := checkName(name); err != nil {
		return out, err
	}
	err := c.do(ctx, http.MethodPut, vdiskPath(name)+"/attachment", nil, req, &out)
	return out, err
}

// Detach removes user (""; all of host's users) from host's attachment
// of vdisk name; force removes the attachment whoever has it.
func (c *Client) Detach(ctx context.Context, name, host, user string, force bool) (model.Attachment, error) {
	var out model.Attachment
	if err := checkName(name); err != nil {
		return out, err
	}
	q := url.Values{"host": {host}}
	if user != "" {
		q.Set("user", user)
	}
	if force {
		q.Set("force", "true")
	}
	err := c.do(ctx, http.MethodDelete, vdiskPath(name)+"/attachment", q, nil, &out)
	return out, err
}
