package settlement

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/tokenrouter/tokenrouter/p2p"
)

// cloudStoreFile holds the hosted cloud nodes' records inside CloudConfig.Dir.
const cloudStoreFile = "nodes.json"

// cloudRecord is one hosted cloud node as it is stored. The API token is
// kept only sealed; the clear token lives in memory while the node runs.
type cloudRecord struct {
	ID          string    `json:"id"`
	Account     string    `json:"account"`
	PeerID      string    `json:"peer_id"`
	BaseURL     string    `json:"base_url"`
	Models      []string  `json:"models"` // empty = every model the upstream lists
	Capacity    int       `json:"capacity"`
	Created     time.Time `json:"created"`
	SealedToken []byte    `json:"sealed_token"` // AES-256-GCM: nonce || ciphertext || tag, see tokenAD
}

// tokenAD is the additional data a record's token is sealed with: the token
// opens only for the record, account and base URL it was given for, so
// editing the file cannot move a token to another record or send it to
// another server.
func tokenAD(r *cloudRecord) []byte {
	return []byte("tokenrouter cloud token v1\x00" + r.ID + "\x00" + r.Account + "\x00" + r.BaseURL)
}

// cloudFile is the on-disk form of the records.
type cloudFile struct {
	Version int           `json:"version"`
	KeyID   string        `json:"key_id"` // the master key that sealed the tokens (see SecretBox.KeyID)
	Nodes   []cloudRecord `json:"nodes"`
}

// cloudStore keeps the records in one JSON file, mode 0600, replaced
// atomically (write, fsync, rename) on every change.
type cloudStore struct {
	path string
	box  *SecretBox
}

// openCloudStore reads the records in dir and opens every token with box,
// so a wrong master key fails the start, never a call later. It returns the
// records with their clear tokens, in the order they were stored.
func openCloudStore(dir string, box *SecretBox) (*cloudStore, []cloudRecord, []string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, nil, fmt.Errorf("cloud nodes: %w", err)
	}
	st := &cloudStore{path: filepath.Join(dir, cloudStoreFile), box: box}
	raw, err := os.ReadFile(st.path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil, nil, nil
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("cloud nodes: %w", err)
	}
	var f cloudFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, nil, nil, fmt.Errorf("cloud nodes: %s is damaged: %w", st.path, err)
	}
	if len(f.Nodes) > 0 && f.KeyID != box.KeyID() {
		return nil, nil, nil, fmt.Errorf("%w: %s holds API tokens sealed under master key %s, but %s is key %s; "+
			"start with the key that sealed them (%s, or the original %s)",
			ErrWrongMasterKey, st.path, f.KeyID, box.Source(), box.KeyID(), MasterKeyEnv, MasterKeyFile)
	}
	tokens := make([]string, len(f.Nodes))
	for i := range f.Nodes {
		r := &f.Nodes[i]
		plain, err := box.Open(r.SealedToken, tokenAD(r))
		if err != nil {
			return nil, nil, nil, fmt.Errorf("cloud nodes: the token of %s in %s does not open (record edited or damaged): %w",
				r.ID, st.path, err)
		}
		tokens[i] = string(plain)
	}
	return st, f.Nodes, tokens, nil
}

// save replaces the stored records with recs.
func (st *cloudStore) save(recs []cloudRecord) error {
	if recs == nil {
		recs = []cloudRecord{}
	}
	raw, err := json.MarshalIndent(cloudFile{Version: 1, KeyID: st.box.KeyID(), Nodes: recs}, "", "  ")
	if err != nil {
		return err
	}
	if err := p2p.WriteFileAtomic(st.path, append(raw, '\n'), 0o600); err != nil {
		return fmt.Errorf("cloud nodes: save: %w", err)
	}
	return nil
}

// seal seals token into r (whose ID, Account and BaseURL must be set).
func (st *cloudStore) seal(r *cloudRecord, token string) error {
	sealed, err := st.box.Seal([]byte(token), tokenAD(r))
	if err != nil {
		return err
	}
	r.SealedToken = sealed
	return nil
}
