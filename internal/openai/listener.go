package openai

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"strconv"
)

// Listener wraps ln so the errors net/http's server writes by itself,
// before any handler runs (a malformed request line or header: 400; headers
// over the limit: 431; an unknown transfer encoding: 501), reach the client
// in OpenAI's error shape as JSON rather than as plain text. Everything
// else passes through untouched.
func Listener(ln net.Listener) net.Listener { return errorListener{ln} }

type errorListener struct{ net.Listener }

func (l errorListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &errorConn{Conn: c}, nil
}

// errorConn is a server connection whose plain-text error answers from
// net/http are rewritten (see [Listener]).
type errorConn struct{ net.Conn }

// serverErrorHeaders is what net/http's server puts after the status line
// of an answer it writes without a handler (net/http/server.go, errorHeaders).
// A handler's answer always has a Date header, so it never matches.
const serverErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

func (c *errorConn) Write(b []byte) (int, error) {
	if out, ok := rewriteServerError(b); ok {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// CloseWrite half-closes the connection, as net/http does on a *net.TCPConn
// before it closes a connection after an error.
func (c *errorConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// rewriteServerError turns "HTTP/1.1 431 Request Header Fields Too
// Large<serverErrorHeaders>..." into the same status with an OpenAI JSON
// error body.
func rewriteServerError(b []byte) ([]byte, bool) {
	const proto = "HTTP/1.1 "
	if !bytes.HasPrefix(b, []byte(proto)) {
		return nil, false
	}
	line, rest, ok := bytes.Cut(b[len(proto):], []byte("\r\n"))
	if !ok || !bytes.HasPrefix(rest, []byte(serverErrorHeaders[2:])) || len(line) < 3 {
		return nil, false
	}
	status, err := strconv.Atoi(string(line[:3]))
	if err != nil || status < 400 {
		return nil, false
	}
	// The status line is "400 Bad Request" or "400 Bad Request: <why>".
	why := ""
	if _, after, found := bytes.Cut(line, []byte(": ")); found {
		why = string(after)
	}
	code, msg := "bad_request", "the request is not valid HTTP"
	switch status {
	case http.StatusRequestHeaderFieldsTooLarge:
		code, msg = "request_header_fields_too_large", "the request's headers are too large"
	case http.StatusNotImplemented:
		code, msg = "unsupported_transfer_encoding", "the request's Transfer-Encoding is not supported"
	}
	if why != "" {
		msg += ": " + why
	}
	body := append(ErrorJSON("invalid_request_error", "", code, msg), '\n')
	out := fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
		status, http.StatusText(status), len(body))
	return append(out, body...), true
}
