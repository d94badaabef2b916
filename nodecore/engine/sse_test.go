package engine

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// readAll returns every payload of stream, and the error that ended it.
func readAll(r io.Reader) ([]string, error) {
	s := NewSSEReader(r)
	var out []string
	for {
		d, err := s.Next()
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return out, err
		}
		out = append(out, string(d))
	}
}

func TestSSEReader(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"simple", "data: {\"a\":1}\n\ndata: [DONE]\n\n", []string{`{"a":1}`, "[DONE]"}},
		{"crlf", "data: one\r\n\r\ndata: two\r\n\r\n", []string{"one", "two"}},
		{"comments", ": keep-alive\n\n: ping\ndata: x\n\n", []string{"x"}},
		{"multi-line", "data: a\ndata: b\ndata:c\n\n", []string{"a\nb\nc"}},
		{"fields", "event: message\nid: 7\nretry: 100\ndata: x\nfoo: bar\n\nevent: ping\n\n", []string{"x"}},
		{"no space", "data:x\n\n", []string{"x"}},
		{"two spaces", "data:  x\n\n", []string{" x"}},
		{"empty data", "data:\n\n", []string{""}},
		{"no trailing blank line", "data: a\n\ndata: [DONE]", []string{"a", "[DONE]"}},
		{"no trailing newline after blank", "data: a\n", []string{"a"}},
		{"bom", "\ufeffdata: a\n\n", []string{"a"}},
		{"blank lines only", "\n\n\r\n", nil},
		{"empty", "", nil},
		{"field without colon", "data\n\n", []string{""}},
		{"colon in value", "data: {\"u\":\"http://x\"}\n\n", []string{`{"u":"http://x"}`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range []io.Reader{strings.NewReader(tc.in), iotest.OneByteReader(strings.NewReader(tc.in))} {
				got, err := readAll(r)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("got %q, want %q", got, tc.want)
				}
			}
		})
	}
}

func TestSSEReaderLongLine(t *testing.T) {
	long := bytes.Repeat([]byte("x"), 1<<20)
	in := "data: short\n\ndata: " + string(long) + "\r\n\r\ndata: [DONE]\n\n"
	got, err := readAll(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0] != "short" || got[1] != string(long) || got[2] != "[DONE]" {
		t.Fatalf("got %d events", len(got))
	}

	tooLong := "data: " + strings.Repeat("y", MaxSSELine+10) + "\n\n"
	if _, err := readAll(strings.NewReader(tooLong)); !errors.Is(err, ErrSSELineTooLong) {
		t.Errorf("too long: err %v", err)
	}
}

func TestSSEReaderError(t *testing.T) {
	boom := errors.New("boom")
	r := io.MultiReader(strings.NewReader("data: a\n\ndata: b"), iotest.ErrReader(boom))
	got, err := readAll(r)
	if !errors.Is(err, boom) || !reflect.DeepEqual(got, []string{"a"}) {
		t.Errorf("got %q, %v", got, err)
	}
}

func FuzzSSEReader(f *testing.F) {
	for _, seed := range []string{
		"data: {\"a\":1}\n\ndata: [DONE]\n\n",
		"data: a\r\ndata: b\r\n\r\n",
		": c\nevent: e\nid: 1\nretry: 5\n\n",
		"data", "\ufeffdata:\n\n", "\r\r\n\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		s := NewSSEReader(bytes.NewReader(in))
		for range len(in) + 2 {
			d, err := s.Next()
			if err != nil {
				return
			}
			if len(d) > len(in) {
				t.Fatalf("payload longer than input")
			}
		}
		t.Fatalf("more events than bytes")
	})
}

// An event whose data goes on line after line without an end is cut at
// MaxSSELine in all, not only per line: an engine cannot grow a node's
// memory without bound.
func TestSSEReaderBoundsOneEventsData(t *testing.T) {
	line := "data: " + strings.Repeat("x", 1<<20) + "\n"
	r := NewSSEReader(strings.NewReader(strings.Repeat(line, 2*MaxSSELine>>20)))
	if _, err := r.Next(); err != ErrSSELineTooLong {
		t.Fatalf("got %v, want ErrSSELineTooLong", err)
	}
}
