package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

func newLedgerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ledger",
		Short: "Inspect a settlement peer's ledger",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newLedgerVerifyCmd(g), newLedgerProveCmd(g))
	return cmd
}

func newLedgerVerifyCmd(g *globals) *cobra.Command {
	var data, platform string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Re-check a ledger's signed hash chain, every balance and the zero-sum invariant",
		Long: `Re-check a ledger directory: every link of the hash chain over committed batches,
the settlement peer's signature on each link, every transfer each link covers,
every account's balance and holds against its transfers, and that all balances
sum to zero with only mint below zero. Exits non-zero on any mismatch.

--data is the settlement peer's data directory (the ledger is in its ledger/
folder) or the ledger folder itself. The signing key is the settlement peer's
public key: pin it with --platform (its peer id), or it is read from the
directory's identity key, which proves nothing against someone who could
rewrite the directory.`,
		Example: "  tokenrouter ledger verify --data ~/.tokenrouter/dev/settle --platform 12D3KooW...",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir := ledgerDir(data)
			pub, err := verifyKey(data, platform)
			if err != nil {
				return err
			}
			rep, err := ledger.Verify(dir, ledger.Options{}, pub)
			if err != nil {
				return fmt.Errorf("ledger %s does NOT verify: %w", dir, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ledger %s verifies: %d chain links, %d transfers, %d holds, %d accounts; head %x\n",
				dir, rep.Links, rep.Transfers, rep.Holds, rep.Accounts, rep.Head)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&data, "data", defaultData("settle"), "the settlement peer's data directory, or its ledger directory")
	f.StringVar(&platform, "platform", "", "peer id of the settlement peer whose signatures the chain must carry")
	return cmd
}

// verifyKey is the public key chain links must be signed with.
func verifyKey(data, platform string) (crypto.PubKey, error) {
	if platform != "" {
		id, err := peer.Decode(platform)
		if err != nil {
			return nil, fmt.Errorf("--platform: %w", err)
		}
		return id.ExtractPublicKey()
	}
	raw, err := os.ReadFile(filepath.Join(data, p2p.IdentityFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no %s in %s: give the settlement peer's id with --platform", p2p.IdentityFile, data)
	}
	if err != nil {
		return nil, err
	}
	key, err := crypto.UnmarshalPrivateKey(raw)
	if err != nil {
		return nil, err
	}
	return key.GetPublic(), nil
}

// ledgerDir is the ledger folder of a settlement peer's data directory, or
// data itself.
func ledgerDir(data string) string {
	if st, err := os.Stat(filepath.Join(data, "ledger")); err == nil && st.IsDir() {
		return filepath.Join(data, "ledger")
	}
	return data
}

func newLedgerProveCmd(g *globals) *cobra.Command {
	var data, platform, requestID, proofFile string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "prove",
		Short: "Prove that a paid call is in the settlement peer's signed history",
		Long: `Build and check the inclusion proof of one paid call: its transfers are leaves
of the RFC 6962 Merkle tree over the batch that committed them, whose root is
in that batch's chain link, which the settlement peer signed. Exits 0 with a
summary when the proof checks against the settlement peer's public key, and
non-zero, saying why, when it does not (or when the call is not there).

--request-id is the x-tokenrouter-request-id a gateway answered the call with
(or the call's full ledger key, call/<gateway>/<request id>). --data is the
settlement peer's data directory or its ledger folder, read while the peer is
stopped, as for ledger verify.

With --proof FILE, check a proof saved from GET /v1/receipts/{id}/proof
instead: no ledger is needed, only --platform (the settlement peer's id,
whose public key the proof must be signed with).`,
		Example: `  tokenrouter ledger prove --data ~/.tokenrouter/settle --platform 12D3KooW... --request-id req_...
  curl -H "Authorization: Bearer $KEY" $SETTLE/v1/receipts/req_.../proof > proof.json
  tokenrouter ledger prove --proof proof.json --platform 12D3KooW...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p *ledger.Proof
			var pub crypto.PubKey
			var err error
			if proofFile != "" {
				if platform == "" {
					return errors.New("--proof needs --platform, the settlement peer's id")
				}
				if pub, err = verifyKey("", platform); err != nil {
					return err
				}
				if p, err = readProof(proofFile); err != nil {
					return err
				}
			} else {
				if requestID == "" {
					return errors.New("give --request-id (or --proof FILE)")
				}
				if pub, err = verifyKey(data, platform); err != nil {
					return err
				}
				dir := ledgerDir(data)
				if p, err = ledger.ProveDir(dir, ledger.Options{}, requestID); err != nil {
					return fmt.Errorf("no proof of %s in %s: %w", requestID, dir, err)
				}
			}
			if err := ledger.VerifyProof(p, pub); err != nil {
				return fmt.Errorf("the proof of %s does NOT verify: %w", p.Key, err)
			}
			if requestID != "" && proofFile != "" && !strings.HasSuffix(p.Key, "/"+requestID) && p.Key != requestID {
				return fmt.Errorf("the proof is of %s, not of %s", p.Key, requestID)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(p)
			}
			printProof(cmd.OutOrStdout(), p)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&data, "data", defaultData("settle"), "the settlement peer's data directory, or its ledger directory")
	f.StringVar(&platform, "platform", "", "peer id of the settlement peer whose signature the proof must carry")
	f.StringVar(&requestID, "request-id", "", "the call's request id (x-tokenrouter-request-id) or ledger key")
	f.StringVar(&proofFile, "proof", "", "check this proof (JSON from GET /v1/receipts/{id}/proof) instead of reading a ledger")
	f.BoolVar(&asJSON, "json", false, "print the verified proof as JSON (as the HTTP endpoint serves it)")
	return cmd
}

func readProof(path string) (*ledger.Proof, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--proof: %w", err)
	}
	var p ledger.Proof
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("--proof %s: not a proof: %w", path, err)
	}
	return &p, nil
}

func printProof(w io.Writer, p *ledger.Proof) {
	fmt.Fprintf(w, "%s is in signed batch %d (%s): %d of its %d transfers, Merkle root %x\n",
		p.Key, p.Link.Seq, time.Unix(0, p.Link.Time).UTC().Format(time.RFC3339), len(p.Leaves), p.TreeSize, []byte(p.Link.Root))
	for _, l := range p.Leaves {
		t := l.Transfer
		fmt.Fprintf(w, "  leaf %d: %s  %s -> %s  %d µcr (%s)\n", l.Index, t.ID, t.From, t.To, t.Amount, t.Kind)
	}
	fmt.Fprintf(w, "link hash %x, signature checks against the settlement key\n", []byte(p.Link.Hash))
}
