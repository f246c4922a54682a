package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// The fake's files live in its variables ("file:/p" holds the content, "dir:/p" marks
// a directory), so snapshots and rollbacks cover them like everything else; a program
// can print one with `print file:/home/user/x`. /home/user exists from the start.

func (s *fakeSandbox) fileKind(p string) string { // s.mu held
	if p == "/" || p == "/home" || p == HomeDir {
		return "dir"
	}
	if _, ok := s.vars["dir:"+p]; ok {
		return "dir"
	}
	if _, ok := s.vars["file:"+p]; ok {
		return "file"
	}
	return ""
}

func fakePath(p string) (string, error) {
	if !path.IsAbs(p) {
		p = path.Join(HomeDir, p)
	}
	if strings.Contains(p, "\x00") {
		return "", fmt.Errorf("fake: %q: %w", p, agentproto.ErrInvalidPath)
	}
	return path.Clean(p), nil
}

func (s *fakeSandbox) WriteFile(ctx context.Context, p string, mode uint32, r io.Reader) error {
	p, err := fakePath(p)
	if err != nil {
		return err
	}
	data, err := io.ReadAll(r) // the fake may hold it; the service must not
	if err != nil {
		return fmt.Errorf("fake: write %s: %w", p, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.fileKind(p) {
	case "dir":
		return fmt.Errorf("fake: %s: %w", p, agentproto.ErrIsDir)
	}
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		switch s.fileKind(d) {
		case "file":
			return fmt.Errorf("fake: %s: %w", d, agentproto.ErrNotDir)
		case "":
			s.vars["dir:"+d] = ""
		}
	}
	s.vars["file:"+p] = string(data)
	return nil
}

func (s *fakeSandbox) info(p string) (agentproto.FileInfo, error) { // s.mu held
	fi := agentproto.FileInfo{Name: path.Base(p), Path: p, Mode: 0o644, MTime: time.Unix(1700000000, 0)}
	switch s.fileKind(p) {
	case "dir":
		fi.Type, fi.Mode = "dir", 0o755
	case "file":
		fi.Type, fi.Size = "file", int64(len(s.vars["file:"+p]))
	default:
		return fi, fmt.Errorf("fake: %s: %w", p, agentproto.ErrNotExist)
	}
	return fi, nil
}

func (s *fakeSandbox) OpenFile(ctx context.Context, p string) (agentproto.FileInfo, io.ReadCloser, error) {
	p, err := fakePath(p)
	if err != nil {
		return agentproto.FileInfo{}, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fi, err := s.info(p)
	if err == nil && fi.Type == "dir" {
		err = fmt.Errorf("fake: %s: %w", p, agentproto.ErrIsDir)
	}
	if err != nil {
		return fi, nil, err
	}
	return fi, io.NopCloser(bytes.NewReader([]byte(s.vars["file:"+p]))), nil
}

func (s *fakeSandbox) StatFile(ctx context.Context, p string) (agentproto.FileInfo, error) {
	p, err := fakePath(p)
	if err != nil {
		return agentproto.FileInfo{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info(p)
}

func (s *fakeSandbox) ListFiles(ctx context.Context, p string, depth int) ([]agentproto.FileInfo, error) {
	p, err := fakePath(p)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.fileKind(p) {
	case "":
		return nil, fmt.Errorf("fake: %s: %w", p, agentproto.ErrNotExist)
	case "file":
		return nil, fmt.Errorf("fake: %s: %w", p, agentproto.ErrNotDir)
	}
	var out []agentproto.FileInfo
	for k := range s.vars {
		kind, fp, ok := strings.Cut(k, ":")
		if !ok || (kind != "file" && kind != "dir") || !strings.HasPrefix(fp, strings.TrimSuffix(p, "/")+"/") {
			continue
		}
		rel := strings.TrimPrefix(fp, strings.TrimSuffix(p, "/")+"/")
		if strings.Count(rel, "/") < depth {
			fi, _ := s.info(fp)
			out = append(out, fi)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func (s *fakeSandbox) MakeDir(ctx context.Context, p string) error {
	p, err := fakePath(p)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for d := p; d != "/"; d = path.Dir(d) {
		switch s.fileKind(d) {
		case "file":
			return fmt.Errorf("fake: %s: %w", d, agentproto.ErrNotDir)
		case "":
			s.vars["dir:"+d] = ""
		}
	}
	return nil
}

func (s *fakeSandbox) RemoveFile(ctx context.Context, p string, recursive bool) error {
	p, err := fakePath(p)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.fileKind(p) {
	case "":
		return fmt.Errorf("fake: %s: %w", p, agentproto.ErrNotExist)
	case "file":
		delete(s.vars, "file:"+p)
		return nil
	}
	var inside []string
	for k := range s.vars {
		if _, fp, ok := strings.Cut(k, ":"); ok && strings.HasPrefix(fp, p+"/") {
			inside = append(inside, k)
		}
	}
	if len(inside) > 0 && !recursive {
		return fmt.Errorf("fake: %s: directory not empty", p)
	}
	for _, k := range inside {
		delete(s.vars, k)
	}
	delete(s.vars, "dir:"+p)
	return nil
}
