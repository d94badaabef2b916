package ledger

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

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
		t.keys[hash] = id
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

// NewAPIKey issues another API key for account: "trk_" + lowercase base32 of
// 32 random bytes. Only its SHA-256 is stored; the plaintext is returned once.
func (l *Ledger) NewAPIKey(account string) (string, error) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.writable(); err != nil {
		return "", err
	}
	if _, ok := l.w.accounts[account]; !ok {
		return "", fmt.Errorf("%w: %q", ErrUnknownAccount, account)
	}
	key, hash := newAPIKey()
	if err := l.db.Set(apiKeyKey(hash), []byte(account), pebble.Sync); err != nil {
		return "", fmt.Errorf("ledger: store api key: %w", err)
	}
	l.mu.Lock()
	l.keys[hash] = account
	l.mu.Unlock()
	return key, nil
}

// RevokeAPIKey removes key if it belongs to account; otherwise it returns
// ErrUnknownKey (or ErrUnknownAccount for an unknown account).
func (l *Ledger) RevokeAPIKey(account, key string) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	if _, ok := l.w.accounts[account]; !ok {
		return fmt.Errorf("%w: %q", ErrUnknownAccount, account)
	}
	hash := hashKey(key)
	l.mu.RLock()
	owner := l.keys[hash]
	l.mu.RUnlock()
	if owner != account {
		return ErrUnknownKey
	}
	if err := l.db.Delete(apiKeyKey(hash), pebble.Sync); err != nil {
		return fmt.Errorf("ledger: revoke api key: %w", err)
	}
	l.mu.Lock()
	delete(l.keys, hash)
	l.mu.Unlock()
	return nil
}

// AccountByKey returns the account that owns an API key, or ErrUnknownKey.
func (l *Ledger) AccountByKey(key string) (string, error) {
	hash := hashKey(key)
	l.mu.RLock()
	defer l.mu.RUnlock()
	acct, ok := l.keys[hash]
	if !ok {
		return "", ErrUnknownKey
	}
	return acct, nil
}

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
