package membership

import (
	"errors"
	"io"
	"log/slog"
)

type errTest string

func (e errTest) Error() string { return string(e) }

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func isNotSynced(err error) bool { return errors.Is(err, ErrNotSynced) }
func isClosed(err error) bool    { return errors.Is(err, ErrClosed) }
