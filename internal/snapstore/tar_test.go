package snapstore_test

import (
	"archive/tar"
	"io"
)

func newTar(w io.Writer, name, body string) *tar.Writer {
	tw := tar.NewWriter(w)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(body)), Mode: 0o600})
	tw.Write([]byte(body))
	return tw
}
