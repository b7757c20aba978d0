package main

import (
	"bufio"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// chatProcess is `caps chat` in line mode (stdin is a pipe).
type chatProcess struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *lineWatcher
	err *lineWatcher
}

func startChatProcess(t *testing.T, bin, addr, name string, extra ...string) *chatProcess {
	t.Helper()
	args := append([]string{"chat", "--hub", addr, "--name", name}, extra...)
	cmd := exec.Command(bin, args...)
	in, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return &chatProcess{cmd: cmd, in: in, out: watchLines(stdout), err: watchLines(stderr)}
}

func (c *chatProcess) say(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(c.in, line+"\n"); err != nil {
		t.Fatalf("write %q: %v", line, err)
	}
}

// Two `caps chat` processes talk through `caps hub`, and with a person on
// its text port (--text-addr); one is killed with SIGKILL and the other
// sees it leave; the end of input exits 0; a taken name exits non-zero
// with one clear line.
func TestChatProcesses(t *testing.T) {
	bin := buildCaps(t)
	textAddr := freeAddr(t)
	addr, _, events := startHubProcess(t, bin, t.TempDir(), "--text-addr", textAddr)
	const wait = 20 * time.Second

	alice := startChatProcess(t, bin, addr, "alice")
	alice.out.waitFor(t, "[lobby] * alice joined", wait)
	bob := startChatProcess(t, bin, addr, "bob", "--room", "lobby")
	alice.out.waitFor(t, "[lobby] * bob joined", wait)

	nc, err := net.DialTimeout("tcp", textAddr, wait)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(wait))
	greeting, err := bufio.NewReader(nc).ReadString('\n')
	if err != nil || !strings.HasPrefix(greeting, "* welcome to CAPS chat, you are guest-") {
		t.Fatalf("the text port greeted %q (%v)", greeting, err)
	}
	io.WriteString(nc, "@nickname nora\r\nhi from nc\r\n")
	alice.out.waitFor(t, "[lobby] nora: hi from nc", wait)

	alice.say(t, "hello bob")
	bob.out.waitFor(t, "[lobby] alice: hello bob", wait)
	bob.say(t, "/msg alice just for you")
	alice.out.waitFor(t, "[dm] bob: just for you", wait)
	events.waitFor(t, `"event":"chat.room.lobby"`, wait)

	dup := exec.Command(bin, "chat", "--hub", addr, "--name", "alice")
	dup.Stdin = strings.NewReader("")
	out, err := dup.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "name_taken: name alice is in use") {
		t.Errorf("a second alice: err %v, output %q", err, out)
	}

	if err := bob.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	alice.out.waitFor(t, "[lobby] * bob left", wait)

	alice.in.Close()
	done := make(chan error, 1)
	go func() { done <- alice.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("alice exited with %v at the end of input, want 0", err)
		}
	case <-time.After(wait):
		t.Fatal("alice did not exit at the end of its input")
	}
	for _, l := range events.all() {
		if strings.Contains(l, "just for you") {
			t.Errorf("the hub printed a private message: %s", l)
		}
	}
}
