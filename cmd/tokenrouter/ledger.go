package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
	cmd.AddCommand(newLedgerVerifyCmd(g))
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
			dir := data
			if st, err := os.Stat(filepath.Join(data, "ledger")); err == nil && st.IsDir() {
				dir = filepath.Join(data, "ledger")
			}
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
