package node

import (
	"context"
	"errors"
	"fmt"

	"github.com/ovs-storage/ovs/framework/api"
	"github.com/ovs-storage/ovs/framework/model"
	"github.com/ovs-storage/ovs/volumedriver"
)

// attachments serves the attachment routes of the REST API from the
// model; any node answers for every vdisk.
type attachments struct{ store *model.Store }

var _ api.Attachments = attachments{}

func (a attachments) Attachment(ctx context.Context, name string) (model.Attachment, error) {
	at, err := a.store.Attachment(ctx, name)
	return at, attachError(err, name)
}

func (a attachments) Attach(ctx context.Context, name string, req api.AttachRequest) (model.Attachment, error) {
	at, err := a.store.Attach(ctx, name, req.Host, req.Kind, req.User)
	return at, attachError(err, name)
}

func (a attachments) Detach(ctx context.Context, name, host, user string, force bool) (model.Attachment, error) {
	at, err := a.store.Detach(ctx, name, host, user, force)
	return at, attachError(err, name)
}

// attachError gives the model's errors the driver's sentinels the API
// answers with (404 not_found, 409 busy), keeping the model's message,
// which names the host that has the vdisk.
func attachError(err error, name string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, model.ErrNotFound):
		return fmt.Errorf("%w: %s", volumedriver.ErrNotFound, name)
	case errors.Is(err, model.ErrAttached):
		return &busyError{err}
	}
	return err
}

// busyError is a model error that matches volumedriver.ErrBusy too.
type busyError struct{ err error }

func (e *busyError) Error() string   { return e.err.Error() }
func (e *busyError) Unwrap() []error { return []error{e.err, volumedriver.ErrBusy} }
