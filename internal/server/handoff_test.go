package server

import (
	"net"
	"os"
	"strconv"
	"testing"
)

func TestSameAddr(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	any, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer any.Close()
	anyPort := any.Addr().(*net.TCPAddr).Port
	for _, tc := range []struct {
		ln   net.Listener
		addr string
		want bool
	}{
		{ln, net.JoinHostPort("127.0.0.1", itoa(port)), true},
		{ln, net.JoinHostPort("localhost", itoa(port)), true},
		{ln, net.JoinHostPort("127.0.0.1", itoa(port+1)), false},
		{ln, net.JoinHostPort("127.0.0.2", itoa(port)), false},
		{ln, ":" + itoa(port), false}, // all addresses asked, one held
		{any, ":" + itoa(anyPort), true},
		{any, net.JoinHostPort("127.0.0.1", itoa(anyPort)), false},
		{ln, "127.0.0.1:0", true}, // any port: the one handed over will do
		{ln, "nonsense", false},
	} {
		if got := sameAddr(tc.ln.Addr(), tc.addr); got != tc.want {
			t.Errorf("sameAddr(%s, %q) = %v, want %v", tc.ln.Addr(), tc.addr, got, tc.want)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// A listener handed over is used when it listens where the flag says, and
// replaced by a new one when the flag changed.
func TestInheritedListen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // the socket stays open through f, as in the new server
	in := inherited{"api": f, "http": dupFile(t, f)}
	got, err := in.listen("api", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if got.Addr().String() != addr {
		t.Errorf("inherited listener at %s, want %s", got.Addr(), addr)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("the handed-over socket does not accept: %v", err)
	}
	c.Close()
	other, err := in.listen("http", "127.0.0.2:0") // the flag asks for another address now
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if host, _, _ := net.SplitHostPort(other.Addr().String()); host != "127.0.0.2" {
		t.Errorf("listener for a changed address is at %s, want a new one on 127.0.0.2", other.Addr())
	}
	if _, ok := in["http"]; ok {
		t.Error("the unused inherited listener is still held")
	}
	in.close()
}

func dupFile(t *testing.T, f *os.File) *os.File {
	t.Helper()
	ln, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	g, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	return g
}
