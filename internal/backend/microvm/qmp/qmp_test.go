package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeQEMU is a QMP server on a unix socket that greets, requires qmp_capabilities
// first, and hands every later command to handle.
type fakeQEMU struct {
	t      *testing.T
	path   string
	handle func(s *session, cmd command)
}

type command struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

type session struct {
	mu   sync.Mutex
	conn net.Conn
}

func (s *session) send(v any) {
	b, _ := json.Marshal(v)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conn.Write(append(b, '\n'))
}

func (s *session) reply(c command, ret any) {
	s.send(map[string]any{"return": ret, "id": c.ID})
}

func (s *session) event(name string, data any) {
	s.send(map[string]any{"event": name, "data": data, "timestamp": map[string]int64{"seconds": 1700000000, "microseconds": 5}})
}

func startFake(t *testing.T, greet bool, handle func(s *session, cmd command)) *fakeQEMU {
	t.Helper()
	f := &fakeQEMU{t: t, path: filepath.Join(t.TempDir(), "qmp.sock"), handle: handle}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(conn, greet)
		}
	}()
	return f
}

func (f *fakeQEMU) serve(conn net.Conn, greet bool) {
	defer conn.Close()
	s := &session{conn: conn}
	if !greet {
		time.Sleep(time.Hour)
		return
	}
	s.send(map[string]any{"QMP": map[string]any{"version": map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 22}, "package": "fake"}, "capabilities": []string{"oob"}}})
	sc := bufio.NewScanner(conn)
	negotiated := false
	for sc.Scan() {
		var c command
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			s.send(map[string]any{"error": map[string]string{"class": "GenericError", "desc": "bad json"}})
			continue
		}
		if !negotiated {
			if c.Execute != "qmp_capabilities" {
				s.send(map[string]any{"error": map[string]string{"class": "CommandNotFound", "desc": "expecting capabilities negotiation"}, "id": c.ID})
				continue
			}
			negotiated = true
			s.reply(c, map[string]any{})
			continue
		}
		f.handle(s, c)
	}
}

func dial(t *testing.T, f *fakeQEMU) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Guards the handshake: the greeting is read and capabilities negotiated before Dial
// returns, so the first real command is accepted.
func TestGreetingAndCommand(t *testing.T) {
	f := startFake(t, true, func(s *session, c command) {
		if c.Execute == "query-status" {
			s.reply(c, map[string]any{"status": "running", "running": true})
		}
	})
	c := dial(t, f)
	if c.Greeting.Version.QEMU.Major != 7 || c.Greeting.Version.QEMU.Minor != 2 {
		t.Fatalf("greeting = %+v", c.Greeting)
	}
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := c.Execute(context.Background(), "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "running" || !st.Running {
		t.Fatalf("status = %+v", st)
	}
}

// Guards reply matching: concurrent commands answered out of order each get their own
// reply, and events sent in between go to the events channel, not to a command.
func TestRepliesByIDAndEventsApart(t *testing.T) {
	var mu sync.Mutex
	var held []command
	f := startFake(t, true, func(s *session, c command) {
		mu.Lock()
		defer mu.Unlock()
		held = append(held, c)
		if len(held) < 3 {
			return
		}
		s.event("STOP", nil)
		for i := len(held) - 1; i >= 0; i-- { // answer in reverse order
			var args struct{ N int }
			json.Unmarshal(held[i].Arguments, &args)
			s.reply(held[i], map[string]int{"n": args.N * 10})
			s.event("RESUME", map[string]int{"after": args.N})
		}
	})
	c := dial(t, f)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for n := 1; n <= 3; n++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r struct{ N int }
			if err := c.Execute(context.Background(), "echo", map[string]int{"N": n}, &r); err != nil {
				errs <- err
				return
			}
			if r.N != n*10 {
				errs <- fmt.Errorf("command %d got reply %d", n, r.N)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var names []string
	timeout := time.After(5 * time.Second)
	for len(names) < 4 {
		select {
		case ev := <-c.Events():
			names = append(names, ev.Name)
			if ev.Time.Unix() != 1700000000 {
				t.Errorf("event time = %v", ev.Time)
			}
		case <-timeout:
			t.Fatalf("events so far: %v", names)
		}
	}
	if names[0] != "STOP" || names[1] != "RESUME" {
		t.Fatalf("events = %v", names)
	}
}

// Guards error replies: QEMU's error class and description reach the caller as *Error.
func TestErrorReply(t *testing.T) {
	f := startFake(t, true, func(s *session, c command) {
		s.send(map[string]any{"error": map[string]string{"class": "DeviceNotFound", "desc": "no such device"}, "id": c.ID})
	})
	c := dial(t, f)
	err := c.Execute(context.Background(), "device_del", map[string]string{"id": "x"}, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "DeviceNotFound" || qe.Command != "device_del" {
		t.Fatalf("err = %v", err)
	}
}

// Guards cancellation: a command whose context ends returns at once, its late reply is
// dropped (it does not answer the next command), and the connection stays usable.
func TestContextAbandonsCommand(t *testing.T) {
	var mu sync.Mutex
	var abandoned *command
	f := startFake(t, true, func(s *session, c command) {
		mu.Lock()
		defer mu.Unlock()
		switch c.Execute {
		case "slow":
			abandoned = &c
		case "fast":
			if abandoned != nil {
				s.reply(*abandoned, "slow") // late: arrives first on the wire
			}
			s.reply(c, "fast")
		}
	})
	c := dial(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Execute(ctx, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	var got string
	if err := c.Execute(context.Background(), "fast", nil, &got); err != nil || got != "fast" {
		t.Fatalf("after abandon: %q, %v", got, err)
	}
}

// Guards QEMU going away: a pending command fails with ErrClosed instead of hanging,
// the events channel is closed, and later commands fail at once.
func TestConnectionLoss(t *testing.T) {
	f := startFake(t, true, func(s *session, c command) {
		if c.Execute == "quit" {
			s.conn.Close()
		}
	})
	c := dial(t, f)
	done := make(chan error, 1)
	go func() { done <- c.Execute(context.Background(), "quit", nil, nil) }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("err = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pending command hung after the connection closed")
	}
	select {
	case _, ok := <-c.Events():
		if ok {
			t.Fatal("unexpected event")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("events channel not closed")
	}
	if err := c.Execute(context.Background(), "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
}

// Guards start-up against a QEMU that accepts but never greets.
func TestGreetingTimeout(t *testing.T) {
	f := startFake(t, false, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, f.path); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
}
