package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/internal/testkit"
)

// openPTY opens a pseudo-terminal pair (Linux /dev/ptmx).
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	var unlock int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, m.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		m.Close()
		t.Skipf("unlockpt: %v", e)
	}
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, m.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		m.Close()
		t.Skipf("ptsname: %v", e)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("open the pty's terminal: %v", err)
	}
	return m, s
}

// A node on a terminal shows its live view, keeps its logs in
// <data>/node.log, and on Ctrl-C stops cleanly and gives the terminal back.
func TestNodeViewOnTerminal(t *testing.T) {
	root := t.TempDir()
	eng := start(t, "engine", nil, "engine", "--listen", "127.0.0.1:0", "--data", filepath.Join(root, "engine"), "--model", "synthetic-1", "--rate", "0")
	engineAddr := waitFile(t, eng, filepath.Join(root, "engine", "http-addr"))
	_, platform := testkit.RandomPeer(t) // no settlement peer: without an account key the node serves all the same

	master, slave := openPTY(t)
	defer master.Close()
	dir := filepath.Join(root, "node")
	cmd := exec.Command(binary, "node", "--data", dir, "--listen", "/ip4/127.0.0.1/tcp/0",
		"--platform", platform.String(), "--upstream", "http://"+engineAddr+"/v1", "--metrics", "127.0.0.1:0")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	// Its own session with the pty as its terminal, so Ctrl-C reaches it as on a desk.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	screen := &testkit.SyncBuffer{}
	read := make(chan struct{})
	go func() { io.Copy(screen, master); close(read) }() // ends with EIO once the node is gone
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
	}()

	var id string
	testkit.WaitFor(t, 20*time.Second, "the node's peer-id", func() bool {
		id, _ = launch.ReadFirstLine(filepath.Join(dir, "peer-id"))
		return id != ""
	})
	testkit.WaitFor(t, 20*time.Second, "the view to show the node serving", func() bool {
		s := screen.String()
		return strings.Contains(s, "Token-Router node "+id) && strings.Contains(s, "ready, up") && strings.Contains(s, "synthetic-1")
	})
	s := screen.String()
	for _, want := range []string{ansiAltScreen, ansiHome, filepath.Join(dir, NodeLogFile), "no --account-key", "Ctrl-C stops the node"} {
		if !strings.Contains(s, want) {
			t.Fatalf("the view lacks %q:\n%q", want, s)
		}
	}
	if strings.Contains(s, "level=INFO") || strings.Contains(s, "msg=") {
		t.Fatalf("logs on the terminal while the view is on:\n%q", s)
	}
	logs, err := os.ReadFile(filepath.Join(dir, NodeLogFile))
	if err != nil || !strings.Contains(string(logs), "node serving") {
		t.Fatalf("node.log: %v\n%s", err, logs)
	}
	if fi, err := os.Stat(filepath.Join(dir, NodeLogFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("node.log mode: %v %v", fi, err)
	}
	// The view takes the same flags as plain logs: --metrics serves.
	if addr, err := launch.ReadFirstLine(filepath.Join(dir, "metrics-addr")); err != nil {
		t.Fatalf("no metrics-addr with the view on: %v", err)
	} else if resp, err := http.Get("http://" + addr + "/metrics"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics with the view on: %v", err)
	} else {
		resp.Body.Close()
	}

	master.Write([]byte{3}) // Ctrl-C
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Fatalf("the node exited with %v after Ctrl-C:\n%q", err, screen.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("the node did not stop on Ctrl-C:\n%q", screen.String())
	}
	select {
	case <-read:
	case <-time.After(5 * time.Second):
	}
	s = screen.String()
	restored := strings.LastIndex(s, ansiShowCursor+ansiMainScreen)
	if restored < 0 || !strings.Contains(s[restored:], "tokenrouter node stopped") {
		t.Fatalf("the terminal was not given back with a summary:\n%q", s)
	}
	t.Logf("the terminal after Ctrl-C: %q", s[restored:])
	if _, err := os.Lstat(filepath.Join(dir, launch.StatusSocket)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the status socket outlived Ctrl-C: %v", err)
	}
}
