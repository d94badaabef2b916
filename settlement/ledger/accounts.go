package ledger

import (
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cockroachdb/pebble/v2"
)

// APIKeyPrefix starts every API key.
const APIKeyPrefix = "trk_"

// apiKeyEncoding is lowercase-friendly base32 without padding: 32 random
// bytes become 52 characters.
var apiKeyEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// CreateAccount creates a user account ("acct_" + 16 random hex digits),
// mints grant µcr from mint to it (a "grant" transfer whose ref is
// "grant:<id>"), and issues its first API key — all in one batch committed
// with pebble.Sync. The plaintext key is returned once and never stored.
// A negative grant is ErrInvalid; a zero grant records no transfer.
func (l *Ledger) CreateAccount(grant int64) (AccountState, string, error) {
	if grant < 0 {
		return AccountState{}, "", fmt.Errorf("%w: negative grant %d", ErrInvalid, grant)
	}
	var st AccountState
	key, hash := newAPIKey()
	err := l.run(func(t *txn) error {
		id := l.newAccountID()
		i := t.accts.add(id, AccountState{ID: id, StartingCredit: grant, Created: t.now})
		p := Posting{Key: "grant:" + id, Transfers: []Transfer{
			{From: AccountMint, To: id, Amount: grant, Kind: KindGrant, Leg: "grant"},
		}}
		if err := t.apply(&p); err != nil {
			return err
		}
		if err := t.accept(&p, nil, false); err != nil {
			return err
		}
		t.keys[hash] = keyRec{id, newKeyInfo(key, hash, "default", ScopeAccount, t.now)}
		st = t.accts.vals[i]
		return nil
	})
	if err != nil {
		return AccountState{}, "", err
	}
	l.logger.Info("account created", "account", st.ID, "grant_ucr", grant)
	return st, key, nil
}

// newAccountID draws an unused account id. Called with wmu held.
func (l *Ledger) newAccountID() string {
	for {
		var b [8]byte
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it crashes the program instead)
		id := "acct_" + hex.EncodeToString(b[:])
		if _, taken := l.w.accounts[id]; !taken {
			return id
		}
	}
}

// newAPIKey returns a fresh key and the hex SHA-256 under which it is stored.
func newAPIKey() (key, hash string) {
	var b [32]byte
	_, _ = rand.Read(b[:])
	key = APIKeyPrefix + strings.ToLower(apiKeyEncoding.EncodeToString(b[:]))
	return key, hashKey(key)
}

func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// MaxAPIKeys is how many API keys one account may hold at once.
const MaxAPIKeys = 100

// MaxKeyName is the longest name an API key may be given, in bytes.
const MaxKeyName = 64

// Key scopes. A key of the whole account (ScopeAccount) spends, signs in to
// the dashboard and manages the account's keys and nodes. A node's key
// (ScopeNode) only links a node to the account and reads the account: a
// node's machine holds it, and whoever takes it from there can neither
// spend the balance nor take the account over.
const (
	ScopeAccount = "account"
	ScopeNode    = "node"
)

// APIKeyInfo describes an API key without revealing it: its id (for
// revoking), the start and end of the key as shown once, its name, scope
// and when it was made.
type APIKeyInfo struct {
	ID        string `json:"id"`
	Prefix    string `json:"prefix"` // "trk_abcd…wxyz"
	Name      string `json:"name"`
	Scope     string `json:"scope"` // ScopeAccount or ScopeNode
	CreatedMs int64  `json:"created_ms"`
}

// keyRec is a stored API key: its account and description.
type keyRec struct {
	account string
	info    APIKeyInfo
}

// keyID is an API key's public id: the start of its hash.
func keyID(hash string) string { return "key_" + hash[:16] }

func newKeyInfo(key, hash, name, scope string, now time.Time) APIKeyInfo {
	return APIKeyInfo{ID: keyID(hash), Prefix: key[:len(APIKeyPrefix)+4] + "…" + key[len(key)-4:], Name: name, Scope: scope, CreatedMs: now.UnixMilli()}
}

func (r keyRec) encodeInfo() []byte {
	b, _ := json.Marshal(r.info)
	return b
}

// decodeKeyInfo reads a key's description; a key stored before keys had
// descriptions (nil v) is the account's "default" key.
func decodeKeyInfo(hash string, v []byte) APIKeyInfo {
	var info APIKeyInfo
	if v == nil || json.Unmarshal(v, &info) != nil || info.ID == "" {
		info = APIKeyInfo{ID: keyID(hash), Prefix: APIKeyPrefix + "…", Name: "default"}
	}
	if info.Scope == "" {
		info.Scope = ScopeAccount
	}
	return info
}

// addKey and dropKey keep keys and its index by account; called with mu
// held for writing (or before the ledger is shared).
func (l *Ledger) addKey(hash string, r keyRec) {
	l.keys[hash] = r
	if l.acctKeys[r.account] == nil {
		l.acctKeys[r.account] = map[string]struct{}{}
	}
	l.acctKeys[r.account][hash] = struct{}{}
}

func (l *Ledger) dropKey(hash string) {
	r, ok := l.keys[hash]
	if !ok {
		return
	}
	delete(l.keys, hash)
	delete(l.acctKeys[r.account], hash)
	if len(l.acctKeys[r.account]) == 0 {
		delete(l.acctKeys, r.account)
	}
}

// NewAPIKey issues another API key for account, named name, of scope
// (ScopeAccount or ScopeNode): "trk_" + lowercase base32 of 32 random
// bytes. Only its SHA-256 is stored; the plaintext is returned once.
func (l *Ledger) NewAPIKey(account, name, scope string) (string, APIKeyInfo, error) {
	if len(name) > MaxKeyName || !utf8.ValidString(name) {
		return "", APIKeyInfo{}, fmt.Errorf("%w: a key name is at most %d bytes of UTF-8", ErrInvalid, MaxKeyName)
	}
	if scope != ScopeAccount && scope != ScopeNode {
		return "", APIKeyInfo{}, fmt.Errorf("%w: a key's scope is %q or %q", ErrInvalid, ScopeAccount, ScopeNode)
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.writable(); err != nil {
		return "", APIKeyInfo{}, err
	}
	if _, ok := l.w.accounts[account]; !ok {
		return "", APIKeyInfo{}, fmt.Errorf("%w: %q", ErrUnknownAccount, account)
	}
	l.mu.RLock()
	n := len(l.acctKeys[account])
	l.mu.RUnlock()
	if n >= MaxAPIKeys {
		return "", APIKeyInfo{}, fmt.Errorf("%w: an account holds at most %d API keys; revoke one first", ErrInvalid, MaxAPIKeys)
	}
	key, hash := newAPIKey()
	rec := keyRec{account, newKeyInfo(key, hash, name, scope, l.now())}
	b := l.db.NewBatch()
	defer b.Close()
	if err := errors.Join(b.Set(keyDescKey(hash), rec.encodeInfo(), nil), b.Set(apiKeyKey(hash), []byte(account), nil)); err != nil {
		return "", APIKeyInfo{}, fmt.Errorf("ledger: store api key: %w", err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return "", APIKeyInfo{}, fmt.Errorf("ledger: store api key: %w", err)
	}
	l.mu.Lock()
	l.addKey(hash, rec)
	l.mu.Unlock()
	return key, rec.info, nil
}

// APIKeys lists account's keys, oldest first.
func (l *Ledger) APIKeys(account string) []APIKeyInfo {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var out []APIKeyInfo
	for h := range l.acctKeys[account] {
		out = append(out, l.keys[h].info)
	}
	slices.SortFunc(out, func(a, b APIKeyInfo) int {
		return cmp.Or(cmp.Compare(a.CreatedMs, b.CreatedMs), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// RevokeAPIKey removes key if it belongs to account; otherwise it returns
// ErrUnknownKey (or ErrUnknownAccount for an unknown account). It returns
// the key's hash, which gateways cache the key under.
func (l *Ledger) RevokeAPIKey(account, key string) (string, error) {
	hash := hashKey(key)
	return hash, l.revoke(account, func(h string, _ keyRec) bool { return h == hash })
}

// RevokeAPIKeyID removes the key with the public id id if it belongs to
// account, and returns its hash.
func (l *Ledger) RevokeAPIKeyID(account, id string) (string, error) {
	var hash string
	err := l.revoke(account, func(h string, r keyRec) bool {
		if r.info.ID == id {
			hash = h
			return true
		}
		return false
	})
	return hash, err
}

// revoke deletes the first of account's keys match picks. The account's
// last key of the account scope stays: without it nobody could sign in,
// spend the balance or make another key.
func (l *Ledger) revoke(account string, match func(hash string, r keyRec) bool) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	if _, ok := l.w.accounts[account]; !ok {
		return fmt.Errorf("%w: %q", ErrUnknownAccount, account)
	}
	hash, full := "", 0
	l.mu.RLock()
	for h := range l.acctKeys[account] {
		r := l.keys[h]
		if r.info.Scope == ScopeAccount {
			full++
		}
		if hash == "" && match(h, r) {
			hash = h
		}
	}
	last := hash != "" && l.keys[hash].info.Scope == ScopeAccount && full == 1
	l.mu.RUnlock()
	switch {
	case hash == "":
		return ErrUnknownKey
	case last:
		return fmt.Errorf("%w: this is the account's last key that can sign in and spend; create another before revoking it", ErrInvalid)
	}
	b := l.db.NewBatch()
	defer b.Close()
	if err := errors.Join(b.Delete(apiKeyKey(hash), nil), b.Delete(keyDescKey(hash), nil)); err != nil {
		return fmt.Errorf("ledger: revoke api key: %w", err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("ledger: revoke api key: %w", err)
	}
	l.mu.Lock()
	l.dropKey(hash)
	l.mu.Unlock()
	return nil
}

// AccountByKey returns the account that owns an API key, or ErrUnknownKey.
func (l *Ledger) AccountByKey(key string) (string, error) {
	r, ok := l.KeyByHash(hashKey(key))
	if !ok {
		return "", ErrUnknownKey
	}
	return r.Account, nil
}

// KeyRecord is an API key's account and description.
type KeyRecord struct {
	Account string
	APIKeyInfo
}

// KeyByHash returns the key stored under hash (the hash of the key; a
// signed-in dashboard session keeps the hash, not the key).
func (l *Ledger) KeyByHash(hash string) (KeyRecord, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	r, ok := l.keys[hash]
	return KeyRecord{r.account, r.info}, ok
}

// KeyHash is the hash an API key is stored, cached and revoked under.
func KeyHash(key string) string { return hashKey(key) }

// Account returns an account's state, or ErrUnknownAccount.
func (l *Ledger) Account(id string) (AccountState, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	st, ok := l.pub.accounts[id]
	if !ok {
		return AccountState{}, fmt.Errorf("%w: %q", ErrUnknownAccount, id)
	}
	return st, nil
}

// Balances returns every account's balance, for invariant checks and audits.
// The error is always nil today; it is there for stores that read from disk.
func (l *Ledger) Balances() (map[string]int64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make(map[string]int64, len(l.pub.accounts))
	for id, st := range l.pub.accounts {
		out[id] = st.Balance
	}
	return out, nil
}

// LinkNode links a node's peer id to account, so the node's earnings are paid
// there. Relinking a node to another account overwrites the old link.
func (l *Ledger) LinkNode(peerID, account string) error {
	if peerID == "" {
		return fmt.Errorf("%w: empty peer id", ErrInvalid)
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	if _, ok := l.w.accounts[account]; !ok {
		return fmt.Errorf("%w: %q", ErrUnknownAccount, account)
	}
	if l.nodes[peerID] == account {
		return nil
	}
	if err := l.db.Set(nodeKey(peerID), []byte(account), pebble.Sync); err != nil {
		return fmt.Errorf("ledger: link node: %w", err)
	}
	l.mu.Lock()
	l.nodes[peerID] = account
	l.mu.Unlock()
	return nil
}

// NodeAccount returns the account a node is linked to.
func (l *Ledger) NodeAccount(peerID string) (string, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	acct, ok := l.nodes[peerID]
	return acct, ok
}

// Nodes returns the peer ids linked to account, sorted.
func (l *Ledger) Nodes(account string) []string {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var out []string
	for peer, acct := range l.nodes {
		if acct == account {
			out = append(out, peer)
		}
	}
	slices.Sort(out)
	return out
}
