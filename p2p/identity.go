package p2p

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// IdentityFile is the name of the private key file inside a role's data directory.
const IdentityFile = "identity.key"

// LoadOrCreateIdentity returns the Ed25519 key kept in dir/identity.key,
// creating it (mode 0600, directory 0700) on first start. A key file readable
// by others is tightened back to 0600.
func LoadOrCreateIdentity(dir string) (crypto.PrivKey, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	path := filepath.Join(dir, IdentityFile)
	raw, err := os.ReadFile(path)
	switch {
	case err == nil:
		if st, serr := os.Stat(path); serr == nil && st.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(path, 0o600); err != nil {
				return nil, fmt.Errorf("identity: tighten %s: %w", path, err)
			}
		}
		key, err := crypto.UnmarshalPrivateKey(raw)
		if err != nil {
			return nil, fmt.Errorf("identity: %s is not a libp2p private key: %w", path, err)
		}
		return key, nil
	case errors.Is(err, fs.ErrNotExist):
		key, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("identity: generate: %w", err)
		}
		raw, err := crypto.MarshalPrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("identity: marshal: %w", err)
		}
		if err := WriteFileAtomic(path, raw, 0o600); err != nil {
			return nil, fmt.Errorf("identity: %w", err)
		}
		return key, nil
	default:
		return nil, fmt.Errorf("identity: %w", err)
	}
}

// WriteFileAtomic writes data to path through a temporary file and a rename,
// so a reader never sees a half-written file.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
