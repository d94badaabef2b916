package settlement

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/tokenrouter/tokenrouter/p2p"
)

// MasterKeyEnv is the environment variable that holds the settlement peer's
// master key: 32 bytes written as 64 hex digits or as base64 (standard or
// URL alphabet, padded or not). When it is unset the key is kept in
// <data>/master.key (MasterKeyFile), created on first start.
const MasterKeyEnv = "TOKENROUTER_MASTER_KEY"

// MasterKeyFile is the default name of the master key file in the settlement
// peer's data directory: one line, the key in base64, mode 0600.
const MasterKeyFile = "master.key"

// MasterKeySize is the size of the master key: AES-256.
const MasterKeySize = 32

// Errors from the sealed-secrets box.
var (
	// ErrBadMasterKey: the master key is not 32 bytes in hex or base64, or
	// its file is unsafe to use.
	ErrBadMasterKey = errors.New("settlement: bad master key")
	// ErrWrongMasterKey: a sealed secret does not open with this master key
	// (another key sealed it, or it was tampered with or moved between records).
	ErrWrongMasterKey = errors.New("settlement: sealed secret does not open with this master key")
)

// SecretBox seals small secrets (cloud providers' API tokens) with
// AES-256-GCM under the master key: a fresh random 12-byte nonce per seal,
// and additional data naming what the secret belongs to, so a ciphertext
// cannot be moved to another record. Sealed form: nonce || ciphertext || tag.
// Rotating the master key is not supported yet.
type SecretBox struct {
	aead   cipher.AEAD
	id     string // key id: names the key without revealing it
	source string // where the key came from, for error messages
}

// NewSecretBox returns a box sealing under key (32 bytes). source says where
// the key came from, for error messages ("" = "the master key").
func NewSecretBox(key []byte, source string) (*SecretBox, error) {
	if len(key) != MasterKeySize {
		return nil, fmt.Errorf("%w: want %d bytes, got %d", ErrBadMasterKey, MasterKeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadMasterKey, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadMasterKey, err)
	}
	if source == "" {
		source = "the master key"
	}
	return &SecretBox{aead: aead, id: keyID(key), source: source}, nil
}

// keyID is a short public name of a key: the start of HMAC-SHA256(key, label).
// It lets a restart tell "wrong key" from "damaged record" without revealing the key.
func keyID(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("tokenrouter master key id v1"))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// KeyID names the box's key without revealing it.
func (b *SecretBox) KeyID() string { return b.id }

// Source says where the box's key came from.
func (b *SecretBox) Source() string { return b.source }

// Seal encrypts plain, bound to ad.
func (b *SecretBox) Seal(plain, ad []byte) ([]byte, error) {
	nonce := make([]byte, b.aead.NonceSize(), b.aead.NonceSize()+len(plain)+b.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("settlement: seal: %w", err)
	}
	return b.aead.Seal(nonce, nonce, plain, ad), nil
}

// Open decrypts what Seal returned for the same ad; any other key, ad or a
// changed byte gives ErrWrongMasterKey.
func (b *SecretBox) Open(sealed, ad []byte) ([]byte, error) {
	n := b.aead.NonceSize()
	if len(sealed) < n+b.aead.Overhead() {
		return nil, fmt.Errorf("%w: sealed value too short", ErrWrongMasterKey)
	}
	plain, err := b.aead.Open(nil, sealed[:n], sealed[n:], ad)
	if err != nil {
		return nil, ErrWrongMasterKey
	}
	return plain, nil
}

// ParseMasterKey decodes a master key written as 64 hex digits or as base64
// (standard or URL alphabet, with or without padding) of exactly 32 bytes.
// Surrounding white space is ignored.
func ParseMasterKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if len(s) == 2*MasterKeySize {
		if k, err := hex.DecodeString(s); err == nil {
			return k, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(s); err == nil {
			if len(k) != MasterKeySize {
				return nil, fmt.Errorf("%w: it decodes to %d bytes, want %d (generate one with: openssl rand -base64 32)",
					ErrBadMasterKey, len(k), MasterKeySize)
			}
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w: want %d bytes as %d hex digits or base64 (generate one with: openssl rand -base64 32)",
		ErrBadMasterKey, MasterKeySize, 2*MasterKeySize)
}

// LoadMasterKey returns the box for the settlement peer's master key: from
// envValue (the value of TOKENROUTER_MASTER_KEY) when it is not empty, else
// from path, which is created with a fresh random key (mode 0600) when it
// does not exist. A key file that its group or others may access is refused,
// as ssh refuses such a private key: the secrets it protects may have leaked.
func LoadMasterKey(envValue, path string) (*SecretBox, error) {
	if strings.TrimSpace(envValue) != "" {
		k, err := ParseMasterKey(envValue)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", MasterKeyEnv, err)
		}
		return NewSecretBox(k, MasterKeyEnv)
	}
	if path == "" {
		return nil, fmt.Errorf("%w: neither %s nor a key file is given", ErrBadMasterKey, MasterKeyEnv)
	}
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return createMasterKey(path)
	case err != nil:
		return nil, fmt.Errorf("master key file: %w", err)
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrBadMasterKey, path)
	case st.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("%w: %s is accessible by group or others (mode %04o); run: chmod 600 %s",
			ErrBadMasterKey, path, st.Mode().Perm(), path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("master key file: %w", err)
	}
	k, err := ParseMasterKey(string(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return NewSecretBox(k, path)
}

func createMasterKey(path string) (*SecretBox, error) {
	k := make([]byte, MasterKeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	if err := p2p.WriteFileAtomic(path, []byte(base64.StdEncoding.EncodeToString(k)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("master key: write %s: %w", path, err)
	}
	return NewSecretBox(k, path+" (generated on this start)")
}
