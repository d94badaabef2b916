package settlement

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseMasterKey(t *testing.T) {
	key := bytes.Repeat([]byte{0xab}, 32)
	for _, tc := range []struct {
		name string
		in   string
		ok   bool
	}{
		{"hex", hex.EncodeToString(key), true},
		{"hex upper with newline", strings.ToUpper(hex.EncodeToString(key)) + "\n", true},
		{"base64", base64.StdEncoding.EncodeToString(key), true},
		{"base64 unpadded", base64.RawStdEncoding.EncodeToString(key), true},
		{"base64 url", base64.URLEncoding.EncodeToString(key), true},
		{"empty", "", false},
		{"16 bytes hex", hex.EncodeToString(key[:16]), false},
		{"31 bytes base64", base64.StdEncoding.EncodeToString(key[:31]), false},
		{"33 bytes base64", base64.StdEncoding.EncodeToString(append(key, 1)), false},
		{"a passphrase", "correct horse battery staple", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseMasterKey(tc.in)
			if tc.ok {
				if err != nil || !bytes.Equal(got, key) {
					t.Fatalf("ParseMasterKey = %x, %v; want the key", got, err)
				}
				return
			}
			if !errors.Is(err, ErrBadMasterKey) {
				t.Fatalf("ParseMasterKey = %x, %v; want ErrBadMasterKey", got, err)
			}
			if !strings.Contains(err.Error(), "openssl rand -base64 32") {
				t.Errorf("the error does not say how to make a key: %v", err)
			}
		})
	}
}

func TestSecretBoxSealsWithAFreshNonceAndBindsTheRecord(t *testing.T) {
	box, err := NewSecretBox(bytes.Repeat([]byte{1}, 32), "")
	if err != nil {
		t.Fatal(err)
	}
	secret, ad := []byte("sk-live-0123456789"), []byte("record-1")
	a, err := box.Seal(secret, ad)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := box.Seal(secret, ad)
	if bytes.Equal(a, b) || bytes.Equal(a[:12], b[:12]) {
		t.Fatal("two seals of one secret share a nonce")
	}
	if bytes.Contains(a, secret) {
		t.Fatal("the sealed form holds the secret")
	}
	if len(a) != 12+len(secret)+16 {
		t.Fatalf("sealed length %d, want nonce + secret + tag = %d", len(a), 12+len(secret)+16)
	}
	if got, err := box.Open(a, ad); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, err := box.Open(a, []byte("record-2")); !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("opened under another record's data: %v", err)
	}
	flipped := append([]byte(nil), a...)
	flipped[len(flipped)-1] ^= 1
	if _, err := box.Open(flipped, ad); !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("opened a changed ciphertext: %v", err)
	}
	other, _ := NewSecretBox(bytes.Repeat([]byte{2}, 32), "")
	if _, err := other.Open(a, ad); !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("opened under another key: %v", err)
	}
	if other.KeyID() == box.KeyID() {
		t.Fatal("two keys share a key id")
	}
	if _, err := box.Open(a[:20], ad); !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("opened a truncated value: %v", err)
	}
}

func TestLoadMasterKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", MasterKeyFile)

	gen, err := LoadMasterKey("", path)
	if err != nil {
		t.Fatalf("first start: %v", err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v, %v; want mode 0600", st, err)
	}
	again, err := LoadMasterKey("", path)
	if err != nil || again.KeyID() != gen.KeyID() {
		t.Fatalf("second start: key %v, %v; want the generated key %s", again, err, gen.KeyID())
	}
	raw, _ := os.ReadFile(path)
	if env, err := LoadMasterKey(string(raw), ""); err != nil || env.KeyID() != gen.KeyID() || env.Source() != MasterKeyEnv {
		t.Fatalf("the file's text as %s: %v, %v", MasterKeyEnv, env, err)
	}

	other := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	if env, err := LoadMasterKey(other, path); err != nil || env.KeyID() == gen.KeyID() {
		t.Fatalf("%s does not win over the file: %v, %v", MasterKeyEnv, env, err)
	}
	if _, err := LoadMasterKey("not a key", path); !errors.Is(err, ErrBadMasterKey) || !strings.Contains(err.Error(), MasterKeyEnv) {
		t.Fatalf("a bad %s: %v", MasterKeyEnv, err)
	}

	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadMasterKey("", path); !errors.Is(err, ErrBadMasterKey) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a group-readable key file: %v; want it refused", err)
	}
	os.Chmod(path, 0o600)
	if err := os.WriteFile(path, []byte("too short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadMasterKey("", path); !errors.Is(err, ErrBadMasterKey) || !strings.Contains(err.Error(), path) {
		t.Fatalf("a damaged key file: %v", err)
	}
}
